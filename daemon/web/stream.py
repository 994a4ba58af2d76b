"""Server-sent events for the page and for scripts: what changed in the queue, as it happens."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Protocol

import anyio
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from daemon.models import Job, JobState, utcnow

POLL_SECONDS = 0.5  # one small query per connection and interval; the worker writes progress every 0.5 s
KEEPALIVE_SECONDS = 15.0  # a comment line now and then, so proxies keep an idle stream open
_STATE_EVENTS = {JobState.QUEUED: "job.queued", JobState.RUNNING: "job.started",
                 JobState.SUCCEEDED: "job.succeeded", JobState.FAILED: "job.failed",
                 JobState.CANCELLED: "job.cancelled"}


class Feed(Protocol):
    def poll(self) -> list[tuple[int | None, dict]]:
        """New events since the last call, each as (event id or None, JSON-able event)."""


class JobTableFeed:
    """Events derived from the jobs table: a live or just-finished job whose state or progress moved."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._seen: dict[int, tuple] | None = None
        self._since = utcnow()

    def poll(self) -> list[tuple[int | None, dict]]:
        now = utcnow()
        with self._sessions() as s:
            jobs = list(s.scalars(select(Job).where(or_(
                Job.state.in_((JobState.INTAKE, JobState.QUEUED, JobState.RUNNING)),
                Job.finished_at >= self._since - timedelta(seconds=5)))))
        self._since = now
        events = []
        seen = {}
        for job in jobs:
            key = (job.state, job.phase, job.progress_step, job.priority, job.cancel_requested)
            seen[job.id] = key
            before = self._seen.get(job.id) if self._seen is not None else key
            if before == key or job.state == JobState.INTAKE:
                continue
            changed_state = before is None or before[0] != job.state
            kind = _STATE_EVENTS[job.state] if changed_state or job.state != JobState.RUNNING else "job.progress"
            events.append((None, {"type": kind, "job_id": job.id, "payload": {
                "state": job.state.value, "phase": job.phase, "step": job.progress_step,
                "total": job.progress_total, "priority": job.priority}}))
        self._seen = seen
        return events


async def event_stream(request: Request, feed: Feed, poll_seconds: float = POLL_SECONDS) -> AsyncIterator[str]:
    """The SSE body: `id:` (where the feed has ids, for Last-Event-ID) and one JSON `data:` line per event."""
    yield "retry: 2000\n\n"
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        events = await anyio.to_thread.run_sync(feed.poll)
        for event_id, event in events:
            head = f"id: {event_id}\n" if event_id is not None else ""
            yield f"{head}data: {json.dumps(event, default=str)}\n\n"
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
            yield ": keepalive\n\n"
            quiet_since = time.monotonic()
        await anyio.sleep(poll_seconds)
