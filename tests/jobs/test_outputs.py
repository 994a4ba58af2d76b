"""Output naming and publishing on real files: unique names, no overwrite, crash leftovers swept."""

from __future__ import annotations

import os
import time
from datetime import datetime

import pytest

from daemon.files import publish, temp_path
from daemon.jobs.outputs import METADATA, VIDEO, OutputName, sweep_temporaries, temp_label


def test_names_are_unique_and_prefixed(tmp_path):
    when = datetime(2026, 11, 22, 8, 30, 5)
    name = OutputName(tmp_path / "proj", "i2v_", "beach", when)
    (tmp_path / "proj").mkdir()
    first = name.choose((VIDEO, ".jpg", METADATA))
    assert first.video == tmp_path / "proj" / "i2v_beach_20261122_083005.mp4"
    first.path(".jpg").write_text("")  # any file of the set taken makes the name taken
    second = name.choose((VIDEO, ".jpg", METADATA))
    assert second.video.name == "i2v_beach_20261122_083005-1.mp4"
    assert second.metadata.name == "i2v_beach_20261122_083005-1.json"


def test_publish_never_overwrites(tmp_path):
    dest = tmp_path / "out.mp4"
    dest.write_bytes(b"precious")
    tmp = temp_path(tmp_path, "job1")
    tmp.write_bytes(b"new")
    with pytest.raises(FileExistsError):
        publish(tmp, dest)
    assert dest.read_bytes() == b"precious" and tmp.exists()
    publish(tmp, tmp_path / "other.mp4")
    assert (tmp_path / "other.mp4").read_bytes() == b"new" and not tmp.exists()


def test_sweep_removes_crash_leftovers_but_not_running_jobs(tmp_path):
    running = temp_path(tmp_path, temp_label(7))
    dead = temp_path(tmp_path, temp_label(8))
    stale_metadata = temp_path(tmp_path, "x.json")
    old = time.time() - 3600
    os.utime(stale_metadata, (old, old))
    fresh_metadata = temp_path(tmp_path, "y.json")  # another writer may be mid-write
    removed = sweep_temporaries(tmp_path, lambda: {7})
    assert sorted(removed) == sorted([dead, stale_metadata])
    assert running.exists() and fresh_metadata.exists()
