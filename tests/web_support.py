"""Fixtures for the web tests: `i2vd web` served on 127.0.0.1, port 0, in a thread or a subprocess."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import make_queue, make_settings, wait_for
from daemon.db.engine import make_engine, session_factory
from daemon.jobs.queue import JobQueue
from daemon.settings import Settings
from daemon.web.server import make_server, url_of

TOKEN = "correct-horse-battery-staple"


@dataclass
class WebServer:
    url: str
    settings: Settings
    queue: JobQueue

    def sessions(self):
        return session_factory(make_engine(self.settings.database_url))


def serve_in_thread(settings: Settings):
    """Start the real uvicorn server in a thread; returns (url, stop)."""
    server, sock = make_server(settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, what="uvicorn start")

    def stop() -> None:
        server.handle_exit(signal.SIGTERM, None)
        thread.join(timeout=30)
        sock.close()

    return url_of(sock).rstrip("/"), stop


@pytest.fixture
def web_factory(tmp_path):
    """web_factory(**settings) -> a WebServer on fresh folders and a fresh SQLite database."""
    stops = []

    def start(**overrides) -> WebServer:
        dirs = {name: tmp_path / name for name in ("inbox", "outputs", "state")}
        for path in dirs.values():
            path.mkdir(exist_ok=True)
        settings = make_settings(dirs, web_address="127.0.0.1:0", **overrides)
        queue = make_queue(settings)  # migrates the database, as `i2vd run` would have
        url, stop = serve_in_thread(settings)
        stops.append(stop)
        return WebServer(url, settings, queue)

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def web(web_factory) -> WebServer:
    return web_factory()


class WebProcess:
    """`i2vd web` as a real subprocess; `url` once it printed where it serves."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str) -> None:
        self.log_path = cwd / "web-stdout.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "web", *args], env=env, cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_url(self, timeout: float = 60.0) -> str:
        found = wait_for(lambda: re.search(r"serving (http://\S+)", self.output) or self.proc.poll() is not None,
                         timeout, what="i2vd web to listen")
        assert self.proc.poll() is None, f"i2vd web exited early:\n{self.output}"
        return found.group(1).rstrip("/")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        finally:
            self._log.close()
