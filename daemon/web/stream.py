"""Server-sent events for the page and for scripts: what changed in the queue, as it happens."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator

import anyio
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from daemon.events.outbox import EventLog, EventRecord

POLL_SECONDS = 0.5  # one indexed query (id > cursor) per connection and interval
KEEPALIVE_SECONDS = 15.0  # a comment line now and then, so proxies keep an idle stream open


class EventLogFeed:
    """The outbox (daemon/events/log.py) from an event id on: complete and in order, across reconnects."""

    def __init__(self, sessions: sessionmaker[Session], after_id: int | None = None,
                 types: list[str] | None = None, job_id: int | None = None) -> None:
        self._log = EventLog(sessions)
        self._after = self._log.latest_id() if after_id is None else after_id
        self._types = types
        self._job_id = job_id

    def poll(self) -> list[EventRecord]:
        """Events since the last call (or the starting id)."""
        records = self._log.since(after_id=self._after, types=self._types, job_id=self._job_id)
        if records:
            self._after = records[-1].id
        return records


async def event_stream(request: Request, feed: EventLogFeed, stopping: threading.Event,
                       poll_seconds: float = POLL_SECONDS) -> AsyncIterator[str]:
    """The SSE body: per event its `id:` (a reconnecting browser sends it back as Last-Event-ID) and
    its JSON (EventRecord.to_json) on one `data:` line."""
    yield "retry: 2000\n\n"
    quiet_since = time.monotonic()
    while not stopping.is_set() and not await request.is_disconnected():
        events = await anyio.to_thread.run_sync(feed.poll)
        for record in events:
            yield f"id: {record.id}\ndata: {json.dumps(record.to_json(), default=str)}\n\n"
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
            yield ": keepalive\n\n"
            quiet_since = time.monotonic()
        await anyio.sleep(poll_seconds)
