"""Output naming and publishing: MP4 and metadata JSON, written aside and renamed into place."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from daemon.files import TEMP_PREFIX, publish, temp_path, unique_stem, write_json_atomic
from pipeline.video import encode_mp4


@dataclass(frozen=True)
class OutputPaths:
    video: Path
    metadata: Path


def choose_paths(outputs_dir: Path, subdir: str, prefix: str, stem: str, when: datetime) -> OutputPaths:
    """outputs/[subdir/]PREFIXSTEM_YYYYMMDD_HHMMSS.mp4 (+ .json), suffixed -1, -2... if taken."""
    directory = outputs_dir / subdir
    directory.mkdir(parents=True, exist_ok=True)
    base = unique_stem(directory, f"{prefix}{stem}_{when:%Y%m%d_%H%M%S}", (".mp4", ".json"))
    return OutputPaths(directory / f"{base}.mp4", directory / f"{base}.json")


def temp_label(job_id: int) -> str:
    return f"job{job_id}"


def job_of_temp(name: str) -> int | None:
    """The job id a temporary output file belongs to, if it is one of ours."""
    if not name.startswith(f"{TEMP_PREFIX}job"):
        return None
    digits = name[len(TEMP_PREFIX) + 3:].split("-", 1)[0]
    return int(digits) if digits.isdigit() else None


def encode_video(job_id: int, frames: np.ndarray, fps: int, directory: Path) -> Path:
    """Encode to a temporary file beside the final name; returns the temporary path."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(directory, temp_label(job_id))
    try:
        encode_mp4(frames, tmp, fps)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def publish_outputs(tmp_video: Path, paths: OutputPaths, metadata: dict) -> None:
    """Video first, then its metadata: a metadata file always describes a complete video."""
    publish(tmp_video, paths.video)
    write_json_atomic(paths.metadata, metadata)


def sweep_temporaries(outputs_dir: Path, running_jobs: Callable[[], set[int]]) -> list[Path]:
    """Delete our temporary files whose job is not running any more (left by a crash).

    The running jobs are read after the listing: a temporary file exists only while its job runs,
    so one listed and then not running is garbage, even when other daemons share outputs/.
    """
    removed = []
    candidates = list(outputs_dir.rglob(f"{TEMP_PREFIX}*"))
    keep_jobs = running_jobs()
    for tmp in candidates:
        job_id = job_of_temp(tmp.name)
        try:
            fresh = time.time() - tmp.stat().st_mtime < 600
        except FileNotFoundError:
            continue  # published meanwhile
        if job_id in keep_jobs or (job_id is None and fresh):
            continue  # a running job's, or another writer's fresh metadata
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
