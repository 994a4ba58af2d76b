"""Intake: decide when a dropped pair is complete, validate it, queue it exactly once, move it out.

Readiness is decided by stat alone: a file is ready when its size, mtime and inode stayed the same
for `settle_seconds` over at least two checks. File-system events only say where to look.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from daemon import __version__, metrics
from daemon.errors import InputRejected
from daemon.catalog import ModelCatalog
from daemon.files import TEMP_PREFIX, move, unique_stem, write_json_atomic
from daemon.images import check_image, is_image_name
from daemon.logs import get_logger
from daemon.models import utcnow
from daemon.queue import JobQueue, NewJob
from daemon.settings import Settings
from daemon.sidecar import Sidecar, params_for, parse_sidecar

log = get_logger("i2vd.intake")

SIDECAR_SUFFIX = ".json"
RESERVED_DIRS = ("done", "failed")
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", "~")
TEMP_PREFIXES = (".", "~$", ".~lock", TEMP_PREFIX)


def is_temporary_name(name: str) -> bool:
    """Hidden files and the names copy tools, browsers and editors write before the final rename."""
    lower = name.lower()
    return lower.startswith(TEMP_PREFIXES) or lower.endswith(TEMP_SUFFIXES)


@dataclass
class _Seen:
    signature: tuple[int, int, int, int]  # size, mtime_ns, inode, mode
    changed_at: float
    first_seen: float
    checks: int = 1


@dataclass(frozen=True)
class _Pair:
    directory: Path
    stem: str
    image: Path | None
    sidecar: Path | None

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.image, self.sidecar) if p is not None]


@dataclass
class IntakeStats:
    queued: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class Intake:
    """Tracks candidate files in the inbox and turns settled pairs into queued jobs."""

    def __init__(self, settings: Settings, queue: JobQueue, on_queued=lambda: None,
                 catalog: ModelCatalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or ModelCatalog.from_settings(settings)
        self.queue = queue
        self.on_queued = on_queued
        self.stats = IntakeStats()
        self._seen: dict[Path, _Seen] = {}
        self._dirty: set[Path] = set()
        self._dirty_lock = threading.Lock()
        self._excluded = [p for p in (settings.outputs_dir, settings.state_dir)
                          if p.is_relative_to(settings.inbox_dir) and p != settings.inbox_dir]

    # -- discovery ------------------------------------------------------------------------------

    def notify(self, path: str | Path) -> None:
        """Called from the watcher thread: something happened at `path`."""
        with self._dirty_lock:
            self._dirty.add(Path(os.fsdecode(path)))

    def scan(self) -> None:
        """Walk the whole inbox (start-up, periodic safety net, polling)."""
        for root, dirs, files in os.walk(self.settings.inbox_dir):
            root_path = Path(root)
            keep = []
            for name in dirs:
                path = root_path / name
                if self._ignored(path):
                    continue
                if is_image_name(name) or name.lower().endswith(SIDECAR_SUFFIX):
                    self._observe(path)  # a directory named like an input: reject it, don't descend
                else:
                    keep.append(name)
            dirs[:] = keep
            for name in files:
                self._observe(root_path / name)

    def _ignored(self, path: Path) -> bool:
        inbox = self.settings.inbox_dir
        if not path.is_relative_to(inbox) or path == inbox:
            return True
        rel = path.relative_to(inbox)
        if rel.parts[0] in RESERVED_DIRS or any(is_temporary_name(p) for p in rel.parts):
            return True
        return any(path.is_relative_to(ex) for ex in self._excluded)

    def _observe(self, path: Path) -> None:
        if self._ignored(path):
            return
        name = path.name
        if not (is_image_name(name) or name.lower().endswith(SIDECAR_SUFFIX)):
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._seen.pop(path, None)
            return
        signature = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)
        now = time.monotonic()
        seen = self._seen.get(path)
        if seen is None:
            self._seen[path] = _Seen(signature, now, now)
            log.debug("inbox_file_seen", file=str(path.relative_to(self.settings.inbox_dir)), size=st.st_size)
        elif seen.signature != signature:
            seen.signature, seen.changed_at, seen.checks = signature, now, 1
        else:
            seen.checks += 1

    # -- the loop's work ----------------------------------------------------------------------

    def tick(self) -> float:
        """Re-check tracked files, take settled pairs; return seconds until a check is due."""
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        for path in dirty:
            if path.is_dir() and not path.is_symlink() and not (
                is_image_name(path.name) or path.name.lower().endswith(SIDECAR_SUFFIX)
            ):
                if not self._ignored(path):
                    self._scan_dir(path)
            else:
                self._observe(path)
        for path in list(self._seen):
            if path not in dirty:
                self._observe(path)
        return self._take_ready()

    def _scan_dir(self, directory: Path) -> None:
        for root, dirs, files in os.walk(directory):
            dirs[:] = [d for d in dirs if not self._ignored(Path(root) / d)]
            for name in files:
                self._observe(Path(root) / name)

    def _ready(self, path: Path, now: float) -> bool:
        seen = self._seen[path]
        return seen.checks >= 2 and now - seen.changed_at >= self.settings.settle_seconds

    def _take_ready(self) -> float:
        now = time.monotonic()
        groups: dict[tuple[Path, str], list[Path]] = {}
        for path in self._seen:
            stem = path.name[: -len(path.suffix)] if path.suffix else path.name
            groups.setdefault((path.parent, stem.casefold()), []).append(path)

        next_due = self.settings.settle_seconds
        for (directory, _), paths in groups.items():
            try:
                next_due = min(next_due, self._take_group(directory, paths, now))
            except Exception:  # one unreadable pair must not stop the others; it is retried later
                log.exception("intake_error", files=[p.name for p in paths])
        return next_due

    def _take_group(self, directory: Path, paths: list[Path], now: float) -> float:
        """Take one name's files if they are ready; return seconds until they need another look.

        A pair that raises here left `_seen`; the next rescan finds it again.
        """
        settle = self.settings.settle_seconds
        if not all(self._ready(p, now) for p in paths):
            return max(min(settle - (now - self._seen[p].changed_at) for p in paths), 0.05)
        images = [p for p in paths if is_image_name(p.name)]
        sidecars = [p for p in paths if p.name.lower().endswith(SIDECAR_SUFFIX)]
        stem = paths[0].name[: -len(paths[0].suffix)]
        if len(images) > 1 or len(sidecars) > 1:
            names = ", ".join(sorted(p.name for p in paths))
            self._finish(paths)
            self._reject(_Pair(directory, stem, None, None), InputRejected(
                "ambiguous_pair", f"Several files share the name {stem!r} ({names}); i2vd cannot tell "
                "which image belongs to the sidecar.", hint="Give each image its own name."), paths)
            return settle
        pair = _Pair(directory, stem, images[0] if images else None, sidecars[0] if sidecars else None)
        if pair.image and pair.sidecar:
            self._finish(paths)
            self._ingest(pair)
            return settle
        timeout = self.settings.pair_timeout_seconds
        lonely_for = now - min(self._seen[p].first_seen for p in paths)
        if lonely_for < timeout:
            return timeout - lonely_for
        self._finish(paths)
        if pair.image and self.settings.default_prompt:
            self._ingest(pair)
        elif pair.image:
            self._reject(pair, InputRejected(
                "missing_sidecar", f"{pair.image.name} waited {timeout:g} s for {stem}.json, which never came.",
                hint=f"Drop {stem}.json with at least a prompt, or configure default_prompt."))
        else:
            self._reject(pair, InputRejected(
                "missing_image", f"{pair.sidecar.name} waited {timeout:g} s for its image "
                f"({stem}.png/.jpg/.jpeg/.webp), which never came.",
                hint="Drop the image under the same name as the sidecar."))
        return settle

    def _finish(self, paths: list[Path]) -> None:
        for p in paths:
            self._seen.pop(p, None)

    # -- one pair -------------------------------------------------------------------------------

    def _ingest(self, pair: _Pair) -> None:
        rel_dir = pair.directory.relative_to(self.settings.inbox_dir)
        try:
            sidecar = self._read_sidecar(pair)
            model, params = params_for(sidecar, rel_dir, self.catalog, self.settings)
            image = pair.image.resolve() if self._symlink_allowed(pair.image) else pair.image
            check_image(image, max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels)
        except InputRejected as rejection:
            self._reject(pair, rejection)
            return
        except FileNotFoundError:
            return  # it went away while we looked; nothing to take
        try:
            key = idempotency_key(self.settings.inbox_dir, pair.files)
        except FileNotFoundError:
            return
        done_dir = self.settings.done_dir / rel_dir
        base = unique_stem(done_dir, pair.stem, [p.suffix for p in pair.files])
        # No lookup first: the insert itself tells a known key (one database round trip less per pair).
        job, created = self.queue.create(NewJob(
            idempotency_key=key,
            params=params.to_dict(),
            model=model.name,
            priority=sidecar.priority,
            output_stem=sidecar.output_name or pair.stem,
            output_subdir=str(rel_dir) if rel_dir.parts else "",
            source_image=str(pair.image),
            source_sidecar=str(pair.sidecar) if pair.sidecar else None,
            image_path=str(done_dir / f"{base}{pair.image.suffix}"),
            sidecar_path=str(done_dir / f"{base}{pair.sidecar.suffix}") if pair.sidecar else None,
        ))
        if not created:
            # Known key: queued already, or another daemon is moving the files right now. Leave them
            # to it; an intake a crash left half done is finished by recover(), not here.
            return
        self.complete(job)

    def _symlink_allowed(self, path: Path) -> bool:
        return self.settings.follow_symlinks and path.is_symlink()

    def _read_sidecar(self, pair: _Pair) -> Sidecar:
        if pair.sidecar is None:
            return Sidecar(prompt=self.settings.default_prompt)
        path = pair.sidecar
        if path.is_symlink() and not self.settings.follow_symlinks:
            raise InputRejected("symlink", f"{path.name} is a symbolic link; i2vd does not follow links.",
                                hint="Copy the file itself into the inbox, or set follow_symlinks.")
        if not stat.S_ISREG(os.stat(path).st_mode):  # a directory, or a FIFO that would block the read
            raise InputRejected("not_a_file", f"{path.name} is not a regular file.",
                                hint="Drop the sidecar as a plain JSON file.")
        with open(path, "rb") as fh:
            raw = fh.read(64 * 1024 + 1)
        return parse_sidecar(raw)

    def complete(self, job) -> None:
        """Move a job's inputs into done/ and release it to the workers; safe to repeat."""
        moves = [(job.source_image, job.image_path), (job.source_sidecar, job.sidecar_path)]
        try:
            for src, dest in moves:
                if src is not None:
                    move(Path(src), Path(dest))
        except FileNotFoundError:
            self.queue.fail(job.id, "inputs_vanished", "The inputs disappeared from the inbox during intake.")
            log.warning("job_failed", job_id=job.id, error_code="inputs_vanished")
            return
        if self.queue.mark_queued(job.id):
            self.stats.queued += 1
            log.info("job_queued", job_id=job.id, image=Path(job.source_image).name,
                     sidecar=Path(job.source_sidecar).name if job.source_sidecar else None,
                     priority=job.priority)
            self.on_queued()

    def recover(self, older_than: timedelta | None = None) -> None:
        """Finish intakes that a crash (or another daemon's crash) left half done."""
        for job in self.queue.in_intake(older_than):
            log.info("intake_resumed", job_id=job.id)
            self.complete(job)

    def _reject(self, pair: _Pair, rejection: InputRejected, files: list[Path] | None = None) -> None:
        files = files if files is not None else pair.files
        rel_dir = pair.directory.relative_to(self.settings.inbox_dir)
        failed_dir = self.settings.failed_dir / rel_dir
        base = unique_stem(failed_dir, pair.stem, [".error.json", *{p.suffix for p in files}])
        report = {
            "code": rejection.code,
            "error": str(rejection),
            "field_errors": rejection.field_errors,
            "hint": rejection.hint,
            "files": [p.name for p in files],
            "moved_to": str(failed_dir),
            "time": utcnow().isoformat(),
            "i2vd_version": __version__,
        }
        write_json_atomic(failed_dir / f"{base}.error.json", report)
        for path in files:
            try:
                move(path, failed_dir / f"{base}{path.suffix}")
            except FileNotFoundError:
                pass
        self.stats.rejected[rejection.code] = self.stats.rejected.get(rejection.code, 0) + 1
        metrics.intake_rejections.labels(rejection.code).inc()
        log.warning("intake_rejected", error_code=rejection.code, reason=str(rejection),
                    files=[p.name for p in files], error_file=f"{base}.error.json")


def idempotency_key(inbox: Path, files: list[Path]) -> str:
    """Identifies this instance of the files: their names, inodes, sizes and mtimes.

    A crash before the move leaves the same key on the same files; a new copy is a new key.
    """
    digest = hashlib.sha256()
    for path in files:
        st = os.lstat(path)
        digest.update(f"{path.relative_to(inbox)}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()
