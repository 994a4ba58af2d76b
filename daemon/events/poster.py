"""One bounded HTTP POST: a total deadline, connecting included, and at most a few KB of the answer read,
never decompressed, so a slow or hostile receiver costs neither time nor memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import cast

import httpx

MAX_ANSWER_BYTES = 4096  # of the body, as sent (compressed or not): enough for an error message
EXCERPT_CHARS = 200


@dataclass(frozen=True)
class Answer:
    status: int
    excerpt: str  # the start of the body when it came as plain text, for the delivery's last error


class PostFailed(Exception):
    """No answer: the receiver could not be reached, or did not answer within the deadline."""


class Poster:
    """POSTs from one thread at a time, reusing connections; `close` it from that thread, or once it ended."""

    def __init__(self) -> None:
        # httpx's own timeouts are per read: a receiver dripping a byte a second never trips them.
        # asyncio's timeout below bounds the whole exchange instead.
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(timeout=None, follow_redirects=False)

    def post(self, url: str, body: bytes, headers: dict[str, str], deadline_seconds: float) -> Answer:
        """POST `body`; raises PostFailed when no answer came within `deadline_seconds`."""
        return self._loop.run_until_complete(self._post(url, body, headers, deadline_seconds))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())  # those of answers left unread
        self._loop.close()

    async def _post(self, url: str, body: bytes, headers: dict[str, str], deadline_seconds: float) -> Answer:
        try:
            async with asyncio.timeout(deadline_seconds):
                async with self._client.stream("POST", url, content=body, headers=headers) as response:
                    head = b""
                    # httpx types aiter_raw() as an AsyncIterator; it is an async generator, with aclose().
                    raw = cast(AsyncGenerator[bytes, None], response.aiter_raw())
                    async with aclosing(raw) as chunks:  # raw: a gzip bomb stays small
                        async for chunk in chunks:
                            head += chunk[:MAX_ANSWER_BYTES - len(head)]
                            if len(head) >= MAX_ANSWER_BYTES:
                                break  # the rest is never read; the connection is closed, not reused
        except TimeoutError:
            raise PostFailed(f"no answer within {deadline_seconds:g} s") from None
        except httpx.HTTPError as exc:
            raise PostFailed(f"{type(exc).__name__}: {exc}") from None
        plain = response.headers.get("Content-Encoding", "identity").lower() == "identity"
        excerpt = head.decode(errors="replace")[:EXCERPT_CHARS] if plain else ""
        return Answer(response.status_code, excerpt)
