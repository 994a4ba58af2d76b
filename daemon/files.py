"""The one place that writes and moves files: atomically, durably, never over an existing file, and
always under a name that fits the file system."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

TEMP_PREFIX = ".i2vd-tmp-"
"""Our temporary files start with this; intake ignores them and start-up sweeps stale ones."""

FILE_MODE = 0o666
"""Mode for every file we create; the kernel takes the process umask off (0664 under systemd's
UMask=0002, so a shared group can read and write; 0644 under 022). Nothing reads or sets the umask,
which is process-wide and would race with other threads."""

DEFAULT_NAME_MAX = 255  # bytes; what Linux file systems allow when pathconf cannot say


def name_max(directory: Path) -> int:
    """The longest file name, in bytes, that `directory`'s file system takes (its nearest existing parent's)."""
    for candidate in (directory, *directory.parents):
        try:
            return os.pathconf(candidate, "PC_NAME_MAX")
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            break
    return DEFAULT_NAME_MAX


def fit_stem(stem: str, tail: str, limit: int) -> str:
    """`stem`, cut by whole characters (never half a UTF-8 sequence) so `stem + tail` fits `limit` bytes."""
    room = limit - len(os.fsencode(tail))
    if room < 1:
        raise OSError(errno.ENAMETOOLONG, "no room for a name before this ending", tail)
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return stem


def unique_stem(directory: Path, stem: str, suffixes: Iterable[str], *, head: str = "", tail: str = "") -> str:
    """HEAD STEM TAIL, or with -1, -2, ... after TAIL, so that no name+suffix exists in `directory`.

    STEM (only STEM: the head, tail, counter and suffix are kept whole) is cut so that every name
    fits the file system's NAME_MAX in bytes: an input that could be dropped can always be produced.
    """
    suffixes = list(suffixes)
    longest = max(suffixes, key=lambda s: len(os.fsencode(s)), default="")
    limit = name_max(directory) - len(os.fsencode(head))
    n = 0
    while True:
        end = f"{tail}-{n}" if n else tail
        candidate = f"{head}{fit_stem(stem, end + longest, limit)}{end}"
        if not any(os.path.lexists(directory / f"{candidate}{s}") for s in suffixes):
            return candidate
        n += 1


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


def temp_path(directory: Path, label: str, suffix: str = "") -> Path:
    """A new empty file `.i2vd-tmp-LABEL-XXXXXXXX[SUFFIX]` in `directory`, beside its final name.

    Short whatever the final name will be (LABEL is short), so that it fits wherever the final
    name fits; created with FILE_MODE.
    """
    for _ in range(100):
        path = directory / f"{TEMP_PREFIX}{label}-{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))


def write_temp(directory: Path, label: str, suffix: str, data: bytes) -> Path:
    """`data` in a new temporary file (see temp_path), fsynced."""
    tmp = temp_path(directory, label, suffix)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(dest: Path, data: bytes) -> None:
    """Write `data` to `dest` through a temporary file and fsyncs; never a half-written file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temp(dest.parent, "write", "", data)
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def json_bytes(obj: object) -> bytes:
    """UTF-8 JSON; names the OS gave us undecoded (surrogate escapes) become \\udcXX escapes, which
    json.loads turns back into the same str."""
    return (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8", "backslashreplace")


def write_json_atomic(dest: Path, obj: object) -> None:
    write_atomic(dest, json_bytes(obj))


def read_json(path: Path) -> object | None:
    """The JSON in `path`; None when it is missing or not JSON (a stranger's file, a torn write)."""
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make the names created in `directory` durable (after a power cut they still point at the files)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some network and FUSE file systems cannot sync a directory; their server orders the writes.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
