"""A real filesystem that can turn read-only for a while under open files, as a NAS share or a disk
remounted read-only after an error does: every write, create, truncate or fsync fails with EROFS,
reads go on.

The kernel cannot do this to a mounted filesystem while a process holds a file open for writing
(`mount -o remount,ro` answers EBUSY) and file modes do not stop root, so the tests mount this
passthrough FUSE filesystem (mfusepy over libfuse 3) in a process of its own and flip it with a flag
file outside the mount.

    python tests/support/readonly_fs.py BACKING MOUNTPOINT FLAG    # serves until unmounted
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAT_FIELDS = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid", "st_ino")
STATVFS_FIELDS = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                  "f_frsize", "f_namemax")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


def serve(backing: str, mountpoint: str, flag: str) -> None:
    import mfusepy as fuse

    class Passthrough(fuse.Operations):
        use_ns = True

        def _path(self, path: str) -> str:
            return os.path.join(backing, path.lstrip("/"))

        def _writable(self) -> None:
            if os.path.exists(flag):
                raise fuse.FuseOSError(errno.EROFS)

        def access(self, path, amode):
            if not os.access(self._path(path), amode):
                raise fuse.FuseOSError(errno.EACCES)

        def getattr(self, path, fh=None):
            st = os.lstat(self._path(path)) if fh is None else os.fstat(fh)
            return {key: getattr(st, key + "_ns" if key.endswith("time") else key) for key in STAT_FIELDS}

        def readdir(self, path, fh):
            return [".", "..", *os.listdir(self._path(path))]

        def open(self, path, flags):
            if flags & WRITE_FLAGS:
                self._writable()
            return os.open(self._path(path), flags)

        def create(self, path, mode, fi=None):
            self._writable()
            return os.open(self._path(path), os.O_RDWR | os.O_CREAT, mode)

        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        def write(self, path, data, offset, fh):
            self._writable()
            return os.pwrite(fh, data, offset)

        def truncate(self, path, length, fh=None):
            self._writable()
            if fh is None:
                os.truncate(self._path(path), length)
            else:
                os.ftruncate(fh, length)

        def fsync(self, path, datasync, fh):
            self._writable()
            os.fsync(fh)
            return 0

        def flush(self, path, fh):
            return 0

        def release(self, path, fh):
            os.close(fh)
            return 0

        def unlink(self, path):
            self._writable()
            os.unlink(self._path(path))

        def mkdir(self, path, mode):
            self._writable()
            os.mkdir(self._path(path), mode)

        def rmdir(self, path):
            self._writable()
            os.rmdir(self._path(path))

        def rename(self, old, new):
            self._writable()
            os.rename(self._path(old), self._path(new))

        def chmod(self, path, mode):
            self._writable()
            os.chmod(self._path(path), mode)

        def utimens(self, path, times=None):
            self._writable()
            os.utime(self._path(path), ns=times)

        def statfs(self, path):
            st = os.statvfs(self._path(path))
            return {key: getattr(st, key) for key in STATVFS_FIELDS}

    fuse.FUSE(Passthrough(), mountpoint, foreground=True, allow_other=True)


class FlippableMount:
    """A mounted passthrough of `backing` at `mountpoint` that `read_only()` turns read-only."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing, self.mountpoint = backing, mountpoint
        self.flag = backing.parent / f".{mountpoint.name}-read-only"

    @contextmanager
    def read_only(self) -> Iterator[None]:
        self.flag.touch()
        try:
            yield
        finally:
            self.flag.unlink()


def why_fuse_cannot_run() -> str | None:
    """None where a FUSE filesystem can be mounted here, else the reason in one line."""
    if shutil.which("fusermount3") is None:
        return "fusermount3 missing (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401  # loads libfuse3
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse: {exc}"
    return None


@contextmanager
def flippable_mount(root: Path) -> Iterator[FlippableMount]:
    """A FUSE mount at root/mnt over root/backing, served by a subprocess; unmounted on exit."""
    import pytest

    if not Path("/dev/fuse").exists():  # a kernel or container without FUSE: nothing to install
        pytest.skip("cannot mount a FUSE filesystem: no /dev/fuse on this machine")
    if (reason := why_fuse_cannot_run()) is not None:  # what .ci/run installs: missing in CI is a failure
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"cannot mount a FUSE filesystem: {reason}")
        pytest.skip(f"cannot mount a FUSE filesystem: {reason}")
    mount = FlippableMount(root / "backing", root / "mnt")
    mount.backing.mkdir(parents=True)
    mount.mountpoint.mkdir()
    log = open(root / "fuse.log", "wb")
    server = subprocess.Popen([sys.executable, __file__, str(mount.backing), str(mount.mountpoint),
                               str(mount.flag)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mount.mountpoint):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the FUSE filesystem did not mount: {(root / 'fuse.log').read_text()}")
            time.sleep(0.05)
        yield mount
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mount.mountpoint)], capture_output=True)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    serve(*sys.argv[1:4])
