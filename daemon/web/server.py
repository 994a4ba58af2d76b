"""`i2vd web`: check the exposure rule, open the database, bind, and serve until SIGINT/SIGTERM."""

from __future__ import annotations

import socket
import threading
from types import FrameType

import uvicorn

from daemon.db.engine import make_engine, session_factory, upgrade
from daemon.errors import ConfigError
from daemon.logs import get_logger
from daemon.settings import Settings, split_host_port
from daemon.web.app import create_app
from daemon.web.security import check_exposure

log = get_logger("i2vd.web")

SHUTDOWN_GRACE_SECONDS = 5  # requests in flight may finish; event streams end at once (`stopping`)


def bind(address: str) -> socket.socket:
    """A listening socket for host:port (port 0: any free one), made before serving so the port is known."""
    host, port = split_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle off (TCP_NODELAY) only on accepted sockets whose
    # proto says TCP, and with Nagle on, every response after the first on a kept-alive connection
    # waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on web_address {address}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class WebServer(uvicorn.Server):
    """uvicorn's server, telling the open event streams to end when it is asked to stop."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)


def make_server(settings: Settings) -> tuple[WebServer, socket.socket]:
    """The server and its bound socket; refuses a non-loopback address without web_token."""
    check_exposure(split_host_port(settings.web_address)[0], settings.web_token is not None)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)  # as `i2vd run` does: either may start first, under the same migration lock
    stopping = threading.Event()
    app = create_app(settings, session_factory(engine), stopping)
    config = uvicorn.Config(app, log_config=None, access_log=False, proxy_headers=False, server_header=False,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS)
    return WebServer(config, stopping), bind(settings.web_address)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def serve(settings: Settings) -> int:
    server, sock = make_server(settings)
    url = url_of(sock)
    log.info("web_listening", url=url, token_required=settings.web_token is not None)
    print(f"i2vd web: serving {url}", flush=True)
    server.run(sockets=[sock])
    return 0
