"""The event outbox: written inside each state change's transaction, read by id cursor.

The stable JSON form of an event (`EventRecord.to_json`), shared by `i2vd events --json`, webhooks and
the web page:

    {"id": 42, "type": "job.succeeded", "job_id": 7, "time": "2026-11-23T12:00:00+00:00", "data": {...}}

`id` only grows, so "everything after the last id I saw" is a complete, ordered catch-up: on PostgreSQL
event writers take one transaction-scoped advisory lock, so ids become visible in id order and a reader's
cursor never skips a row that commits late; SQLite has a single writer anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from daemon.db.tables import Event, utcnow

EVENT_WRITE_LOCK_KEY = 0x69327665  # "i2ve": serialises event inserts on PostgreSQL until commit


@dataclass(frozen=True)
class EventRecord:
    id: int
    type: str
    job_id: int | None
    payload: dict
    created_at: datetime

    def to_json(self) -> dict:
        """The documented, stable schema (README, "Events")."""
        return {"id": self.id, "type": self.type, "job_id": self.job_id, "time": self.created_at.isoformat(),
                "data": self.payload}

    @classmethod
    def of(cls, row: Event) -> EventRecord:
        return cls(row.id, row.type, row.job_id, dict(row.payload), row.created_at)


def record_event(session: Session, type: str, job_id: int | None, data: dict) -> None:
    """Add an event to `session`'s transaction: it commits, or rolls back, with the change it describes.

    Call it last in the transaction: on PostgreSQL it holds the event lock from here to the commit.
    """
    record_events(session, [(type, job_id, data)])


def record_events(session: Session, events: Iterable[tuple[str, int | None, dict]]) -> None:
    """`record_event` for several (type, job_id, data) at once, in one INSERT (a batch of jobs queued)."""
    rows = [{"type": type, "job_id": job_id, "payload": data, "created_at": utcnow()}
            for type, job_id, data in events]
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EVENT_WRITE_LOCK_KEY})
    session.execute(insert(cast(Table, Event.__table__)), rows)


class EventLog:
    """Reads the outbox; each call is one short query."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def since(self, after_id: int = 0, limit: int = 500, types: Iterable[str] | None = None,
              job_id: int | None = None) -> list[EventRecord]:
        """Events with an id above `after_id`, oldest first, at most `limit` of them."""
        q = select(Event).where(Event.id > after_id)
        if types is not None:
            q = q.where(Event.type.in_(list(types)))
        if job_id is not None:
            q = q.where(Event.job_id == job_id)
        with self._sessions() as s:
            return [EventRecord.of(row) for row in s.scalars(q.order_by(Event.id).limit(limit))]

    def latest_id(self) -> int:
        """The newest event's id; 0 when there is none."""
        with self._sessions() as s:
            return s.scalar(select(func.max(Event.id))) or 0
