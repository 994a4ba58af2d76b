"""A Debian 12 booted by a real systemd in systemd-nspawn, with this checkout and the host's packages inside."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

SUITE = "bookworm"  # Debian 12: Python 3.11, like the host's, so the host's packages load inside
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("ca-certificates", "dbus", "make", "passwd", "procps", "python3-venv", "systemd", "systemd-sysv")
CACHE_DIR = Path(os.environ.get("I2VD_TEST_ROOTFS_CACHE", "/var/cache/i2vd-test-rootfs"))
TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux"}
# Where the container sees the host's site-packages: a "system" site folder of Debian's python3, so a
# `python3 -m venv --system-site-packages` venv finds torch there, as README says to do on a GPU host.
SYSTEM_SITE = "/usr/local/lib/python3.11/dist-packages"
WHEELS = "/opt/i2vd-wheels"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unavailable() -> str | None:
    """Why this host cannot boot the container, or None when it can."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "systemd-nspawn needs root on Linux"
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        return f"not installed: {' '.join(sorted(set(missing)))} (`.ci/run` installs them)"
    if sys.version_info[:2] != (3, 11):
        version = ".".join(map(str, sys.version_info[:2]))
        return f"the host's Python is {version}, Debian 12's is 3.11: its packages cannot be reused inside"
    return None


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # two test runs must not build the same cache at once
        yield


def rootfs() -> Path:
    """The cached minbase rootfs for PACKAGES, made by debootstrap on first use (minutes)."""
    key = hashlib.sha256(" ".join((SUITE, MIRROR, "minbase", *PACKAGES)).encode()).hexdigest()[:12]
    root = CACHE_DIR / f"{SUITE}-minbase-{key}"
    with _locked(CACHE_DIR / ".lock"):
        if not root.is_dir():
            staging = CACHE_DIR / f".{root.name}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(staging),
                  MIRROR], timeout=1800)
            staging.rename(root)  # only a complete rootfs ever has the cache's name
    return root


def wheelhouse() -> Path:
    """setuptools as a wheel: `pip install -e .` builds i2vd in an isolated env, and the container is offline."""
    try:
        wanted = f"setuptools=={metadata.version('setuptools')}"  # the host's, known to build i2vd
    except metadata.PackageNotFoundError:
        wanted = "setuptools>=69"  # pyproject.toml's build requirement
    folder = CACHE_DIR / f"wheels-{hashlib.sha256(wanted.encode()).hexdigest()[:12]}"
    with _locked(CACHE_DIR / ".lock"):
        if not any(folder.glob("setuptools-*.whl")):
            _run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:", "--no-deps",
                  "--dest", str(folder), wanted], timeout=300)
    return folder


def _run(command: list[str], timeout: float) -> None:
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({result.returncode}): {result.stderr[-2000:]}")


def checkout_copy(repo: Path, dest: Path) -> Path:
    """The checkout's files as git sees them (committed or not, ignored ones left out), readable by all."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source, target = repo / name, dest / name
        if source.is_symlink():  # daemon/db/migrations -> ../../alembic and the like stay links
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for folder in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
    return dest


class Container:
    """One booted container; `sh` runs a script inside as root, the way `machinectl shell` would."""

    def __init__(self, work: Path, checkout: Path):
        self.work = work
        self.log = work / "console.log"
        site = Path(sysconfig.get_paths()["purelib"])
        empty = work / "empty"
        empty.write_text("")
        pip_conf = work / "pip.conf"
        pip_conf.write_text(f"[global]\nno-index = true\nfind-links = {WHEELS}\n")
        binds = [f"--bind={checkout}:/opt/i2vd", f"--bind-ro={site}:{SYSTEM_SITE}",
                 f"--bind-ro={wheelhouse()}:{WHEELS}", f"--bind-ro={pip_conf}:/etc/pip.conf"]
        # The host's own editable install of i2vd points at a checkout the container does not have.
        binds += [f"--bind-ro={empty}:{SYSTEM_SITE}/{pth.name}" for pth in site.glob("__editable__*i2vd*.pth")]
        # PID 1 here is no systemd: nothing to register with, no scope to move into. The overlay keeps
        # the cached rootfs clean; a private network keeps the daemons' ports off the host's.
        self.command = ["systemd-nspawn", "--quiet", f"--directory={rootfs()}", "--register=no", "--keep-unit",
                        "--volatile=overlay", "--private-network", f"--machine=i2vd-test-{os.getpid()}",
                        "--console=read-only", *binds, "--boot"]
        self.process: subprocess.Popen | None = None
        self.pid1: int | None = None

    def boot(self, timeout: float = 300) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.pid1 is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the container did not boot: {self.log.read_text()[-2000:]}")
            self.pid1 = _child_named(self.process.pid, "systemd")
            time.sleep(0.2)
        state = ""
        while state not in ("running", "degraded") and time.monotonic() < deadline:
            # Until systemd inside has its private socket, systemctl cannot reach it and prints nothing.
            state = self.sh("systemctl is-system-running --wait || true", timeout=timeout).stdout.strip()
            time.sleep(0.2)
        if state not in ("running", "degraded"):
            failed = self.sh("systemctl --failed", check=False).stdout
            raise RuntimeError(f"the container's systemd is {state!r}: {failed}")

    def sh(self, script: str, *, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run a shell script inside, as root, with a clean environment; raises with its output on failure."""
        assert self.pid1 is not None
        result = subprocess.run(["nsenter", "-t", str(self.pid1), "-m", "-u", "-i", "-n", "-p", "--",
                                 "env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8", "/bin/sh", "-ec", script],
                                check=False, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"inside the container, exit status {result.returncode}:\n{script}\n"
                                 f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
        return result

    def poweroff(self, timeout: float = 120) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _child_named(pid: int, name: str) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    for child in map(int, children):
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == name:
                return child
        except OSError:
            continue
    return None
