"""Intake: decide when a dropped pair is complete, validate it, queue it exactly once, move it out.

A file renamed into place on the inbox's own file system (inotify) is complete by construction and
taken at once. Any other file is ready when its size, mtime and inode stayed the same for
`settle_seconds` over at least two checks, it is not empty, and (inotify) no writer still holds it
open; an empty or open file is given up on after `pair_timeout_seconds`. Every pair leaves the
inbox: queued, or moved to failed/ with a reason, also when handling it keeps failing unexpectedly.

Names are taken as the OS gives them (undecodable bytes as surrogates). What is shown to people
keeps those bytes as `\\xNN`; names i2vd makes (done/, outputs) replace them with U+FFFD.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from daemon import __version__, metrics
from daemon.errors import InputRejected
from daemon.jobs.codes import ErrorCode
from daemon.models.catalog import ModelCatalog
from daemon.files import TEMP_PREFIX, move, unique_stem, write_json_atomic
from daemon.intake.images import check_image, is_image_name
from daemon.logs import get_logger
from daemon.db.tables import JobState, utcnow
from daemon.jobs.queue import JobQueue, NewJob
from daemon.settings import Settings
from daemon.intake.sidecar import Sidecar, params_for, parse_sidecar
from daemon.intake.watcher import ARRIVED, CLOSED, WRITTEN, InboxEvent

log = get_logger("i2vd.intake")

SIDECAR_SUFFIX = ".json"
RESERVED_DIRS = ("done", "failed")
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", "~")
TEMP_PREFIXES = (".", "~$", ".~lock", TEMP_PREFIX)
MAX_ATTEMPTS = 3  # unexpected errors on one pair before it goes to failed/ as internal_error
# The database is away (down, locked, pool exhausted): no pair's fault, so never counted against one.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)


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
    whole: bool = False  # renamed into place and unchanged since: complete by construction
    announced: bool = False  # pair_waiting was logged for it

    @property
    def empty(self) -> bool:
        return self.signature[0] == 0 and stat.S_ISREG(self.signature[3])


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
        self._attempts: dict[tuple[Path, str], int] = {}  # unexpected errors per (folder, stem)
        self._names_by_folded: dict[tuple[Path, str], list[str]] = {}  # tracked names by case-folded stem
        # Filled by the watcher thread, under the lock.
        self._dirty: set[Path] = set()
        self._arrived: set[Path] = set()
        self._writing: set[Path] = set()  # written to, not closed since
        self._dirty_lock = threading.Lock()

    # -- discovery ------------------------------------------------------------------------------

    def notify(self, event: InboxEvent | str | Path) -> None:
        """Called from the watcher thread: something happened at a path."""
        if not isinstance(event, InboxEvent):
            event = InboxEvent(os.fsdecode(event))
        path = Path(event.path)
        with self._dirty_lock:
            self._dirty.add(path)
            if event.kind == WRITTEN:
                self._writing.add(path)
                self._arrived.discard(path)
            elif event.kind in (CLOSED, ARRIVED):
                self._writing.discard(path)
            if event.kind == ARRIVED:
                self._arrived.add(path)

    def scan(self) -> None:
        """Walk the whole inbox (start-up, periodic safety net, polling)."""
        for path in inbox_candidates(self.settings):
            self._observe(path)

    def _ignored(self, path: Path) -> bool:
        return is_ignored(self.settings, path)

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
            log.debug("inbox_file_seen", file=shown(str(path.relative_to(self.settings.inbox_dir))),
                      size=st.st_size)
        elif seen.signature != signature:
            seen.signature, seen.changed_at, seen.checks, seen.whole = signature, now, 1, False
        else:
            seen.checks += 1

    # -- the loop's work ----------------------------------------------------------------------

    def tick(self) -> float:
        """Re-check tracked files, take settled pairs; return seconds until a check is due."""
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
            arrived, self._arrived = self._arrived, set()
        for path in dirty:
            if path.is_dir() and not path.is_symlink() and not (
                is_image_name(path.name) or path.name.lower().endswith(SIDECAR_SUFFIX)
            ):
                if not self._ignored(path):
                    self._scan_dir(path)
            else:
                self._observe(path)
                if path in arrived and (seen := self._seen.get(path)) is not None:
                    seen.whole = True
        for path in list(self._seen):
            if path not in dirty:
                self._observe(path)
        due = self._take_ready()
        with self._dirty_lock:  # forget writers of files no longer tracked (taken, gone, temporary names)
            self._writing = {p for p in self._writing if p in self._seen or p in self._dirty}
        return due

    def _scan_dir(self, directory: Path) -> None:
        for root, dirs, files in os.walk(directory):
            dirs[:] = [d for d in dirs if not self._ignored(Path(root) / d)]
            for name in files:
                self._observe(Path(root) / name)

    def _not_ready_for(self, path: Path, now: float, writing: set[Path]) -> float | None:
        """None when `path` is ready to be judged, else seconds until it is worth another look."""
        seen, settle = self._seen[path], self.settings.settle_seconds
        timeout = self.settings.pair_timeout_seconds
        # An empty file may be a copy whose first bytes have not come yet; an open one a writer that
        # pauses. Both are judged as they are once pair_timeout has passed.
        if seen.empty and now - seen.first_seen < timeout:
            return min(settle, timeout - (now - seen.first_seen))
        if path in writing and now - seen.changed_at < timeout:
            return min(settle, timeout - (now - seen.changed_at))
        if seen.whole:
            return None
        if now - seen.changed_at < settle:
            return settle - (now - seen.changed_at)
        return None if seen.checks >= 2 else 0.05

    def _take_ready(self) -> float:
        now = time.monotonic()
        with self._dirty_lock:
            writing = set(self._writing)
        groups: dict[tuple[Path, str], list[Path]] = {}
        for path in self._seen:
            # The exact stem: Beach.png and beach.png are two different files on Linux.
            groups.setdefault((path.parent, _stem(path.name)), []).append(path)
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
                due = self._take_group(directory, stem, paths, now, writing)
            except Exception as exc:  # one pair must not stop the others
                due = self._attempt_failed(directory, stem, paths, exc)
            next_due = min(next_due, due)
        return next_due

    def _take_group(self, directory: Path, stem: str, paths: list[Path], now: float, writing: set[Path]) -> float:
        """Take one name's files if they are ready; return seconds until they need another look."""
        settle = self.settings.settle_seconds
        waits = [w for p in paths if (w := self._not_ready_for(p, now, writing)) is not None]
        if waits:
            return max(min(waits), 0.05)
        images = [p for p in paths if is_image_name(p.name)]
        sidecars = [p for p in paths if p.name.lower().endswith(SIDECAR_SUFFIX)]
        if len(images) > 1 or len(sidecars) > 1:
            names = ", ".join(sorted(p.name for p in paths))
            self._finish(paths)
            self._reject(_Pair(directory, stem, None, None), InputRejected(
                ErrorCode.AMBIGUOUS_PAIR, f"Several files share the name {stem!r} ({names}); i2vd cannot tell "
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
            if lonely_for < settle:  # the other half is usually a moment behind: no news yet
                return min(settle - lonely_for, timeout - lonely_for)
            self._announce_waiting(pair, paths, timeout - lonely_for)
            return timeout - lonely_for
        self._finish(paths)
        if pair.image and self.settings.default_prompt:
            self._ingest(pair)
        elif pair.image:
            self._reject(pair, InputRejected(
                ErrorCode.MISSING_SIDECAR, f"{pair.image.name} waited {timeout:g} s for {stem}.json, which never came.",
                hint=self._case_hint(pair) or f"Drop {stem}.json with at least a prompt, or configure default_prompt."))
        else:
            self._reject(pair, InputRejected(
                ErrorCode.MISSING_IMAGE, f"{pair.sidecar.name} waited {timeout:g} s for its image "
                f"({stem}.png/.jpg/.jpeg/.webp), which never came.",
                hint=self._case_hint(pair) or "Drop the image under the same name as the sidecar."))
        return settle

    def _announce_waiting(self, pair: _Pair, paths: list[Path], left: float) -> None:
        """Say once that a lone half waits, and for what: otherwise it waits in silence."""
        if all(self._seen[p].announced for p in paths):
            return
        for p in paths:
            self._seen[p].announced = True
        present = pair.image or pair.sidecar
        wanted = f"{pair.stem}.json" if pair.image else f"{pair.stem}.png/.jpg/.jpeg/.webp"
        fallback = " (then default_prompt is used)" if pair.image and self.settings.default_prompt else ""
        log.info("pair_waiting", file=shown(str(present.relative_to(self.settings.inbox_dir))),
                 waiting_for=shown(wanted), seconds_left=round(left),
                 detail=self._case_hint(pair)
                 or f"failed after pair_timeout_seconds unless the other half comes{fallback}")

    def _case_hint(self, pair: _Pair) -> str | None:
        """Names pair exactly, case included; say so when the other half is there in another case."""
        twins = sorted(shown(name) for name in self._names_by_folded.get((pair.directory, pair.stem.casefold()), [])
                       if _stem(name) != pair.stem)
        if not twins:
            return None
        return (f"{', '.join(twins)} differs only in upper/lower case; image and sidecar must have "
                "exactly the same name: rename one of them.")

    def _finish(self, paths: list[Path]) -> None:
        for p in paths:
            self._seen.pop(p, None)

    def _retrack(self, paths: list[Path]) -> None:
        """Judge these files again after one settle window (a lone half keeps its pair timeout)."""
        for p in paths:
            old = self._seen.pop(p, None)
            self._observe(p)
            if old is not None and (seen := self._seen.get(p)) is not None:
                seen.first_seen, seen.announced = old.first_seen, old.announced

    def _attempt_failed(self, directory: Path, stem: str, paths: list[Path], exc: Exception) -> float:
        """An unexpected error on one pair: try again after a settle window, at most MAX_ATTEMPTS times."""
        files = [shown(p.name) for p in paths]
        self._retrack(paths)
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
        tracked = sorted((p for p in paths if p in self._seen), key=lambda p: (not is_image_name(p.name), p.name))
        if not tracked:
            return self.settings.settle_seconds  # they went away meanwhile
        self._finish(tracked)
        error = shown(f"{type(exc).__name__}: {exc}")
        try:
            self._reject(_Pair(directory, stem, None, None), InputRejected(
                ErrorCode.INTERNAL_ERROR, f"i2vd failed {attempt} times on these files: {error}",
                hint="Not a fault of the files as far as i2vd can tell: the log has the details "
                     "(intake_error). Drop them again once the cause is fixed."), tracked)
        except Exception:
            log.exception("intake_error", files=files, detail="could not move the files to failed/")
            self._retrack(tracked)
        return self.settings.settle_seconds

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
        # Names i2vd makes are valid text, whatever bytes the dropped names hold.
        done_dir = self.settings.done_dir / safe_name(str(rel_dir))
        stem = safe_name(pair.stem)
        base = unique_stem(done_dir, stem, [p.suffix for p in pair.files])
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
        # No lookup first: the insert itself tells a known key (one database round trip less per pair).
        while not (created := self.queue.create(new))[1]:
            known = created[0]
            if known.state == JobState.INTAKE:
                # Another daemon is moving the files right now, or a crash left this intake half
                # done: recover() finishes it. Either way these files are that job's.
                return
            # That job's intake is over, so its files left the inbox before its state changed:
            # files with the same identity here now were put back (`mv done/x.* .`). That is a
            # new request, under a key derived from the old job, the same in every daemon.
            try:
                if idempotency_key(self.settings.inbox_dir, pair.files) != key:
                    return  # changed meanwhile: judged again once settled
            except FileNotFoundError:
                return
            new = replace(new, idempotency_key=_key_after(new.idempotency_key, known.id))
        self.complete(created[0])

    def _symlink_allowed(self, path: Path) -> bool:
        return self.settings.follow_symlinks and path.is_symlink()

    def _read_sidecar(self, pair: _Pair) -> Sidecar:
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

    def complete(self, job) -> None:
        """Move a job's inputs into done/ and release it to the workers; safe to repeat."""
        moves = [(job.source_image, job.image_path), (job.source_sidecar, job.sidecar_path)]
        try:
            for src, dest in moves:
                if src is not None:
                    move(path_from_text(src), Path(dest))
        except FileNotFoundError:
            self.queue.fail(job.id, ErrorCode.INPUTS_VANISHED, "The inputs disappeared from the inbox during intake.")
            log.warning("job_failed", job_id=job.id, error_code=ErrorCode.INPUTS_VANISHED)
            return
        if self.queue.mark_queued(job.id):
            self.stats.queued += 1
            log.info("job_queued", job_id=job.id, image=shown(path_from_text(job.source_image).name),
                     sidecar=shown(path_from_text(job.source_sidecar).name) if job.source_sidecar else None,
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
            "error": shown(str(rejection)),
            "field_errors": rejection.field_errors,
            "hint": rejection.hint and shown(rejection.hint),
            "files": [shown(p.name) for p in files],
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
        self.queue.record_rejection(rejection.code, str(rejection), report["files"], hint=rejection.hint,
                                    folder=str(rel_dir) if rel_dir.parts else "", error_file=f"{base}.error.json")
        self.stats.rejected[rejection.code] = self.stats.rejected.get(rejection.code, 0) + 1
        metrics.intake_rejections.labels(rejection.code).inc()
        log.warning("intake_rejected", error_code=rejection.code, reason=report["error"],
                    files=report["files"], error_file=shown(f"{base}.error.json"))


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


def _stem(name: str) -> str:
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix else name


# -- names as the OS gives them ----------------------------------------------------------------


def shown(text: str) -> str:
    """`text` for logs, error reports and terminals: undecodable name bytes appear as `\\xNN`."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name produced
        return text.encode("utf-8", "backslashreplace").decode()


def safe_name(text: str) -> str:
    """A name for what i2vd creates (done/, outputs): undecodable bytes become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def path_text(path: Path) -> str:
    """An absolute path as database text: the path itself, or a file:// URI when it is not UTF-8."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return path.as_uri()  # percent-encodes the bytes: reversible, and plain ASCII
    return text


def path_from_text(text: str) -> Path:
    """The path `path_text` stored (plain paths are absolute, so never start with file://)."""
    if text.startswith("file://"):
        return Path(os.fsdecode(urllib.parse.unquote_to_bytes(text.removeprefix("file://"))))
    return Path(text)


# -- the inbox as a listing -------------------------------------------------------------------


def is_ignored(settings: Settings, path: Path) -> bool:
    """Outside the inbox, in done/ or failed/, a temporary name, or the outputs/state folder."""
    inbox = settings.inbox_dir
    if not path.is_relative_to(inbox) or path == inbox:
        return True
    rel = path.relative_to(inbox)
    if rel.parts[0] in RESERVED_DIRS or any(is_temporary_name(p) for p in rel.parts):
        return True
    return any(path.is_relative_to(ex) for ex in (settings.outputs_dir, settings.state_dir)
               if ex.is_relative_to(inbox) and ex != inbox)


def inbox_candidates(settings: Settings) -> Iterator[Path]:
    """Every file in the inbox that may be an input, and folders named like one (rejected, not walked)."""
    for root, dirs, files in os.walk(settings.inbox_dir):
        root_path = Path(root)
        keep = []
        for name in dirs:
            path = root_path / name
            if is_ignored(settings, path):
                continue
            if is_image_name(name) or name.lower().endswith(SIDECAR_SUFFIX):
                yield path
            else:
                keep.append(name)
        dirs[:] = keep
        for name in files:
            yield root_path / name


def lone_halves(settings: Settings) -> int | None:
    """Inputs in the inbox now whose other half is not there (for `i2vd status`); None: no inbox here."""
    if not settings.inbox_dir.is_dir():
        return None
    groups: dict[tuple[Path, str], list[Path]] = {}
    for path in inbox_candidates(settings):
        if not is_ignored(settings, path) and (is_image_name(path.name) or path.name.lower().endswith(SIDECAR_SUFFIX)):
            groups.setdefault((path.parent, _stem(path.name)), []).append(path)
    return sum(len(paths) for paths in groups.values()
               if all(is_image_name(p.name) for p in paths) or not any(is_image_name(p.name) for p in paths))
