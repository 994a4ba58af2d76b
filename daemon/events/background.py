"""The event stream's background work in a daemon: webhook delivery and pruning, each in its own thread."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from daemon.events.retention import prune, prune_progress
from daemon.logs import get_logger
from daemon.settings import Settings
from daemon.periodic import PeriodicTask

if TYPE_CHECKING:
    from daemon.events.webhooks import Webhooks

log = get_logger("i2vd.events")

ESCALATE_AFTER = 300.0  # seconds of failing beats before an error line (the database gone)
PRUNE_INTERVAL = 24 * 3600.0  # retention_days pruning: at start, then daily
PROGRESS_PRUNE_INTERVAL = 600.0
WEBHOOK_SETTINGS_INTERVAL = 1.0  # how soon a reload's webhook settings take effect


class EventServices:
    """Started by every daemon, intake-only ones too; several daemons on one database share the work."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings, self.sessions = settings, sessions
        self._next_prune = self._next_progress_prune = 0.0
        self._pruner = PeriodicTask("prune", self._prune_step, PROGRESS_PRUNE_INTERVAL,
                                    escalate_after=PROGRESS_PRUNE_INTERVAL, first_delay=0)
        self._webhooks: Webhooks | None = None
        self._webhook_settings: tuple | None = None
        self._webhook_watch = PeriodicTask("webhook-settings", self._follow_webhook_settings,
                                           WEBHOOK_SETTINGS_INTERVAL, escalate_after=ESCALATE_AFTER)

    def start(self) -> None:
        self._follow_webhook_settings()  # before the daemon says it is ready: no event of its start is missed
        self._webhook_watch.start()
        self._pruner.start()

    def stop(self) -> None:
        self._webhook_watch.stop(timeout=10)
        if self._webhooks is not None:
            self._webhooks.stop()
        self._pruner.stop(timeout=10)

    def _follow_webhook_settings(self) -> None:
        """Start or stop webhook senders when a reload changed the URLs (or what is logged about them)."""
        s = self.settings
        current = (tuple(s.webhook_urls), s.webhook_secret is None, tuple(s.webhook_events))
        if current == self._webhook_settings:
            return
        if self._webhooks is None:
            if not s.webhook_urls:
                return
            from daemon.events.webhooks import Webhooks  # httpx only where it is used: intake-only daemons stay small

            self._webhooks = Webhooks(s, self.sessions)
        self._webhooks.follow()
        self._webhook_settings = current

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
