"""The web page's systemd unit: rendered for this install beside the daemon's, and valid for systemd."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from support.units import directives, install


@pytest.fixture
def rendered(tmp_path):
    result = install(tmp_path, "--inbox", "/mnt/nas/i2vd/inbox", "--outputs", "/srv/videos")
    assert result.returncode == 0, result.stderr
    return tmp_path / "i2vd-web.service"


def test_the_web_unit_is_installed_with_this_installs_paths_and_a_tight_sandbox(rendered):
    d = directives(rendered)
    executable, command = d["ExecStart"][0].split(maxsplit=1)
    assert command == "web" and os.access(executable, os.X_OK)
    assert d["ReadWritePaths"] == ["/mnt/nas/i2vd/inbox"] and d["ReadOnlyPaths"] == ["/srv/videos"]
    assert "I2VD_OUTPUTS_DIR=/srv/videos" in d["Environment"]
    for hardening in ("NoNewPrivileges", "PrivateDevices", "MemoryDenyWriteExecute", "ProtectSystem"):
        assert d[hardening] in (["yes"], ["strict"]), hardening
    assert d["CapabilityBoundingSet"] == [""] and d["User"] == ["i2vd"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None and os.environ.get("CI") != "true",
                    reason="systemd-analyze is not installed (CI installs it in .ci/run)")
def test_the_web_unit_passes_systemd_analyze_verify(rendered):
    result = subprocess.run(["systemd-analyze", "verify", str(rendered)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
