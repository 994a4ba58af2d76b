"""Readiness: which inbox files are complete, from file-system events and repeated stat checks.

A file renamed into place on the inbox's own file system (inotify) is complete by construction and
taken at once. Any other file is ready when its size, mtime and inode stayed the same for
`settle_seconds` over at least two checks, it is not empty, and (inotify) no writer still holds it
open; an empty or open file is judged as it is after `pair_timeout_seconds`.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from daemon.intake.inbox import group_pairs, inbox_candidates, is_ignored, is_input_name, shown
from daemon.intake.watcher import ARRIVED, CLOSED, WRITTEN, InboxEvent
from daemon.logs import get_logger
from daemon.settings import Settings

log = get_logger("i2vd.intake")

RECHECK_SECONDS = 0.05  # a file seen once is looked at again this soon (its second check)


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


class ReadinessTracker:
    """The input files being watched, and how long each still needs before it can be judged."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._seen: dict[Path, _Seen] = {}
        # Filled by the watcher thread, under the lock.
        self._dirty: set[Path] = set()
        self._arrived: set[Path] = set()
        self._writing: set[Path] = set()  # written to, not closed since
        self._lock = threading.Lock()
        self._writing_now: set[Path] = set()  # the writers as `refresh` found them

    def notify(self, event: InboxEvent | str | Path) -> None:
        """Called from the watcher thread: something happened at a path."""
        if not isinstance(event, InboxEvent):
            event = InboxEvent(os.fsdecode(event))
        path = Path(event.path)
        with self._lock:
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

    def refresh(self) -> None:
        """Take the watcher's news and re-check every tracked file."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            arrived, self._arrived = self._arrived, set()
        for path in dirty:
            if self._observe(path, walk=True) and path in arrived:
                self._seen[path].whole = True
        for path in list(self._seen):
            if path not in dirty:
                self._observe(path)
        with self._lock:
            self._writing_now = set(self._writing)

    def forget_gone_writers(self) -> None:
        """Forget writers of files no longer tracked (taken, gone, temporary names)."""
        with self._lock:
            self._writing = {p for p in self._writing if p in self._seen or p in self._dirty}

    def groups(self) -> dict[tuple[Path, str], list[Path]]:
        """The tracked files by (folder, stem)."""
        return group_pairs(self._seen)

    def wait(self, paths: list[Path], now: float) -> float | None:
        """None when all of `paths` are ready to be judged, else seconds until they are worth another look."""
        waits = [w for p in paths if (w := self._not_ready_for(p, now)) is not None]
        return max(min(waits), RECHECK_SECONDS) if waits else None

    def first_seen(self, paths: list[Path]) -> float:
        return min(self._seen[p].first_seen for p in paths)

    def announce_once(self, paths: list[Path]) -> bool:
        """True the first time it is asked for these files (pair_waiting is logged once)."""
        if all(self._seen[p].announced for p in paths):
            return False
        for p in paths:
            self._seen[p].announced = True
        return True

    def is_tracked(self, path: Path) -> bool:
        return path in self._seen

    def forget(self, paths: list[Path]) -> None:
        for p in paths:
            self._seen.pop(p, None)

    def retrack(self, paths: list[Path]) -> None:
        """Judge these files again after one settle window (a lone half keeps its pair timeout)."""
        for p in paths:
            old = self._seen.pop(p, None)
            self._observe(p)
            if old is not None and (seen := self._seen.get(p)) is not None:
                seen.first_seen, seen.announced = old.first_seen, old.announced

    def _scan_dir(self, directory: Path) -> None:
        for root, dirs, files in os.walk(directory):
            dirs[:] = [d for d in dirs if not is_ignored(self.settings, Path(root) / d)]
            for name in files:
                self._observe(Path(root) / name)

    def _observe(self, path: Path, walk: bool = False) -> bool:
        """Stat `path` and track it if it may be an input; True when it is tracked. With `walk`, a
        folder not named like an input (created or moved in) is walked instead."""
        if (not walk and not is_input_name(path.name)) or is_ignored(self.settings, path):
            return False
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._seen.pop(path, None)
            return False
        if not is_input_name(path.name):
            if stat.S_ISDIR(st.st_mode):
                self._scan_dir(path)
            return False
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
        return True

    def _not_ready_for(self, path: Path, now: float) -> float | None:
        seen, settle = self._seen[path], self.settings.settle_seconds
        timeout = self.settings.pair_timeout_seconds
        # An empty file may be a copy whose first bytes have not come yet; an open one a writer that
        # pauses. Both are judged as they are once pair_timeout has passed.
        if seen.empty and now - seen.first_seen < timeout:
            return min(settle, timeout - (now - seen.first_seen))
        if path in self._writing_now and now - seen.changed_at < timeout:
            return min(settle, timeout - (now - seen.changed_at))
        if seen.whole:
            return None
        if now - seen.changed_at < settle:
            return settle - (now - seen.changed_at)
        return None if seen.checks >= 2 else RECHECK_SECONDS

