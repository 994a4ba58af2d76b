"""Fixtures for the web tests: `i2vd web` served on 127.0.0.1, port 0, in a thread or a subprocess."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import requests

from daemon.db.engine import make_engine, session_factory
from daemon.db.tables import Job
from daemon.jobs.queue import JobQueue, NewJob
from daemon.settings import Settings
from daemon.web.server import make_server, url_of
from pipeline.video import encode_mp4
from support.daemons import make_queue, make_settings, wait_for
from support.files import TINY_SIDECAR

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


def png(size=(48, 40), color=(200, 120, 40), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def post_job(web, name="beach.png", data=None, fields=None, headers=None) -> requests.Response:
    fields = {"prompt": "waves on a beach", **{k: str(v) for k, v in TINY_SIDECAR.items()}, **(fields or {})}
    return requests.post(f"{web.url}/api/jobs", files={"image": (name, data if data is not None else png())},
                         data=fields, headers=headers or {}, timeout=30)


def finished_job(web, stem="clip", poster: str | None = "clip.jpg", preview: bool = False) -> Job:
    """A job that went the whole way: a real MP4, its metadata JSON, and maybe a poster beside it."""
    outputs = web.settings.outputs_dir
    video, metadata = outputs / f"{stem}.mp4", outputs / f"{stem}.json"
    frames = np.linspace(0, 255, 8 * 32 * 32 * 3).astype(np.uint8).reshape(8, 32, 32, 3)
    encode_mp4(frames, video, 8)
    data = {"video": video.name, "frames": 8, "width": 32, "height": 32, "fps": 8, "downgrade": None}
    if poster:
        if poster.endswith(".jpg"):
            PIL.Image.new("RGB", (32, 32), (10, 20, 30)).save(outputs / Path(poster).name)
        data["extras"] = {"poster": poster}  # as the worker names the files it wrote beside the video
    if preview:
        frames_img = [PIL.Image.new("RGB", (32, 32), (i * 30, 0, 0)) for i in range(4)]
        frames_img[0].save(outputs / f"{stem}.preview.webp", save_all=True, append_images=frames_img[1:],
                           duration=125, loop=0)
        data.setdefault("extras", {})["preview"] = f"{stem}.preview.webp"
    metadata.write_text(json.dumps(data))
    queue = web.queue
    job, _ = queue.create(NewJob(f"k-{stem}", {"prompt": "p", "seed": 1}, 0, stem, "", "/in/x.png", None,
                                 "/done/x.png", None))
    queue.mark_queued(job.id)
    claimed = queue.claim("test:1", 60)
    assert claimed.id == job.id
    assert queue.set_outputs(job.id, str(video), str(metadata), "test:1") and queue.succeed(job.id, "test:1")
    return queue.get(job.id)
