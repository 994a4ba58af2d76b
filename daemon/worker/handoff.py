"""The publisher stage: a thread that publishes generated jobs while the worker generates the next.

The hand-off is bounded (`publish_backlog` jobs wait, beside the one being published), so the frames
held in memory are bounded too; the worker claims its next job only once the stage took the frames
of the current one.
"""

from __future__ import annotations

import queue
import threading

from daemon.logs import get_logger
from daemon.worker.publish import Generated, Publisher

log = get_logger("i2vd.worker")


class PublishStage:
    """Publishes handed-over jobs in order, in its own thread; leaving the `with` block drains it."""

    def __init__(self, publisher: Publisher, backlog: int) -> None:
        if backlog < 1:
            raise ValueError("a publish stage needs room for at least one job")
        self.publisher = publisher
        self._jobs: queue.Queue[Generated | None] = queue.Queue(maxsize=backlog)
        self._held_bytes = 0  # frames handed over and not yet published
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def __enter__(self) -> PublishStage:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._jobs.put(None)  # after everything handed over
        self._thread.join()

    def submit(self, done: Generated) -> None:
        """Hand a generated job over; blocks while the backlog is full."""
        with self._lock:
            self._held_bytes += done.nbytes
            held = self._held_bytes
        log.debug("publish_handed_over", job_id=done.job.id, frames_bytes=done.nbytes, held_bytes=held)
        self._jobs.put(done)

    def _run(self) -> None:
        while (done := self._jobs.get()) is not None:
            try:
                self.publisher.run(done)
            except Exception:  # e.g. the database away while recording a failure: the next job still publishes
                log.exception("publish_error", job_id=done.job.id)
            finally:
                with self._lock:
                    self._held_bytes -= done.nbytes
