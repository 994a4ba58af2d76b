"""The systemd units: rendered for this install by `i2vd install-systemd`, valid for systemd-analyze."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.units import directives, install

from daemon.service.units import render, split_groups

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rendered(tmp_path) -> Path:
    result = install(tmp_path, "--inbox", "/mnt/nas/i2vd/inbox", "--outputs", "/srv/videos",
                     I2VD_STOP_GRACE_SECONDS="100")
    assert result.returncode == 0, result.stderr
    assert "systemctl daemon-reload" in result.stdout
    return tmp_path


def test_install_systemd_writes_this_installs_paths(rendered):
    for name in ("i2vd.service", "i2vd@.service"):
        unit = rendered / name
        text = unit.read_text()
        assert "/opt/i2vd" not in text and "/srv/i2vd" not in text
        d = directives(unit)
        executable = d["ExecStart"][0].split()[0]
        assert Path(executable).is_file() and os.access(executable, os.X_OK)
        assert Path(executable).parent == Path(sys.executable).parent  # this venv's i2vd
        assert d["ReadWritePaths"] == ["/mnt/nas/i2vd/inbox /srv/videos"]
        assert "/mnt/nas/i2vd/inbox" in d["RequiresMountsFor"][0]
        assert "I2VD_INBOX_DIR=/mnt/nas/i2vd/inbox" in d["Environment"]
        assert d["TimeoutStopSec"] == ["150"]  # the 100 s grace plus one step and the requeue
        assert d["Type"] == ["notify"] and d["KillMode"] == ["mixed"] and d["Restart"] == ["on-failure"]
        assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"] and d["WatchdogSec"]
        assert "MemoryDenyWriteExecute" not in d and "PrivateDevices" not in d  # both break CUDA
        assert d["DevicePolicy"] == ["closed"] and "char-nvidia-uvm rw" in d["DeviceAllow"]
        assert d["UMask"] == ["0002"]  # a shared group can read and write what the daemon makes
    template = directives(rendered / "i2vd@.service")
    assert "CUDA_VISIBLE_DEVICES=%i" in template["Environment"]
    assert "I2VD_LOG_FILE=/var/log/i2vd/i2vd-%i.log" in template["Environment"]


def test_the_template_differs_from_the_plain_unit_only_per_gpu():
    plain, template = (directives(REPO / "systemd" / n) for n in ("i2vd.service", "i2vd@.service"))
    per_gpu = {"Description", "Environment", "EnvironmentFile"}
    assert {k: v for k, v in plain.items() if k not in per_gpu} == \
           {k: v for k, v in template.items() if k not in per_gpu}
    shared_env = [e for e in plain["Environment"] if not e.startswith("I2VD_LOG_FILE=")]
    assert set(shared_env) <= set(template["Environment"])


def test_paths_systemd_would_misread_are_refused(tmp_path):
    result = install(tmp_path, "--inbox", "/srv/my inbox")
    assert result.returncode == 2 and "without spaces" in result.stderr
    assert not list(tmp_path.glob("*.service"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None and os.environ.get("CI") != "true",
                    reason="systemd-analyze is not installed (CI installs it in .ci/run)")
def test_units_pass_systemd_analyze_verify(rendered):
    # The template is checked through an instance; systemd-analyze only warns about unknown or
    # malformed directives, so any output at all is a failure.
    result = subprocess.run(["systemd-analyze", "verify", str(rendered / "i2vd.service"),
                             str(rendered / "i2vd@0.service")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_install_systemd_writes_only_the_groups_this_host_has(tmp_path):
    result = install(tmp_path, "--inbox", "/srv/in", "--outputs", "/srv/out")
    assert result.returncode == 0, result.stderr
    shipped = directives(REPO / "systemd" / "i2vd.service")["SupplementaryGroups"][0].split()
    present, missing = split_groups(shipped)
    for name in ("i2vd.service", "i2vd@.service"):
        assert directives(tmp_path / name).get("SupplementaryGroups", [""]) == [" ".join(present)]
    for group in missing:  # on a host without udev's rules there is no `render` group
        assert f"left out SupplementaryGroups={group}: there is no group '{group}' on this host" in result.stdout
    assert ("left out" in result.stdout) == bool(missing)


def test_a_unit_with_no_group_left_has_no_supplementary_groups_line():
    shipped = (REPO / "systemd" / "i2vd.service").read_text()
    args = {"executable": Path("/opt/x/bin/i2vd"), "inbox": Path("/in"), "outputs": Path("/out"),
            "stop_grace_seconds": 10}
    assert "SupplementaryGroups=video\n" in render(shipped, supplementary_groups=["video"], **args)
    assert "SupplementaryGroups" not in render(shipped, supplementary_groups=[], **args)
    assert "SupplementaryGroups=video render\n" in render(shipped, **args)  # not told: as shipped
