"""The server's sockets: what a client on a kept-alive connection notices."""

from __future__ import annotations

import os
import socket

import requests
from support.web import web, web_factory  # noqa: F401  # fixtures


def accepted_sockets(port: int) -> list[socket.socket]:
    """This process's connected TCP sockets on local `port` (the thread-served web's side)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getsockname()[1] == port:
                sock.getpeername()  # the listening socket has none
                found.append(sock)
                continue
        except OSError:
            pass
        sock.close()
    return found


def test_responses_on_a_kept_alive_connection_are_sent_at_once(web):
    """With Nagle on the accepted socket, each response after the first on a kept-alive connection
    waited ~40 ms for the client's delayed ACK (a browser polling the queue felt every one)."""
    port = int(web.url.rsplit(":", 1)[1])
    with requests.Session() as http:
        for _ in range(3):
            http.get(f"{web.url}/api/jobs", timeout=10).raise_for_status()
        accepted = accepted_sockets(port)
        try:
            assert accepted, "no accepted connection found"
            assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in accepted)
        finally:
            for sock in accepted:
                sock.close()
