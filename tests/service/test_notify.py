"""The notify protocol client against real datagram sockets, in-process."""

from __future__ import annotations

import os
import socket
import time
import uuid

import pytest
from structlog.testing import capture_logs

from daemon.service.notify import Notifier, StartupKeepalive


@pytest.fixture
def receiver(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_messages_reach_a_path_socket(receiver):
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.ready("Idle; 0 queued")
    assert sock.recv(4096) == b"READY=1\nSTATUS=Idle; 0 queued"
    notifier.stopping("Stopping")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=Stopping"


def test_abstract_socket_and_watchdog_interval():
    name = f"i2vd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000",
                             "WATCHDOG_PID": str(os.getpid())})
        assert notifier.watchdog_interval == 15.0  # half of WatchdogSec=30
        notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog()
    # A watchdog armed for another process (the one that started us) is not ours to feed.
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_a_vanished_service_manager_does_not_break_the_daemon(tmp_path):
    path = tmp_path / "gone.sock"
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    with capture_logs() as logs:
        notifier.status("still fine")  # ENOENT: logged once, never raised
        notifier.status("still fine")
    assert [(e["event"], e["socket"]) for e in logs] == [("notify_failed", str(path))]
    assert "No such file" in logs[0]["error"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # the service manager is back
        sock.bind(str(path))
        sock.settimeout(2)
        notifier.status("back")
        assert sock.recv(4096) == b"STATUS=back"


def test_startup_keepalive_stops_extending_at_its_limit(receiver):
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})  # renew every 0.1 s
    started = time.monotonic()
    with StartupKeepalive(notifier, limit=0.5):
        time.sleep(1.2)  # a start-up that hangs past its limit
    sock.settimeout(0.1)
    extends = []
    while True:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        if data.startswith("EXTEND_TIMEOUT_USEC="):
            extends.append(int(data.split("=")[1]))
    assert len(extends) >= 3
    # Each extension reaches no further than the limit, so systemd stops a start-up that hangs.
    assert all(usec <= 500_000 for usec in extends) and extends == sorted(extends, reverse=True)
    assert len(extends) <= 0.5 / 0.1 + 1
    assert time.monotonic() - started < 2
