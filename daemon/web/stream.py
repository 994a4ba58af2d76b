"""Server-sent events for the page and for scripts: what changed in the queue, as it happens."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Protocol

import anyio
from sqlalchemy import func, or_, select
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
    """Events derived from the jobs table: a job that arrived, started, moved or finished since the last look.

    Each look reads only running and intake jobs, jobs newer than any seen, and jobs finished just
    now, so a queue of 10,000 waiting jobs costs the same as an empty one.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._seen: dict[int, tuple] | None = None
        self._max_id = 0
        self._in_intake: set[int] = set()
        self._since = utcnow()

    def poll(self) -> list[tuple[int | None, dict]]:
        now = utcnow()
        columns = (Job.id, Job.state, Job.phase, Job.progress_step, Job.progress_total, Job.priority,
                   Job.cancel_requested)
        with self._sessions() as s:
            if self._seen is None:
                self._max_id = s.scalar(select(func.max(Job.id))) or 0
            rows = s.execute(select(*columns).where(or_(
                Job.state.in_((JobState.INTAKE, JobState.RUNNING)),
                Job.id > self._max_id,
                Job.id.in_(self._in_intake),  # to see them queued: they are not new by then
                Job.finished_at >= self._since - timedelta(seconds=5)))).all()
        self._since = now
        first_look, events, seen = self._seen is None, [], {}
        for job_id, state, phase, step, total, priority, cancelling in rows:
            self._max_id = max(self._max_id, job_id)
            key = (state, phase, step, priority, cancelling)
            seen[job_id] = key
            before = None if first_look else self._seen.get(job_id)
            if first_look or before == key or state == JobState.INTAKE:
                continue
            changed_state = before is None or before[0] != state
            kind = _STATE_EVENTS[state] if changed_state or state != JobState.RUNNING else "job.progress"
            events.append((None, {"type": kind, "job_id": job_id, "payload": {
                "state": state.value, "phase": phase, "step": step, "total": total, "priority": priority}}))
        self._seen = seen
        self._in_intake = {job_id for job_id, key in seen.items() if key[0] == JobState.INTAKE}
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
