"""daemon/files.py on unusual filesystems: moves across mounts, publishing without hard links."""

from __future__ import annotations

import errno
import os

import pytest

from daemon import files
from daemon.files import move, publish
from support.tmpfs import tmpfs


@pytest.fixture
def other_filesystem(tmp_path):
    """A small tmpfs mounted inside tmp_path: a real second filesystem (renames into it fail with EXDEV)."""
    mount_point = tmp_path / "other-fs"
    mount_point.mkdir()
    with tmpfs(mount_point, "4m"):
        yield mount_point


def test_move_to_another_filesystem_copies_then_removes(tmp_path, other_filesystem):
    src = tmp_path / "beach.png"
    src.write_bytes(b"image bytes")
    dest = other_filesystem / "done" / "beach.png"
    with pytest.raises(OSError) as rename:  # what move() meets first
        os.rename(src, other_filesystem / "probe")
    assert rename.value.errno == errno.EXDEV
    assert move(src, dest) is True
    assert dest.read_bytes() == b"image bytes" and not src.exists()
    assert move(src, dest) is False  # repeating an interrupted move is safe


def test_move_to_another_filesystem_never_overwrites(tmp_path, other_filesystem):
    src = tmp_path / "beach.png"
    src.write_bytes(b"new")
    (other_filesystem / "beach.png").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        move(src, other_filesystem / "beach.png")
    assert (other_filesystem / "beach.png").read_bytes() == b"old" and src.read_bytes() == b"new"


@pytest.fixture
def no_hard_links(monkeypatch):
    """Fault shim, for this test only: link() fails as on filesystems without hard links (some SMB
    shares, FAT); none can be mounted on a CI runner, whose kernel lacks vfat."""
    calls = []

    def link(src, dst, **kwargs):
        calls.append((src, dst))
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files.os, "link", link)
    return calls


def test_publish_without_hard_links_renames_and_still_refuses_to_overwrite(tmp_path, no_hard_links):
    tmp = files.temp_path(tmp_path, "video")
    tmp.write_bytes(b"video one")
    dest = tmp_path / "beach.mp4"
    publish(tmp, dest)
    assert no_hard_links, "publish() did not try a hard link first"
    assert dest.read_bytes() == b"video one" and not tmp.exists()

    second = files.temp_path(tmp_path, "video")
    second.write_bytes(b"video two")
    with pytest.raises(FileExistsError):
        publish(second, dest)
    assert dest.read_bytes() == b"video one" and second.read_bytes() == b"video two"


def test_publish_with_hard_links_refuses_to_overwrite(tmp_path):
    dest = tmp_path / "beach.mp4"
    dest.write_bytes(b"first")
    tmp = files.temp_path(tmp_path, "video")
    tmp.write_bytes(b"second")
    with pytest.raises(FileExistsError):
        publish(tmp, dest)
    assert dest.read_bytes() == b"first"
