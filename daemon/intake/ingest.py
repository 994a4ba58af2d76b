"""Intake: turn complete pairs into queued jobs exactly once, and move every pair out of the inbox.

When the files are ready (tracker.py), a pair is validated and queued, or moved to failed/ with a
reason, also when handling it keeps failing unexpectedly. Queueing survives a crash at any step:
the job row comes first (state intake), then the moves to done/, then the state queued.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from daemon import __version__, metrics
from daemon.db.engine import DATABASE_UNAVAILABLE
from daemon.db.tables import Job, JobState, utcnow
from daemon.errors import InputRejected
from daemon.files import move, unique_stem, write_json_atomic
from daemon.intake.images import check_image, is_image_name
from daemon.intake.inbox import (
    Pair,
    is_sidecar_name,
    path_from_text,
    path_text,
    safe_name,
    shown,
    stem_of,
)
from daemon.intake.sidecar import Sidecar, params_for, parse_sidecar
from daemon.intake.tracker import ReadinessTracker
from daemon.intake.watcher import InboxEvent
from daemon.jobs.codes import ErrorCode
from daemon.jobs.queue import JobQueue, NewJob
from daemon.logs import get_logger
from daemon.models.catalog import ModelCatalog
from daemon.settings import Settings

log = get_logger("i2vd.intake")

MAX_ATTEMPTS = 3  # unexpected errors on one pair before it goes to failed/ as internal_error
# Pairs queued per two transactions (jobs made, jobs released): a big drop costs a few commits, not
# two per pair (bench/intake_rate.py), while the first jobs reach the workers without waiting for the rest.
BATCH_SIZE = 100
# The database is away (down, locked, pool exhausted): no pair's fault, so never counted against one.


@dataclass
class IntakeStats:
    queued: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class Intake:
    """Turns the pairs its tracker finds ready into queued jobs, or rejects them."""

    def __init__(self, settings: Settings, queue: JobQueue, on_queued=lambda: None,
                 catalog: ModelCatalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or ModelCatalog.from_settings(settings)
        self.queue = queue
        self.on_queued = on_queued
        self.stats = IntakeStats()
        self.tracker = ReadinessTracker(settings)
        self._attempts: dict[tuple[Path, str], int] = {}  # unexpected errors per (folder, stem)
        self._names_by_folded: dict[tuple[Path, str], list[str]] = {}  # tracked names by case-folded stem
        self._pending: list[tuple[Pair, NewJob]] = []  # taken, validated, not in the database yet
        self._pending_names: set[Path] = set()  # their names in done/

    def notify(self, event: InboxEvent | str | Path) -> None:
        """Called from the watcher thread: something happened at a path."""
        self.tracker.notify(event)

    def scan(self) -> None:
        """Walk the whole inbox (start-up, periodic safety net, polling)."""
        self.tracker.scan()

    def tick(self) -> float:
        """Re-check tracked files, take settled pairs; return seconds until a check is due."""
        self.tracker.refresh()
        due = self._take_ready()
        self.tracker.forget_gone_writers()
        return due

    def _take_ready(self) -> float:
        now = time.monotonic()
        groups = self.tracker.groups()
        self._attempts = {key: n for key, n in self._attempts.items() if key in groups}
        # Before any group leaves: a lone half's hint names its twin in another case. A twin that left in
        # an earlier tick (its own timeout came first) is remembered while a name of its kind remains.
        earlier, self._names_by_folded = self._names_by_folded, {}
        for (directory, stem), paths in groups.items():
            self._names_by_folded.setdefault((directory, stem.casefold()), []).extend(p.name for p in paths)
        for key, names in self._names_by_folded.items():
            names.extend(n for n in earlier.get(key, ()) if n not in names)

        next_due = self.settings.settle_seconds
        for (directory, stem), paths in groups.items():
            try:
                due = self._take_group(directory, stem, paths, now)
            except Exception as exc:  # one pair must not stop the others
                due = self._attempt_failed(directory, stem, paths, exc)
            next_due = min(next_due, due)
            if len(self._pending) >= BATCH_SIZE:
                self._queue_pending()
        self._queue_pending()
        return next_due

    def _take_group(self, directory: Path, stem: str, paths: list[Path], now: float) -> float:
        """Take one name's files if they are ready; return seconds until they need another look."""
        settle = self.settings.settle_seconds
        wait = self.tracker.wait(paths, now)
        if wait is not None:
            return wait
        images = [p for p in paths if is_image_name(p.name)]
        sidecars = [p for p in paths if is_sidecar_name(p.name)]
        if len(images) > 1 or len(sidecars) > 1:
            names = ", ".join(sorted(p.name for p in paths))
            self.tracker.forget(paths)
            self._reject(Pair(directory, stem, None, None), InputRejected(
                ErrorCode.AMBIGUOUS_PAIR, f"Several files share the name {stem!r} ({names}); i2vd cannot tell "
                "which image belongs to the sidecar.", hint="Give each image its own name."), paths)
            return settle
        pair = Pair(directory, stem, images[0] if images else None, sidecars[0] if sidecars else None)
        if pair.image and pair.sidecar:
            self.tracker.forget(paths)
            self._ingest(pair)
            return settle
        timeout = self.settings.pair_timeout_seconds
        lonely_for = now - self.tracker.first_seen(paths)
        if lonely_for < timeout:
            if lonely_for < settle:  # the other half is usually a moment behind: no news yet
                return min(settle - lonely_for, timeout - lonely_for)
            self._announce_waiting(pair, paths, timeout - lonely_for)
            return timeout - lonely_for
        self.tracker.forget(paths)
        if pair.image and self.settings.default_prompt:
            self._ingest(pair)
        elif pair.image:
            self._reject(pair, InputRejected(
                ErrorCode.MISSING_SIDECAR, f"{pair.image.name} waited {timeout:g} s for {stem}.json, which never came.",
                hint=self._case_hint(pair) or f"Drop {stem}.json with at least a prompt, or configure default_prompt."))
        elif pair.sidecar:
            self._reject(pair, InputRejected(
                ErrorCode.MISSING_IMAGE, f"{pair.sidecar.name} waited {timeout:g} s for its image "
                f"({stem}.png/.jpg/.jpeg/.webp), which never came.",
                hint=self._case_hint(pair) or "Drop the image under the same name as the sidecar."))
        return settle

    def _announce_waiting(self, pair: Pair, paths: list[Path], left: float) -> None:
        """Say once that a lone half waits, and for what: otherwise it waits in silence."""
        if not self.tracker.announce_once(paths):
            return
        present = pair.image or pair.sidecar
        if present is None:  # a group holds at least one file
            return
        wanted = f"{pair.stem}.json" if pair.image else f"{pair.stem}.png/.jpg/.jpeg/.webp"
        fallback = " (then default_prompt is used)" if pair.image and self.settings.default_prompt else ""
        log.info("pair_waiting", file=shown(str(present.relative_to(self.settings.inbox_dir))),
                 waiting_for=shown(wanted), seconds_left=round(left),
                 detail=self._case_hint(pair)
                 or f"failed after pair_timeout_seconds unless the other half comes{fallback}")

    def _case_hint(self, pair: Pair) -> str | None:
        """Names pair exactly, case included; say so when the other half is there in another case."""
        twins = sorted(shown(name) for name in self._names_by_folded.get((pair.directory, pair.stem.casefold()), [])
                       if stem_of(name) != pair.stem)
        if not twins:
            return None
        return (f"{', '.join(twins)} differs only in upper/lower case; image and sidecar must have "
                "exactly the same name: rename one of them.")

    def _attempt_failed(self, directory: Path, stem: str, paths: list[Path], exc: Exception) -> float:
        """An unexpected error on one pair: try again after a settle window, at most MAX_ATTEMPTS times."""
        files = [shown(p.name) for p in paths]
        self.tracker.retrack(paths)
        if isinstance(exc, DATABASE_UNAVAILABLE):
            log.warning("intake_error", files=files, error=shown(str(exc).splitlines()[0]),
                        detail="the database is unavailable; the pair is tried again")
            return self.settings.settle_seconds
        key = (directory, stem)
        attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
        log.error("intake_error", files=files, attempt=attempt, max_attempts=MAX_ATTEMPTS, exc_info=exc)
        if attempt < MAX_ATTEMPTS:
            return self.settings.settle_seconds
        del self._attempts[key]
        tracked = sorted((p for p in paths if self.tracker.is_tracked(p)),
                         key=lambda p: (not is_image_name(p.name), p.name))
        if not tracked:
            return self.settings.settle_seconds  # they went away meanwhile
        self.tracker.forget(tracked)
        error = shown(f"{type(exc).__name__}: {exc}")
        try:
            self._reject(Pair(directory, stem, None, None), InputRejected(
                ErrorCode.INTERNAL_ERROR, f"i2vd failed {attempt} times on these files: {error}",
                hint="Not a fault of the files as far as i2vd can tell: the log has the details "
                     "(intake_error). Drop them again once the cause is fixed."), tracked)
        except Exception:
            log.exception("intake_error", files=files, detail="could not move the files to failed/")
            self.tracker.retrack(tracked)
        return self.settings.settle_seconds

    # -- one pair -------------------------------------------------------------------------------

    def _ingest(self, pair: Pair) -> None:
        if pair.image is None:  # callers take only pairs with their image
            raise ValueError(f"{pair.stem}: no image to take")
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
        # Names i2vd makes are valid text, whatever bytes the dropped names hold.
        done_dir = self.settings.done_dir / safe_name(str(rel_dir))
        stem = safe_name(pair.stem)
        suffixes = [p.suffix for p in pair.files]
        base = unique_stem(done_dir, stem, suffixes)
        if any(done_dir / f"{base}{suffix}" in self._pending_names for suffix in suffixes):
            self._queue_pending()  # a pair waiting to be moved holds that name: move it, then choose again
            base = unique_stem(done_dir, stem, suffixes)
        new = NewJob(
            idempotency_key=key,
            params=params.to_dict(),
            model=model.name,
            priority=sidecar.priority,
            output_stem=sidecar.output_name or stem,
            output_subdir=safe_name(str(rel_dir)) if rel_dir.parts else "",
            source_image=path_text(pair.image),
            source_sidecar=path_text(pair.sidecar) if pair.sidecar else None,
            image_path=str(done_dir / f"{base}{pair.image.suffix}"),
            sidecar_path=str(done_dir / f"{base}{pair.sidecar.suffix}") if pair.sidecar else None,
        )
        self._pending.append((pair, new))
        self._pending_names.update(done_dir / f"{base}{suffix}" for suffix in suffixes)

    def _queue_pending(self) -> None:
        """Queue the pairs taken so far: one transaction makes their jobs, the moves follow, one releases them."""
        pending, self._pending = self._pending, []
        self._pending_names.clear()
        if not pending:
            return
        try:
            # No lookup first: the insert itself tells a known key (one database round trip less per pair).
            made = self.queue.create_many([new for _, new in pending])
        except Exception as exc:  # the database, most likely: each pair is tried again
            for pair, _ in pending:
                self._attempt_failed(pair.directory, pair.stem, pair.files, exc)
            return
        moved: list[tuple[Pair, Job]] = []
        for (pair, new), (job, created) in zip(pending, made, strict=True):
            try:
                taken = job if created else self._after_known(pair, new, job)
                if taken is not None and self._move_inputs(taken):
                    moved.append((pair, taken))
            except Exception as exc:  # one pair must not stop the others
                self._attempt_failed(pair.directory, pair.stem, pair.files, exc)
        try:
            self._release([job for _, job in moved])
        except Exception as exc:  # their files are in done/ already: recover() releases the jobs later
            for pair, _ in moved:
                self._attempt_failed(pair.directory, pair.stem, pair.files, exc)

    def _after_known(self, pair: Pair, new: NewJob, known: Job) -> Job | None:
        """The job for files whose key a job has already; None when the files are that job's."""
        key = new.idempotency_key
        while True:
            if known.state == JobState.INTAKE:
                # Another daemon is moving the files right now, or a crash left this intake half
                # done: recover() finishes it. Either way these files are that job's.
                return None
            # That job's intake is over, so its files left the inbox before its state changed:
            # files with the same identity here now were put back (`mv done/x.* .`). That is a
            # new request, under a key derived from the old job, the same in every daemon.
            try:
                if idempotency_key(self.settings.inbox_dir, pair.files) != key:
                    return None  # changed meanwhile: judged again once settled
            except FileNotFoundError:
                return None
            new = replace(new, idempotency_key=_key_after(new.idempotency_key, known.id))
            known, created = self.queue.create(new)
            if created:
                return known

    def _symlink_allowed(self, path: Path) -> bool:
        return self.settings.follow_symlinks and path.is_symlink()

    def _read_sidecar(self, pair: Pair) -> Sidecar:
        if pair.sidecar is None:
            return Sidecar(prompt=self.settings.default_prompt)
        path = pair.sidecar
        if path.is_symlink() and not self.settings.follow_symlinks:
            raise InputRejected(ErrorCode.SYMLINK, f"{path.name} is a symbolic link; i2vd does not follow links.",
                                hint="Copy the file itself into the inbox, or set follow_symlinks.")
        if not stat.S_ISREG(os.stat(path).st_mode):  # a directory, or a FIFO that would block the read
            raise InputRejected(ErrorCode.NOT_A_FILE, f"{path.name} is not a regular file.",
                                hint="Drop the sidecar as a plain JSON file.")
        with open(path, "rb") as fh:
            raw = fh.read(64 * 1024 + 1)
        return parse_sidecar(raw)

    def complete(self, job: Job) -> None:
        """Move a job's inputs into done/ and release it to the workers; safe to repeat."""
        if self._move_inputs(job):
            self._release([job])

    def _move_inputs(self, job: Job) -> bool:
        """Move a job's inputs into done/; False (and the job failed) when they vanished meanwhile."""
        moves = [(job.source_image, job.image_path), (job.source_sidecar, job.sidecar_path)]
        try:
            for src, dest in moves:
                if src is None:
                    continue
                if dest is None:  # intake writes both or neither
                    raise ValueError(f"job {job.id}: {src} has no destination in done/")
                move(path_from_text(src), Path(dest))
        except FileNotFoundError:
            self.queue.fail(job.id, ErrorCode.INPUTS_VANISHED, "The inputs disappeared from the inbox during intake.")
            log.warning("job_failed", job_id=job.id, error_code=ErrorCode.INPUTS_VANISHED)
            return False
        return True

    def _release(self, jobs: list[Job]) -> None:
        """intake -> queued for jobs whose inputs are in done/, in one transaction; wake the worker."""
        queued = set(self.queue.mark_queued_many([job.id for job in jobs]))
        for job in jobs:
            if job.id in queued:
                self.stats.queued += 1
                log.info("job_queued", job_id=job.id, image=shown(path_from_text(job.source_image).name),
                         sidecar=shown(path_from_text(job.source_sidecar).name) if job.source_sidecar else None,
                         priority=job.priority)
        if queued:
            self.on_queued()

    def recover(self, older_than: timedelta | None = None) -> None:
        """Finish intakes that a crash (or another daemon's crash) left half done."""
        for job in self.queue.in_intake(older_than):
            log.info("intake_resumed", job_id=job.id)
            self.complete(job)

    def _reject(self, pair: Pair, rejection: InputRejected, files: list[Path] | None = None) -> None:
        files = files if files is not None else pair.files
        rel_dir = pair.directory.relative_to(self.settings.inbox_dir)
        failed_dir = self.settings.failed_dir / rel_dir
        base = unique_stem(failed_dir, pair.stem, [".error.json", *{p.suffix for p in files}])
        names = [shown(p.name) for p in files]
        report = {
            "code": rejection.code,
            "error": shown(str(rejection)),
            "field_errors": rejection.field_errors,
            "hint": rejection.hint and shown(rejection.hint),
            "files": names,
            "moved_to": shown(str(failed_dir)),
            "time": utcnow().isoformat(),
            "i2vd_version": __version__,
        }
        write_json_atomic(failed_dir / f"{base}.error.json", report)
        for path in files:
            try:
                move(path, failed_dir / f"{base}{path.suffix}")
            except FileNotFoundError:
                pass
        self.queue.record_rejection(rejection.code, str(rejection), names, hint=rejection.hint,
                                    folder=str(rel_dir) if rel_dir.parts else "", error_file=f"{base}.error.json")
        self.stats.rejected[rejection.code] = self.stats.rejected.get(rejection.code, 0) + 1
        metrics.intake_rejections.labels(rejection.code).inc()
        log.warning("intake_rejected", error_code=rejection.code, reason=report["error"],
                    files=names, error_file=shown(f"{base}.error.json"))


def idempotency_key(inbox: Path, files: list[Path]) -> str:
    """Identifies this instance of the files: their names, inodes, sizes and mtimes.

    A crash before the move leaves the same key on the same files; a new copy is a new key.
    """
    digest = hashlib.sha256()
    for path in files:
        st = os.lstat(path)
        # fsencode: the name's bytes as the OS gave them (the same bytes as str.encode for UTF-8)
        identity = f"\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0".encode()
        digest.update(os.fsencode(path.relative_to(inbox)) + identity)
    return digest.hexdigest()


def _key_after(key: str, job_id: int) -> str:
    """The key of the same files dropped again after job `job_id` took them."""
    return hashlib.sha256(f"{key}\0after job {job_id}".encode()).hexdigest()
