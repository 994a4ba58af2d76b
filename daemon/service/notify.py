"""The systemd notify protocol (sd_notify(3)): datagrams to $NOTIFY_SOCKET, a no-op without it."""

from __future__ import annotations

import os
import socket
import threading
import time

from daemon.logs import get_logger

log = get_logger("i2vd.notify")


class Notifier:
    """Tells the service manager about readiness, status, liveness and shutdown."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is Linux's abstract namespace, spelled with a leading NUL byte on the wire.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # the start-up keepalive thread and the main loop share the socket
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        """Send one datagram of `KEY=VALUE` lines; failures are logged once, never raised."""
        if not self.enabled:
            return
        message = "\n".join(fields).encode()
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:  # the service manager went away; the daemon keeps working
                log.warning("notify_failed", socket=self.address.replace("\0", "@"), error=str(exc))
                self._warned = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        if self.watchdog_interval is not None:
            self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _watchdog_interval(env) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec=), or None when no watchdog is armed."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # armed for another process (we were started by it)
    return int(usec) / 1_000_000 / 2


class StartupKeepalive:
    """While start-up blocks the main thread, keep systemd's start timeout and watchdog from firing.

    Extends the start timeout in short slices, so a start-up that hangs is still killed once
    `limit` seconds have passed.
    """

    SLICE = 30.0  # seconds each EXTEND_TIMEOUT_USEC grants; renewed every third of it

    def __init__(self, notifier: Notifier, limit: float) -> None:
        self.notifier = notifier
        self.limit = limit
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="startup-keepalive", daemon=True)

    def __enter__(self) -> StartupKeepalive:
        if self.notifier.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        every = min(self.SLICE / 3, self.notifier.watchdog_interval or self.SLICE / 3)
        while not self._done.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("startup_too_slow", limit_seconds=self.limit,
                          detail="start-up exceeded startup_timeout_seconds; systemd will stop it")
                return
            self.notifier.extend_timeout(min(self.SLICE, left))
            self.notifier.watchdog()
            self._done.wait(every)
