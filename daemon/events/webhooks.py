"""Webhooks: each event POSTed as JSON to every configured URL, signed, at least once.

One thread per URL, so a slow or dead receiver delays only its own deliveries, never the worker or
another URL. Every setting is read when it is used, so a reload (SIGHUP) applies them all: `Webhooks.follow`
starts and stops senders as URLs come and go. Headers (README, "Webhooks"):

    X-I2VD-Event: job.succeeded            X-I2VD-Event-Id / Idempotency-Key: 42 (the event id)
    X-I2VD-Timestamp: 1795435200           X-I2VD-Signature: sha256=HMAC_SHA256(secret, f"{timestamp}.{body}")
    X-I2VD-Delivery-Attempt: 1

The signature is GitHub's and Stripe's scheme: the receiver recomputes it over the raw body, compares
in constant time, and rejects old timestamps to stop replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy.orm import Session, sessionmaker

from daemon import __version__, metrics
from daemon.events.deliveries import DeliveryStore, Due, receiver_down
from daemon.events.kinds import matching_types
from daemon.events.outbox import EventRecord
from daemon.events.poster import Poster, PostFailed
from daemon.logs import get_logger
from daemon.db.tables import utcnow
from daemon.process import worker_identity
from daemon.settings import Settings
from daemon.periodic import PeriodicTask

log = get_logger("i2vd.webhooks")

ESCALATE_AFTER = 300.0  # seconds of failing steps (e.g. the database gone) before an error line
POSTS_PER_STEP = 50  # then the loop looks at its stop flag and the lease again


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-I2VD-Signature value for `body` sent at `timestamp` (Unix seconds, as sent)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def request(event: EventRecord, attempt: int, secret: str | None, now: float | None = None) -> tuple[bytes, dict]:
    """The body and headers of one POST of `event`."""
    body = json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = str(int(now if now is not None else time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"i2vd/{__version__}",
        "X-I2VD-Event": event.type,
        "X-I2VD-Event-Id": str(event.id),
        "Idempotency-Key": str(event.id),
        "X-I2VD-Timestamp": timestamp,
        "X-I2VD-Delivery-Attempt": str(attempt),
    }
    if secret:
        headers["X-I2VD-Signature"] = sign(secret, timestamp, body)
    return body, headers


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook, or None when it can."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme or '(none)'!r} is not http or https"
    if not parts.hostname:
        return "it names no host"
    return None


def redact(url: str) -> str:
    """The URL without credentials or query (where tokens live), for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


def backoff_seconds(attempts: int, first: float, longest: float) -> float:
    """Exponential with jitter: first, 2*first, 4*first ... capped, each taken between half and all of it."""
    ceiling = min(first * 2 ** (attempts - 1), longest)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class WebhookSender:
    """Delivers the outbox to one URL from its own thread."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], url: str) -> None:
        self.settings, self.url = settings, url
        self.store = DeliveryStore(sessions, url, worker_identity())
        self._registered = False
        self._poster = Poster()
        self.thread = PeriodicTask(f"webhook-{redact(url)}", self.step, settings.webhook_poll_seconds,
                                   escalate_after=ESCALATE_AFTER, first_delay=0, url=redact(url))

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.thread.stop(timeout=self.settings.webhook_timeout_seconds + 5)
        if not self.thread.alive:  # else it still posts, and the process is about to end anyway
            self._poster.close()
        try:
            self.store.release()
        except Exception as exc:  # the database is gone: the lease simply runs out
            log.warning("webhook_release_failed", url=redact(self.url), error=f"{type(exc).__name__}: {exc}")

    def step(self) -> float:
        """Fan out new events, post what is due, one at a time; returns seconds until the next look."""
        s = self.settings
        if not self._registered:
            self.store.register()
            self._registered = True
        # Long enough for a POST that runs into its timeout, renewed before each one.
        lease = 2 * s.webhook_timeout_seconds + 5
        if not self.store.lead(lease):
            return s.webhook_poll_seconds * 5  # another daemon sends to this URL; stand by
        self.store.fan_out(matching_types(s.webhook_events))
        for _ in range(POSTS_PER_STEP):
            if not self.store.lead(lease):
                return s.webhook_poll_seconds
            claimed = self.store.claim(1, s.webhook_timeout_seconds + 5)
            if not claimed:
                break
            down_until = self._post(claimed[0])
            if down_until is not None:
                self.store.postpone(down_until)
                break
        else:
            return 0.0
        next_due = self.store.next_due()
        wait = s.webhook_poll_seconds
        if next_due is not None:
            wait = min(wait, max((next_due - utcnow()).total_seconds(), 0.0))
        return wait

    def _post(self, due: Due) -> datetime | None:
        """One try; returns when to try again if the receiver looks down (the other deliveries wait too)."""
        s = self.settings
        secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
        body, headers = request(due.event, due.attempts + 1, secret)
        status: int | None = None
        try:
            answer = self._poster.post(self.url, body, headers, s.webhook_timeout_seconds)
        except PostFailed as exc:
            error = str(exc)
        else:
            status = answer.status
            if 200 <= status < 300:
                self.store.delivered(due, status)
                metrics.webhook_deliveries.labels("delivered").inc()
                log.debug("webhook_delivered", url=redact(self.url), event_id=due.event.id, status=status)
                return None
            error = f"HTTP {status}: {answer.excerpt}" if answer.excerpt else f"HTTP {status}"
        delay = backoff_seconds(due.attempts + 1, s.webhook_backoff_seconds, s.webhook_backoff_max_seconds)
        retry_at = utcnow() + timedelta(seconds=delay)
        if retry_at > due.event.created_at + timedelta(hours=s.webhook_give_up_hours):
            self.store.failed(due, status, error, None)
            metrics.webhook_deliveries.labels("gave_up").inc()
            log.error("webhook_gave_up", url=redact(self.url), event_id=due.event.id, event_type=due.event.type,
                      attempts=due.attempts + 1, error=error)
        else:
            self.store.failed(due, status, error, retry_at)
            metrics.webhook_deliveries.labels("failed").inc()
            log.warning("webhook_failed", url=redact(self.url), event_id=due.event.id, attempt=due.attempts + 1,
                        error=error, retry_in_seconds=round(delay, 1))
        return retry_at if receiver_down(status) else None


class Webhooks:
    """A sender for every valid configured URL; bad ones are logged and skipped, never fatal."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings, self._sessions = settings, sessions
        self.senders: dict[str, WebhookSender] = {}
        self._followed = False

    def follow(self) -> None:
        """Start senders for URLs new to the settings, stop those of URLs gone from them."""
        s = self.settings
        wanted = list(dict.fromkeys(s.webhook_urls))
        for url in [url for url in self.senders if url not in wanted]:
            self.senders.pop(url).stop()
        for url in wanted:
            if url in self.senders:
                continue
            if (problem := url_problem(url)) is not None:
                log.error("webhook_url_invalid", url=url, problem=problem,
                          detail="this URL gets no events; fix webhook_urls (see `i2vd doctor`)")
                continue
            self.senders[url] = WebhookSender(s, self._sessions, url)
            self.senders[url].start()
        log.info("webhooks_changed" if self._followed else "webhooks_started",
                 urls=[redact(url) for url in self.senders], events=list(matching_types(s.webhook_events)))
        self._followed = True
        if self.senders and s.webhook_secret is None:
            log.warning("webhook_unsigned", detail="webhook_secret is not set: receivers cannot verify events")

    def stop(self) -> None:
        for sender in self.senders.values():
            sender.stop()
