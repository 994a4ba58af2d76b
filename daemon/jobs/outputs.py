"""A job's outputs: a set of files (the video, extras such as a poster, the metadata JSON) that is
published whole or not at all, once per job.

Every file is finished and fsynced under a short temporary name in the output folder; the final
names are recorded in the database under the job's lease; then the files are linked into place:
the video first (it claims the name: linking never overwrites), the extras, a directory fsync, and
the metadata last. The metadata in place is the set's commit mark. A set an earlier attempt left
without it is finished when its temporary metadata is there and every file that lists is in place
(`finish_set`), and removed otherwise (`discard_set`): never a second set for one job.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard

from daemon.files import (TEMP_PREFIX, fsync_dir, fsync_file, json_bytes, publish, read_json, sha256,
                          temp_path, unique_stem, write_temp)

VIDEO = ".mp4"
METADATA = ".json"
POSTER = ".jpg"
PREVIEW = ".preview.webp"
RAW_VIDEO = ".raw.mp4"  # the generated frames as they are, kept beside an interpolated video on request
NAME_RACES = 20  # another job's set taking our chosen name between the choice and the link; rare


@dataclass(frozen=True)
class OutputPaths:
    """Final names of a set: BASE.mp4, BASE.json, and BASE+suffix for each extra."""

    video: Path
    metadata: Path

    @classmethod
    def recorded(cls, video: str | None, metadata: str | None) -> OutputPaths | None:
        """The names an attempt recorded in the database, if any."""
        return cls(Path(video), Path(metadata)) if video and metadata else None

    @property
    def base(self) -> str:
        return self.video.name.removesuffix(VIDEO)

    def path(self, suffix: str) -> Path:
        return self.video.with_name(self.base + suffix)


@dataclass(frozen=True)
class OutputName:
    """outputs/[subdir/]PREFIX STEM _YYYYMMDD_HHMMSS [-N] SUFFIX, STEM cut to fit NAME_MAX in bytes."""

    directory: Path
    prefix: str
    stem: str
    when: datetime

    def choose(self, suffixes: Iterable[str]) -> OutputPaths:
        """Names free for every suffix of the set (-1, -2... when taken)."""
        base = unique_stem(self.directory, self.stem, suffixes, head=self.prefix,
                           tail=f"_{self.when:%Y%m%d_%H%M%S}")
        return OutputPaths(self.directory / f"{base}{VIDEO}", self.directory / f"{base}{METADATA}")


@dataclass(frozen=True)
class Artifact:
    """One file of a set: its final name is BASE + suffix; until published it lives at `temp`."""

    suffix: str
    temp: Path


class StagedOutputs:
    """A job's output files under temporary names until `publish` puts them all in place.

    A context manager: leaving it without publishing (an error, a lost lease) removes them.
    """

    def __init__(self, job_id: int, name: OutputName) -> None:
        self.job_id, self.name = job_id, name
        self._artifacts: list[Artifact] = []

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        return tuple(self._artifacts)

    def temp(self, suffix: str) -> Path:
        """A new empty temporary file for the set's `suffix` file (".mp4", ".jpg"...): write it there."""
        if not suffix.startswith(".") or suffix == METADATA or any(a.suffix == suffix for a in self._artifacts):
            raise ValueError(f"{suffix!r}: each file of a set needs its own suffix, starting with '.', "
                             f"other than {METADATA!r} (the metadata's)")
        if not self.name.directory.is_dir():
            self.name.directory.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.name.directory.parent)  # a new subfolder's own name is durable too
        path = temp_path(self.name.directory, temp_label(self.job_id), suffix)
        self._artifacts.append(Artifact(suffix, path))
        return path

    def publish(self, metadata: Callable[[OutputPaths], dict], record: Callable[[OutputPaths], bool],
                before_commit: Callable[[], None] | None = None) -> OutputPaths | None:
        """Put the set in place with its metadata; None (nothing published) when `record` refuses.

        `metadata` gives the JSON for the chosen names; `files` (name, bytes, sha256 of every other
        file) is added to it. `record` stores the names under the job's lease before anything is
        in place. `before_commit` runs when all but the metadata is in place (fault injection).
        """
        video = next((a for a in self._artifacts if a.suffix == VIDEO), None)
        if video is None:
            raise ValueError("an output set needs its video")
        directory = self.name.directory
        suffixes = [a.suffix for a in self._artifacts] + [METADATA]
        digests = []
        for artifact in self._artifacts:
            fsync_file(artifact.temp)
            digests.append((artifact.suffix, artifact.temp.stat().st_size, sha256(artifact.temp)))
        placed: list[Path] = []
        staged_metadata = None
        try:
            for _ in range(NAME_RACES):
                paths = self.name.choose(suffixes)
                document = {**metadata(paths), "files": [
                    {"name": paths.path(suffix).name, "bytes": size, "sha256": digest}
                    for suffix, size, digest in digests]}
                if staged_metadata is not None:
                    staged_metadata.unlink(missing_ok=True)
                staged_metadata = write_temp(directory, temp_label(self.job_id), METADATA, json_bytes(document))
                if not record(paths):
                    return None
                try:
                    publish(video.temp, paths.video)
                except FileExistsError:
                    continue  # another job's set took the name after we chose it: choose again
                placed.append(paths.video)
                break
            else:
                raise FileExistsError(f"{NAME_RACES} names for {paths.base} were taken while publishing")
            for artifact in self._artifacts:
                if artifact is not video:
                    publish(artifact.temp, paths.path(artifact.suffix))
                    placed.append(paths.path(artifact.suffix))
            fsync_dir(directory)  # the files are durable before their commit mark names them
            if before_commit is not None:
                before_commit()
            try:
                publish(staged_metadata, paths.metadata)
                placed.append(paths.metadata)
            except FileExistsError:
                if not _is_jobs(read_json(paths.metadata), self.job_id):
                    raise
                # Recovery took our expired lease for a crash and finished this very set (finish_set).
            fsync_dir(directory)
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            raise
        finally:
            if staged_metadata is not None:
                staged_metadata.unlink(missing_ok=True)
            self.discard()
        return paths

    def discard(self) -> None:
        """Remove the temporary files not published (none are left after `publish`)."""
        for artifact in self._artifacts:
            artifact.temp.unlink(missing_ok=True)
        self._artifacts.clear()


def finish_set(job_id: int, paths: OutputPaths) -> bool:
    """True when the job's set at `paths` is complete, finishing it first when only its metadata's
    rename is missing (its temporary metadata is there and every file it lists is in place)."""
    placed = read_json(paths.metadata)
    if placed is not None:
        return _is_jobs(placed, job_id)
    for staged in _staged_metadata(job_id, paths):
        if not _all_in_place(paths.video.parent, staged):
            continue
        try:
            publish(staged.path, paths.metadata)
        except FileExistsError:  # another daemon recovering the same job finished it first
            return _is_jobs(read_json(paths.metadata), job_id)
        except FileNotFoundError:
            continue
        fsync_dir(paths.metadata.parent)
        return True
    return False


def discard_set(job_id: int, paths: OutputPaths) -> list[Path]:
    """Remove what an unfinished set left in place, and the job's temporary files; returns them.

    The files in place are the set's only when its video is there (the video is placed first and
    claims the name) and, where the staged metadata survives, is the very file it describes.
    Call it once the job is no longer running under that attempt.
    """
    directory = paths.video.parent
    removed = []
    if read_json(paths.metadata) is None and paths.video.is_file():
        staged = _staged_metadata(job_id, paths)
        described = [f for s in staged for f in s.files if f.get("name") == paths.video.name]
        if not staged or any(_in_place(directory, f) for f in described):
            removed += [p for p in directory.glob(glob.escape(paths.base) + ".*") if p.is_file()]
    removed += list(directory.glob(f"{glob.escape(TEMP_PREFIX + temp_label(job_id))}-*"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


@dataclass(frozen=True)
class _Staged:
    path: Path
    files: tuple[dict, ...]


def _staged_metadata(job_id: int, paths: OutputPaths) -> list[_Staged]:
    """The job's temporary metadata files that describe the set at `paths`."""
    found = []
    pattern = f"{glob.escape(TEMP_PREFIX + temp_label(job_id))}-*{METADATA}"
    for path in paths.video.parent.glob(pattern):
        document = read_json(path)
        if _is_jobs(document, job_id) and document.get("video") == paths.video.name \
                and isinstance(document.get("files"), list):
            found.append(_Staged(path, tuple(f for f in document["files"] if isinstance(f, dict))))
    return found


def _is_jobs(document: object, job_id: int) -> TypeGuard[dict[str, Any]]:
    return isinstance(document, dict) and document.get("job_id") == job_id


def _all_in_place(directory: Path, staged: _Staged) -> bool:
    return bool(staged.files) and all(_in_place(directory, f) for f in staged.files)


def _in_place(directory: Path, listed: dict) -> bool:
    """The file a metadata lists is in place, whole, and the same one (same bytes)."""
    path = directory / str(listed.get("name", ""))
    try:
        return path.stat().st_size == listed.get("bytes") and sha256(path) == listed.get("sha256")
    except (FileNotFoundError, NotADirectoryError):
        return False


def temp_label(job_id: int) -> str:
    return f"job{job_id}"


def job_of_temp(name: str) -> int | None:
    """The job id a temporary output file belongs to, if it is one of ours."""
    if not name.startswith(f"{TEMP_PREFIX}job"):
        return None
    digits = name[len(TEMP_PREFIX) + 3:].split("-", 1)[0]
    return int(digits) if digits.isdigit() else None


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
