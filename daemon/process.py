"""Who this process is: its worker identity (host:pid), and whether another one on this host still lives."""

from __future__ import annotations

import os
import socket


def worker_identity() -> str:
    """host:pid of this process, recorded as lease owner, on attempts and in the worker registry."""
    return f"{socket.gethostname()}:{os.getpid()}"


def split_identity(identity: str) -> tuple[str, int] | None:
    """(host, pid) of a worker identity; None when it is not one (an old or foreign lease owner)."""
    host, sep, pid = identity.rpartition(":")
    if not sep or not host or not pid.isdigit():
        return None
    return host, int(pid)


def is_dead_here(identity: str | None) -> bool:
    """True when `identity` names a process on this host that no longer exists (never this process)."""
    parts = split_identity(identity or "")
    if parts is None or parts[0] != socket.gethostname() or parts[1] == os.getpid():
        return False
    try:
        os.kill(parts[1], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False
