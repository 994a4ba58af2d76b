"""A real HTTP receiver for webhook tests: 127.0.0.1, a thread, every request kept; it can be down, or
answer however a test tells it to (slowly, hugely)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from daemon.settings import Settings


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict:
        return json.loads(self.body)

    def signature_ok(self, secret: str) -> bool:
        """What a receiver does: recompute the HMAC over timestamp + "." + raw body, compare in constant time."""
        signed = self.headers["X-I2VD-Timestamp"].encode() + b"." + self.body
        expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("X-I2VD-Signature", ""))


SECRET = "s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """POSTs to http://127.0.0.1:PORT/hook are answered with `status` (200 unless told) and recorded.

    `answer`, when set, writes the whole answer itself instead (status line, headers, body).
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[Received] = []
        self.status = 200
        self.answer: Callable[[BaseHTTPRequestHandler], None] | None = None
        self.requests = 0  # every POST, whatever it was answered
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests += 1
                if receiver.answer is not None:
                    receiver.answer(self)
                    return
                status = receiver.status
                if status == 200:
                    with receiver._lock:
                        receiver.received.append(Received(dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict]:
        with self._lock:
            return [r.event for r in self.received]

    def unique_events(self) -> list[dict]:
        """Each event once (deliveries are at-least-once), in the order first received."""
        seen: dict[int, dict] = {}
        for event in self.events():
            seen.setdefault(event["id"], event)
        return list(seen.values())


def settings_for(tmp_path, url: str, **overrides) -> Settings:
    """Settings that send to `url` and retry quickly."""
    values = dict(state_dir=tmp_path / "state", inbox_dir=tmp_path / "inbox", outputs_dir=tmp_path / "outputs",
                  webhook_urls=[url], webhook_secret=SECRET, webhook_backoff_seconds=0.05,
                  webhook_backoff_max_seconds=0.2, webhook_timeout_seconds=2, webhook_poll_seconds=0.1)
    values.update(overrides)
    return Settings(**values)
