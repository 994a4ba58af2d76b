"""A background thread that repeats one step and survives its errors."""

from __future__ import annotations

import threading
from collections.abc import Callable

from daemon.logs import get_logger

log = get_logger("i2vd.events")

ERROR_BACKOFF_FIRST = 1.0  # seconds after a step raised; doubles while it keeps raising
ERROR_BACKOFF_MAX = 60.0


class RepeatingThread:
    """Calls `step` until stopped, waiting the seconds it returns; an exception is logged and the step
    retried with backoff (the database may be briefly gone), so the thread never dies silently."""

    def __init__(self, name: str, step: Callable[[], float], **context: object) -> None:
        self.name, self.step, self.context = name, step, context
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = ERROR_BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                wait = self.step()
                backoff = ERROR_BACKOFF_FIRST
            except Exception as exc:
                log.warning("event_thread_error", thread=self.name, error=f"{type(exc).__name__}: {exc}",
                            retry_in_seconds=backoff, **self.context)
                wait, backoff = backoff, min(backoff * 2, ERROR_BACKOFF_MAX)
            self._stop.wait(max(wait, 0.0))
