"""A listener on a NOTIFY_SOCKET, as systemd is for the daemon."""

from __future__ import annotations

import socket
import threading
import time
import uuid

from support.daemons import wait_for


class NotifyListener:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET; records every message."""

    def __init__(self) -> None:
        self.name = f"i2vd-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)  # abstract namespace, as "@name" in NOTIFY_SOCKET
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, float, dict[str, str]]] = []  # (monotonic, wall clock, fields)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return "@" + self.name

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append((time.monotonic(), time.time(), fields))

    def wait(self, predicate, after: int = 0, timeout: float = 60.0, what: str = "message") -> int:
        """Index of the first message from `after` on whose fields satisfy `predicate`."""
        def found():
            for i, (_, _, fields) in enumerate(self.messages[after:], start=after):
                if predicate(fields):
                    return i + 1  # +1 so that index 0 is truthy
            return None
        return wait_for(found, timeout, what=what) - 1

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self.sock.close()
