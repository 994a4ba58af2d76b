"""Webhook delivery state in the database: fan-out of new events to each URL, claims, outcomes.

Every daemon sharing the database runs this for each URL it is configured with. One of them leads a
URL at a time (a lease on its endpoint row), so the receiver gets events in order; the others stand by
and take over when the lease runs out. Fan-out inserts are idempotent (one row per event and URL), and
each delivery is claimed under its own lease (UPDATE ... RETURNING, with SKIP LOCKED on PostgreSQL, like
the job claim), so one daemon posts it at a time even while leadership changes hands. A daemon that
dies mid-POST leaves leases that expire; the event is then posted again (at-least-once).

A receiver that looks down (no answer, 5xx, 429) holds back all of its URL's deliveries, in order, until
its retry is due: those pending then, and those of events that come during the outage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Integer, String, and_, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from daemon.events.outbox import EventRecord
from daemon.db.tables import Event, UtcDateTime, WebhookDelivery, WebhookEndpoint, rowcount, utcnow

FAN_OUT_BATCH = 500  # events turned into delivery rows per pass


def receiver_down(status: int | None) -> bool:
    """Whether a failed try (its HTTP status; None: no answer) says the receiver is down, not the event bad."""
    return status is None or status >= 500 or status == 429


# The same test in SQL, on a delivery row's last try.
_LAST_TRY_FOUND_DOWN = and_(WebhookDelivery.attempts > 0, or_(
    WebhookDelivery.last_status.is_(None), WebhookDelivery.last_status >= 500, WebhookDelivery.last_status == 429))


@dataclass(frozen=True)
class Due:
    """A claimed delivery: post `event` to the URL, then report how it went."""

    delivery_id: int
    attempts: int  # tries before this one
    event: EventRecord


class DeliveryStore:
    """Delivery rows of one URL, claimed under `owner`'s lease."""

    def __init__(self, sessions: sessionmaker[Session], url: str, owner: str) -> None:
        self._sessions, self.url, self.owner = sessions, url, owner
        self._leading_until: datetime | None = None

    def lead(self, lease_seconds: float) -> bool:
        """Take or renew this URL's sender lease (renewed once half of it is gone); False: another daemon has it."""
        now = utcnow()
        if self._leading_until is not None and (self._leading_until - now).total_seconds() > lease_seconds / 2:
            return True
        until = now + timedelta(seconds=lease_seconds)
        with self._sessions() as s:
            result = s.execute(update(WebhookEndpoint).where(
                WebhookEndpoint.url == self.url,
                or_(WebhookEndpoint.lease_owner.is_(None), WebhookEndpoint.lease_owner == self.owner,
                    WebhookEndpoint.lease_expires_at < now),
            ).values(lease_owner=self.owner, lease_expires_at=until))
            taken = rowcount(result) == 1
            s.commit()
        self._leading_until = until if taken else None
        return taken

    def release(self) -> None:
        """Hand the URL to another daemon at once (a clean shutdown)."""
        with self._sessions() as s:
            s.execute(update(WebhookEndpoint).where(WebhookEndpoint.url == self.url,
                                                    WebhookEndpoint.lease_owner == self.owner)
                      .values(lease_owner=None, lease_expires_at=None))
            s.commit()
        self._leading_until = None

    def register(self) -> None:
        """Start delivering to this URL from the newest event on (a new URL gets no history)."""
        with self._sessions() as s:
            if s.get(WebhookEndpoint, self.url) is None:
                latest = s.scalar(select(func.max(Event.id))) or 0
                s.execute(_insert(s)(WebhookEndpoint).values(
                    url=self.url, first_event_id=latest, scanned_up_to=latest, created_at=utcnow(),
                ).on_conflict_do_nothing())
                s.commit()

    def fan_out(self, types: tuple[str, ...]) -> int:
        """Give events newer than the URL's cursor a pending delivery row; returns events scanned."""
        with self._sessions() as s:
            scanned = s.scalar(select(WebhookEndpoint.scanned_up_to).where(WebhookEndpoint.url == self.url))
            if scanned is None:
                raise LookupError(f"webhook endpoint {self.url} is not registered: call register() first")
            top = s.scalar(select(func.max(Event.id))) or 0
            upper = min(top, scanned + FAN_OUT_BATCH)
            if upper <= scanned:
                return 0
            # An event that comes while the receiver is down waits behind the held-back ones.
            held_until = s.scalar(select(func.max(WebhookDelivery.next_attempt_at)).where(
                WebhookDelivery.url == self.url, WebhookDelivery.state == "pending", _LAST_TRY_FOUND_DOWN))
            first_try = max(utcnow(), held_until) if held_until is not None else utcnow()
            rows = select(Event.id, literal(self.url, String()), literal("pending", String()),
                          literal(0, Integer()), literal(first_try, UtcDateTime())).where(
                Event.id > scanned, Event.id <= upper, Event.type.in_(types))
            s.execute(_insert(s)(WebhookDelivery).from_select(
                ["event_id", "url", "state", "attempts", "next_attempt_at"], rows).on_conflict_do_nothing())
            s.execute(update(WebhookEndpoint).where(WebhookEndpoint.url == self.url,
                                                    WebhookEndpoint.scanned_up_to < upper)
                      .values(scanned_up_to=upper))
            s.commit()
            return upper - scanned

    def claim(self, limit: int, lease_seconds: float) -> list[Due]:
        """Lease up to `limit` due deliveries, oldest event first."""
        now = utcnow()
        with self._sessions() as s:
            due = (
                select(WebhookDelivery.id)
                .where(WebhookDelivery.url == self.url, WebhookDelivery.state == "pending",
                       WebhookDelivery.next_attempt_at <= now,
                       or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at < now))
                .order_by(WebhookDelivery.event_id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            claimed = s.execute(
                update(WebhookDelivery).where(WebhookDelivery.id.in_(due))
                .values(lease_owner=self.owner, lease_expires_at=now + timedelta(seconds=lease_seconds))
                .returning(WebhookDelivery.id, WebhookDelivery.event_id, WebhookDelivery.attempts)
            ).all()
            events = {e.id: EventRecord.of(e) for e in s.scalars(
                select(Event).where(Event.id.in_([c.event_id for c in claimed])))} if claimed else {}
            s.commit()
        return sorted((Due(c.id, c.attempts, events[c.event_id]) for c in claimed if c.event_id in events),
                      key=lambda d: d.event.id)

    def delivered(self, due: Due, status: int) -> None:
        self._finish(due, state="delivered", delivered_at=utcnow(), last_status=status, last_error=None)

    def failed(self, due: Due, status: int | None, error: str, retry_at: datetime | None) -> None:
        """A failed try: try again at `retry_at`, or never (None: gave up)."""
        self._finish(due, state="pending" if retry_at else "failed", last_status=status, last_error=error[:2000],
                     **({"next_attempt_at": retry_at} if retry_at else {}))

    def postpone(self, until: datetime) -> None:
        """The receiver looks down: every pending delivery waits until `until`, in order, rather than
        each timing out on its own."""
        with self._sessions() as s:
            s.execute(update(WebhookDelivery)
                      .where(WebhookDelivery.url == self.url, WebhookDelivery.state == "pending",
                             WebhookDelivery.next_attempt_at < until, WebhookDelivery.lease_owner.is_(None))
                      .values(next_attempt_at=until))
            s.commit()

    def next_due(self) -> datetime | None:
        """When the earliest pending delivery of this URL may be tried."""
        with self._sessions() as s:
            return s.scalar(select(func.min(WebhookDelivery.next_attempt_at)).where(
                WebhookDelivery.url == self.url, WebhookDelivery.state == "pending"))

    def _finish(self, due: Due, **values: object) -> None:
        with self._sessions() as s:
            s.execute(update(WebhookDelivery)
                      .where(WebhookDelivery.id == due.delivery_id, WebhookDelivery.lease_owner == self.owner)
                      .values(attempts=due.attempts + 1, lease_owner=None, lease_expires_at=None, **values))
            s.commit()


def _insert(s: Session):
    """INSERT with ON CONFLICT DO NOTHING for the session's engine."""
    return postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
