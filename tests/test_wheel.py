"""The built wheel works on its own: migrations and unit templates inside, no checkout around."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from support.daemons import daemon_env, wait_for
from support.files import drop_pair, probe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; the dependencies are seen through the test venv's site-packages."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), str(REPO)], check=True, capture_output=True)
    wheel = next((root / "dist").glob("i2vd-*.whl"))
    venv.create(root / "venv", with_pip=False)
    bin_dir = root / "venv" / "bin"
    site = Path(subprocess.run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # A .pth line adds the folder to sys.path without running the .pth files in it (so not the editable
    # install of this checkout): torch, diffusers and the rest come from there, i2vd only from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True)
    return bin_dir


def run(bin_dir: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "i2vd"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_the_wheel_upgrades_runs_and_installs_units_without_the_checkout(installed, dirs, tmp_path):
    env = daemon_env(dirs)
    env.pop("PYTHONPATH", None)  # nothing from the checkout
    where = subprocess.run([str(installed / "python"), "-c", "import daemon, pipeline; print(daemon.__file__, "
                            "pipeline.__file__)"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert str(REPO) not in where.stdout and str(installed.parent) in where.stdout

    upgrade = run(installed, "db", "upgrade", env=env, cwd=tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr

    units = run(installed, "install-systemd", "--output", str(tmp_path / "units"), env=env, cwd=tmp_path)
    assert units.returncode == 0, units.stderr
    service = (tmp_path / "units" / "i2vd.service").read_text()
    assert f"ExecStart={installed / 'i2vd'} run" in service
    assert "Documentation=file:///opt" not in service  # the example path is never left in a rendered unit

    drop_pair(dirs["inbox"], "wheel", seed=1)
    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen([str(installed / "i2vd"), "run"], env=env, cwd=tmp_path, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        video = wait_for(lambda: next(iter(dirs["outputs"].glob("wheel_*.mp4")), None), what="the wheel's MP4")
        assert probe(video)[0] == 8
    finally:
        daemon.send_signal(signal.SIGINT)
        assert daemon.wait(60) == 0, (tmp_path / "daemon.log").read_text()
        log.close()
    assert not os.path.exists(dirs["inbox"] / "wheel.png")
