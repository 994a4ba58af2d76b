"""A real small file system for tests of full disks and cross-device moves: a tmpfs mount (needs root)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str, *options: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (e.g. "64k") on the existing folder `mount_point`; skip where mount is refused."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)), "tmpfs",
                             str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)
