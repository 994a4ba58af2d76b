"""The one place that writes and moves files: atomically, and never over an existing file."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

TEMP_PREFIX = ".i2vd-tmp-"
"""Our temporary files start with this; intake ignores them and start-up sweeps stale ones."""


def unique_stem(directory: Path, stem: str, suffixes: Iterable[str]) -> str:
    """`stem`, or `stem-1`, `stem-2`, ... so that no `stem+suffix` exists in `directory`."""
    suffixes = list(suffixes)
    candidate, n = stem, 0
    while any((directory / f"{candidate}{s}").exists() for s in suffixes):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def publish(tmp: Path, dest: Path) -> None:
    """Give the finished file `tmp` its final name `dest`, failing if `dest` exists."""
    try:
        os.link(tmp, dest)  # atomic and refuses to overwrite
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "refusing to overwrite", str(dest)) from None
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        # Filesystems without hard links (some SMB shares): check, then rename.
        if dest.exists():
            raise FileExistsError(errno.EEXIST, "refusing to overwrite", str(dest)) from None
        os.replace(tmp, dest)
        return
    os.unlink(tmp)


def temp_path(directory: Path, label: str) -> Path:
    """A fresh temporary name in `directory` (same filesystem as the final name)."""
    fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{label}-", dir=directory)
    os.close(fd)
    return Path(name)


def write_atomic(dest: Path, data: bytes) -> None:
    """Write `data` to `dest` through a temporary file and an fsync; never a half-written file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest.parent, dest.name)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(dest: Path, obj: object) -> None:
    write_atomic(dest, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode())


def move(src: Path, dest: Path) -> bool:
    """Move `src` to `dest` without overwriting; safe to repeat. False when it was already moved.

    Also safe to run at the same time as another process moving the same file (two daemons
    finishing one intake): the rename is atomic, and whoever loses it finds the file at `dest`.
    """
    if not os.path.lexists(src):
        if os.path.lexists(dest):  # an earlier, interrupted run (or another daemon) moved it already
            return False
        raise FileNotFoundError(errno.ENOENT, "nothing to move", str(src))
    if os.path.lexists(dest):
        if not os.path.lexists(src):  # moved by another daemon between the two checks
            return False
        raise FileExistsError(errno.EEXIST, "refusing to overwrite", str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dest)
    except FileNotFoundError:
        if os.path.lexists(dest):  # the other mover won the rename
            return False
        raise
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(src, dest)  # different filesystems: copy, then delete
    return True
