"""Database tables: jobs, their attempts, the workers that ran them, and the event outbox. Alembic owns the
schema."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def rowcount(result: Result) -> int:
    """Rows an UPDATE or DELETE matched. Session.execute types its result as a plain Result, but for
    these statements it is a CursorResult, which has the count."""
    return cast(CursorResult, result).rowcount


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every engine (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        # SQLite hands back naive UTC; PostgreSQL hands back the session's time zone.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobState(enum.StrEnum):
    INTAKE = "intake"  # row written, inputs still being moved out of the inbox; not claimable
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Base(DeclarativeBase):
    pass


_state_enum = Enum(JobState, name="job_state", native_enum=False, length=16,
                   values_callable=lambda e: [m.value for m in e])


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "state", "priority", "id"),
        Index("ix_jobs_state_id", "state", "id"),  # the web page's lists: one state, newest first
        Index("ix_jobs_state_model", "state", "model"),
        Index("ix_jobs_model_id", "model", "id"),  # the web's model filter, newest first (0007)
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[JobState] = mapped_column(_state_enum)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    params: Mapped[dict] = mapped_column(JSON)  # GenerationParams.to_dict(), versioned
    model: Mapped[str | None] = mapped_column(String(64))  # served model's name; NULL: queued before models
    output_stem: Mapped[str] = mapped_column(String(255))
    output_subdir: Mapped[str] = mapped_column(String(1024), default="")
    # Where the inputs were dropped, and where intake keeps them afterwards.
    source_image: Mapped[str] = mapped_column(String(4096))
    source_sidecar: Mapped[str | None] = mapped_column(String(4096))
    image_path: Mapped[str] = mapped_column(String(4096))
    sidecar_path: Mapped[str | None] = mapped_column(String(4096))

    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    phase: Mapped[str | None] = mapped_column(String(32))
    progress_step: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)

    output_path: Mapped[str | None] = mapped_column(String(4096))
    metadata_path: Mapped[str | None] = mapped_column(String(4096))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    run_after: Mapped[datetime | None] = mapped_column(UtcDateTime)  # retry backoff: not claimable before
    retried_from_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))

    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="job", order_by="Attempt.number", lazy="selectin"
    )


class Attempt(Base):
    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(255))
    rung: Mapped[str] = mapped_column(String(32), default="full")  # OOM ladder rung of this try
    params: Mapped[dict] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    outcome: Mapped[str | None] = mapped_column(String(32))  # succeeded, failed, interrupted, crashed
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    peak_gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id", ondelete="SET NULL"))

    job: Mapped[Job] = relationship(back_populates="attempts")
    worker_record: Mapped[WorkerRecord | None] = relationship(lazy="selectin")


class WorkerRecord(Base):
    """One i2vd process: where it runs, on which GPU, and when it was last seen alive."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))  # host:pid, the lease owner of its jobs
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    gpu: Mapped[str | None] = mapped_column(String(64))  # CUDA_VISIBLE_DEVICES
    device: Mapped[str] = mapped_column(String(32))  # cuda:0, cpu
    models: Mapped[list | None] = mapped_column(JSON)  # names of the models it serves
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # a clean shutdown


# Event ids only grow: a reader's cursor (`i2vd events --since`, the web page, the webhook fan-out) is the
# last id it saw. BIGINT on PostgreSQL; on SQLite, INTEGER PRIMARY KEY AUTOINCREMENT never reuses the id
# of a deleted newest row (plain rowids would).
EventId = Integer().with_variant(BigInteger(), "postgresql")


class Event(Base):
    """One change a user cares about (see daemon/events/kinds.py), written in the change's own transaction."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_type_id", "type", "id"),  # one type, newest first: the web (0007)
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(Integer, index=True)  # no foreign key: events outlive nothing
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class WebhookEndpoint(Base):
    """A configured webhook URL, how far the outbox has been fanned out to it, and which daemon sends to it
    (one at a time, so a receiver gets events in order)."""

    __tablename__ = "webhook_endpoints"

    url: Mapped[str] = mapped_column(String(2048), primary_key=True)
    first_event_id: Mapped[int] = mapped_column(EventId)  # events up to here predate the URL's configuration
    scanned_up_to: Mapped[int] = mapped_column(EventId)  # every event up to here has its delivery row
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class WebhookDelivery(Base):
    """Delivery state of one event to one URL: at-least-once, retried with backoff until it gives up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "url", name="uq_webhook_deliveries_event_url"),
        Index("ix_webhook_deliveries_due", "url", "state", "next_attempt_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, delivered, failed (gave up)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(255))  # the daemon posting it right now
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)  # HTTP status of the last attempt
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
