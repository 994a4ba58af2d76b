"""A running job's progress rows, written by a thread of their own: generation never waits for the database.

Each row is a short transaction, and with publishing pipelined it often waits for the publisher's
writes to the same database (SQLite has one writer): on the generating thread that cost about 1.6 ms
a row, 11 ms per 10-step job on a CPU (bench/RESULTS.md, section 12).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from daemon.db.engine import DATABASE_UNAVAILABLE
from daemon.jobs.queue import JobQueue
from daemon.logs import get_logger
from daemon.worker.lease import StopFlags, first_line
from pipeline.backends.base import Progress

log = get_logger("i2vd.worker")

WRITE_INTERVAL = 0.5  # seconds between rows of one phase; every phase and a phase's last step get one


class ProgressRows:
    """Records a job's progress from its own thread, in order; a `with` block's end writes what is left.

    A row that finds a cancel request sets `stop.cancelled`, so the job stops at its next step. Rows are
    best effort: while the database is away the job goes on, unrecorded (logged once per outage).
    """

    def __init__(self, queue: JobQueue, job_id: int, owner: str, stop: StopFlags) -> None:
        self.queue, self.job_id, self.owner, self.stop = queue, job_id, owner, stop
        self._pending: deque[Progress | None] = deque()  # None: the end
        self._changed = threading.Condition()
        self._last_phase: str | None = None
        self._last_at = 0.0
        self._thread = threading.Thread(target=self._run, name=f"progress-{job_id}", daemon=True)

    def __enter__(self) -> ProgressRows:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._post(None)
        self._thread.join()

    def report(self, progress: Progress) -> None:
        """Queue a row for `progress` when one is due: a new phase, a phase's last step, else each WRITE_INTERVAL."""
        now = time.monotonic()
        if progress.phase != self._last_phase or now - self._last_at >= WRITE_INTERVAL \
                or progress.step == progress.total:
            self._last_phase, self._last_at = progress.phase, now
            self._post(progress)

    def _post(self, progress: Progress | None) -> None:
        with self._changed:
            last = self._pending[-1] if self._pending else None
            if progress is not None and last is not None and last.phase == progress.phase:
                self._pending[-1] = progress  # a newer step of the phase still waiting: only the newer counts
            else:
                self._pending.append(progress)
            self._changed.notify()

    def _run(self) -> None:
        recorded = True
        while True:
            with self._changed:
                while not self._pending:
                    self._changed.wait()
                progress = self._pending.popleft()
            if progress is None:
                return
            try:
                if self.queue.progress(self.job_id, progress.phase, progress.step, progress.total, owner=self.owner):
                    self.stop.cancelled = True
                recorded = True
            except DATABASE_UNAVAILABLE as exc:
                if recorded:  # once per outage
                    log.warning("progress_not_recorded", job_id=self.job_id, error=first_line(exc))
                recorded = False
            except Exception:  # never die silently: the rows after this one still count
                log.exception("progress_error", job_id=self.job_id)
