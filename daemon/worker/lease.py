"""A running job's lease: its heartbeat, its stop flags, and writes that wait out a database outage."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from daemon.db.engine import DATABASE_UNAVAILABLE
from daemon.errors import I2vdError
from daemon.jobs.queue import JobQueue
from daemon.logs import get_logger
from daemon.periodic import PeriodicTask

log = get_logger("i2vd.worker")

# The database is away (down, restarting, locked, read-only, pool exhausted): worth waiting for.
WAIT_FIRST, WAIT_CAP = 0.2, 2.0  # seconds between tries of a write while the database is away

T = TypeVar("T")


class LeaseLost(I2vdError):
    """The job's lease was lost: another worker may have taken it over."""


class StopFlags:
    """Why the running job should stop at its next step, if it should."""

    def __init__(self, shutdown: threading.Event, lease_lost: threading.Event) -> None:
        self.shutdown, self.lease_lost, self.cancelled = shutdown, lease_lost, False

    @property
    def should_stop(self) -> bool:
        return self.cancelled or self.shutdown.is_set() or self.lease_lost.is_set()


class Heartbeat:
    """Renews a running job's lease; a lost lease stops the job at its next step.

    A failed renewal (the database briefly away) is retried with backoff; only once renewals have
    failed for a whole lease, when another worker may already have taken the job over, is the job
    stopped as if its lease were lost.
    """

    def __init__(self, queue: JobQueue, job_id: int, owner: str, lease_seconds: float) -> None:
        self.queue, self.job_id, self.owner, self.lease_seconds = queue, job_id, owner, lease_seconds
        self.lost = threading.Event()
        self._task = PeriodicTask(f"heartbeat-{job_id}", self._renew, lease_seconds / 3,
                                  escalate_after=lease_seconds, on_escalate=self._give_up, job_id=job_id)

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stop()

    def wait_for_database(self, write: Callable[[], T], what: str) -> T:
        """`write`, tried again while the database is away, until it goes through or the lease is lost.

        A job that finished generating during an outage is thus published once, without re-running;
        once renewals have failed for a whole lease (another worker may take the job) it raises LeaseLost.
        """
        delay = WAIT_FIRST
        while True:
            try:
                return write()
            except DATABASE_UNAVAILABLE as exc:
                if self.lost.is_set():
                    raise LeaseLost(f"the database stayed away for a whole lease ({what})") from exc
                log.warning("database_wait", job_id=self.job_id, write=what, retry_in=delay,
                            error=first_line(exc))
            time.sleep(delay)
            delay = min(delay * 2, WAIT_CAP)

    def _renew(self) -> bool:
        if self.queue.heartbeat(self.job_id, self.owner, self.lease_seconds):
            return True
        log.warning("lease_lost", job_id=self.job_id)
        self.lost.set()
        return False

    def _give_up(self, _exc: BaseException) -> bool:
        log.warning("lease_lost", job_id=self.job_id, reason="no renewal for a whole lease")
        self.lost.set()
        return False


def first_line(exc: BaseException) -> str:
    """The driver's own message, first line, for a log line."""
    return (str(getattr(exc, "orig", None) or exc).splitlines() or ["?"])[0][:200]
