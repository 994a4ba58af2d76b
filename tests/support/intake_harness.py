"""Intake running in-process on real folders, with a real watchdog observer and SQLite queue."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from daemon.db.tables import JobState
from daemon.intake.ingest import Intake
from daemon.intake.watcher import start_observer
from support.daemons import make_queue, make_settings


class IntakeHarness:
    def __init__(self, dirs: dict[str, Path], observer: str = "inotify", **overrides) -> None:
        self.settings = make_settings(dirs, observer=observer, **overrides)
        for d in (self.settings.done_dir, self.settings.failed_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.inbox = self.settings.inbox_dir
        self.queue = make_queue(self.settings)
        self.intake = Intake(self.settings, self.queue)
        self.intake.recover()
        self.observer = start_observer(self.inbox, observer, self.settings.poll_interval_seconds,
                                       self.intake.notify)
        self.intake.scan()

    def pump(self, seconds: float) -> None:
        """Run the intake loop for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            due = self.intake.tick()
            time.sleep(min(due, 0.05, max(deadline - time.monotonic(), 0)))

    def pump_until(self, predicate, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.05)
            if result := predicate():
                return result
        raise AssertionError("intake did not get there in time")

    def jobs(self, state: JobState | None = None):
        jobs = self.queue.recent(10_000)
        return [j for j in jobs if state is None or j.state == state]

    def failed_codes(self) -> dict[str, str]:
        import json

        return {p.name.removesuffix(".error.json"): json.loads(p.read_text())["code"]
                for p in self.settings.failed_dir.rglob("*.error.json")}

    def close(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)


@pytest.fixture
def harness(dirs):
    """IntakeHarness(**setting overrides), closed after the test."""
    created = []

    def make(**overrides) -> IntakeHarness:
        h = IntakeHarness(dirs, **overrides)
        created.append(h)
        return h

    yield make
    for h in created:
        h.close()
