"""File-system events for the inbox: inotify where it works, polling where it does not."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserverVFS

from daemon.settings import DONE_DIR, FAILED_DIR

# Where inotify misses changes made by other machines (or is not implemented at all).
POLLING_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs",
                       "lustre", "gpfs", "virtiofs", "vboxsf", "vmhgfs", "sshfs")


def filesystem_type(path: Path, mounts_file: Path = Path("/proc/mounts")) -> str:
    """The type of the filesystem `path` lives on, from the longest matching mount point."""
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    try:
        lines = mounts_file.read_text().splitlines()
    except OSError:
        return best_type
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        if (target == mount_point or target.startswith(mount_point.rstrip("/") + "/")) and len(mount_point) > len(best):
            best, best_type = mount_point, fields[2]
    return best_type


# Intake stats every file it tracks on each tick, so it needs events only to learn of files and
# folders it does not know yet, and of how a file arrives. Asking for no more keeps inotify from
# reporting intake's own reads (open, close-without-write), attribute changes and deletes, and
# watchdog from adding a parent-folder "modified" event to each event (on which intake rescanned
# the whole subfolder). Measured with bench/intake_rate.py: a half the CPU in the watcher threads,
# 158 -> 224 pairs/s.
EVENTS = [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent]

# What an event says about the file at its path.
SEEN = "seen"  # it exists or changed (polling, creation, folders): readiness is judged by stat alone
ARRIVED = "arrived"  # renamed into place on this file system (inotify IN_MOVED_TO): complete already
WRITTEN = "written"  # data was written (inotify IN_MODIFY): a writer may still hold it open
CLOSED = "closed"  # a writer closed it (inotify IN_CLOSE_WRITE)


@dataclass(frozen=True)
class InboxEvent:
    """Something happened at `path` in the inbox; `kind` is one of SEEN, ARRIVED, WRITTEN, CLOSED."""

    path: str
    kind: str = SEEN


def needs_polling(fs_type: str) -> bool:
    return fs_type in POLLING_FILESYSTEMS or fs_type.startswith("fuse")


def choose_mode(setting: str, inbox: Path) -> str:
    if setting != "auto":
        return setting
    return "polling" if needs_polling(filesystem_type(inbox)) else "inotify"


class _Forward(FileSystemEventHandler):
    def __init__(self, notify: Callable[[InboxEvent], None], inotify: bool) -> None:
        self.notify = notify
        self.inotify = inotify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent):
            if not event.dest_path:
                return  # moved out of the inbox (intake's own moves to done/ stay inside)
            # A rename into place (rsync, `i2vd submit`, `mv x.tmp x.png`) matters by its new name.
            # Polling only guesses a rename from two listings, and a network mount's writer may
            # still be flushing: there the stat window decides.
            self.notify(InboxEvent(str(event.dest_path), ARRIVED if self.inotify else SEEN))
        elif isinstance(event, DirMovedEvent):
            if event.dest_path:
                self.notify(InboxEvent(str(event.dest_path)))
        elif self.inotify and isinstance(event, FileModifiedEvent):
            self.notify(InboxEvent(str(event.src_path), WRITTEN))
        elif self.inotify and isinstance(event, FileClosedEvent):
            self.notify(InboxEvent(str(event.src_path), CLOSED))
        else:
            self.notify(InboxEvent(str(event.src_path)))


def start_observer(inbox: Path, mode: str, poll_interval: float, notify: Callable[[InboxEvent], None],
                   skip_dirs: tuple[str, ...] = (DONE_DIR, FAILED_DIR)) -> BaseObserver:
    """Start watching `inbox` recursively; events say where to look and how a file arrived."""
    if mode == "polling":
        def listdir(path: str | None) -> Iterator[os.DirEntry]:
            top = os.path.samefile(path, inbox) if path else False
            for entry in os.scandir(path):
                if not (top and entry.name in skip_dirs):  # never walk done/ and failed/
                    yield entry

        observer: BaseObserver = PollingObserverVFS(os.lstat, listdir, polling_interval=poll_interval)
    else:
        # Full events: a rename into the inbox from elsewhere on its file system is a move with no
        # source, not a creation, so intake can take it as complete too.
        observer = InotifyObserver(generate_full_events=True)
    observer.schedule(_Forward(notify, mode != "polling"), str(inbox), recursive=True, event_filter=EVENTS)
    observer.daemon = True
    observer.start()
    return observer
