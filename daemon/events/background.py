"""The event stream's background work in a daemon: webhook delivery and pruning, each in its own thread."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session, sessionmaker

from daemon.events.retention import prune, prune_progress
from daemon.logs import get_logger
from daemon.settings import Settings
from daemon.periodic import PeriodicTask

log = get_logger("i2vd.events")

PRUNE_INTERVAL = 24 * 3600.0  # retention_days pruning: at start, then daily
PROGRESS_PRUNE_INTERVAL = 600.0


class EventServices:
    """Started by every daemon, intake-only ones too; several daemons on one database share the work."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings, self.sessions = settings, sessions
        self._next_prune = self._next_progress_prune = 0.0
        self._pruner = PeriodicTask("prune", self._prune_step, PROGRESS_PRUNE_INTERVAL,
                                    escalate_after=PROGRESS_PRUNE_INTERVAL, first_delay=0)
        self._webhooks = None
        if settings.webhook_urls:  # httpx only where it is used: intake-only daemons stay small
            from daemon.events.webhooks import Webhooks

            self._webhooks = Webhooks(settings, sessions)

    def start(self) -> None:
        if self._webhooks is not None:
            self._webhooks.start()
        self._pruner.start()

    def stop(self) -> None:
        if self._webhooks is not None:
            self._webhooks.stop()
        self._pruner.stop(timeout=10)

    def _prune_step(self) -> float:
        now = time.monotonic()
        if now >= self._next_progress_prune:
            prune_progress(self.sessions)
            self._next_progress_prune = now + PROGRESS_PRUNE_INTERVAL
        days = self.settings.retention_days
        if days is not None and now >= self._next_prune:
            pruned = prune(self.sessions, days, delete_outputs=self.settings.retention_delete_outputs)
            log.info("pruned", retention_days=days, jobs=pruned.jobs, events=pruned.events, files=pruned.files)
            self._next_prune = now + PRUNE_INTERVAL
        return min(self._next_progress_prune, self._next_prune if days is not None else float("inf")) - now
