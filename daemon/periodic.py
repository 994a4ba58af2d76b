"""Supervised periodic threads: a beat that fails is logged, retried with backoff and escalated, never
left to die silently (the job heartbeat, the worker-registry heartbeat, webhook delivery, pruning).

Log events, the same for every task (told apart by `task=`): `task_failed` (warning, each failed
beat), `task_escalated` (error, once per outage, when failures have lasted `escalate_after`
seconds), `task_recovered` (info, the first good beat after a failure).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from daemon.logs import get_logger

log = get_logger("i2vd.supervisor")


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th retry in a row: `first`, doubling, at most `cap`."""

    first: float
    cap: float

    def delay(self, failures: int) -> float:
        return min(self.cap, self.first * 2 ** max(failures - 1, 0))


class PeriodicTask:
    """Runs `beat` every `interval` seconds in a daemon thread until stopped or `beat` returns False.

    A beat may return a number instead: the seconds until the next beat (a delivery loop that knows
    when its next retry is due). The first beat comes after `first_delay` (default: `interval`).

    A beat that raises is retried sooner (with backoff, never later than `interval`), so a database
    blip costs one late beat, not the task. When beats have failed for `escalate_after` seconds,
    `on_escalate` is called once with the last error; it returns whether the task keeps trying.
    """

    def __init__(self, name: str, beat: Callable[[], bool | float | None], interval: float, *,
                 escalate_after: float, on_escalate: Callable[[BaseException], bool] | None = None,
                 first_delay: float | None = None, **context: object) -> None:
        self.name, self.interval, self.escalate_after = name, interval, escalate_after
        self.first_delay = interval if first_delay is None else first_delay
        self._beat, self._on_escalate, self._context = beat, on_escalate, context
        self.backoff = Backoff(first=min(1.0, interval / 5), cap=interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        failures, failing_since, escalated = 0, 0.0, False
        delay = self.first_delay
        while not self._stop.wait(max(delay, 0.0)):
            try:
                keep_going = self._beat()
            except Exception as exc:  # whatever the cause: log it and try again, never die silently
                if failures == 0:
                    failing_since = time.monotonic()
                failures += 1
                delay = self.backoff.delay(failures)
                log.warning("task_failed", task=self.name, failures=failures, retry_in=round(delay, 3),
                            error=f"{type(exc).__name__}: {_first_line(exc)}", **self._context)
                if not escalated and time.monotonic() - failing_since >= self.escalate_after:
                    escalated = True
                    log.error("task_escalated", task=self.name, failing_seconds=round(
                        time.monotonic() - failing_since, 1), **self._context)
                    if self._on_escalate is not None and not self._on_escalate(exc):
                        return
                continue
            if failures:
                log.info("task_recovered", task=self.name, failures=failures, **self._context)
            failures, escalated, delay = 0, False, self.interval
            if keep_going is False:
                return
            if isinstance(keep_going, int | float) and not isinstance(keep_going, bool):
                delay = keep_going


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]
