"""Shared fixtures: the tiny model built once, real folders, a real daemon subprocess."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import PIL.Image
import pytest

from daemon.db.engine import make_engine, session_factory, upgrade
from daemon.jobs.queue import JobQueue
from daemon.settings import Settings

TINY_SIDECAR = {"width": 32, "height": 32, "num_frames": 8, "steps": 10, "fps": 8}
# The server that .ci/run starts; tests make and drop their own databases on it.
POSTGRES_ADMIN_URL = os.environ.get("I2VD_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from pipeline.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("model") / "tiny-i2vgen-xl")


@pytest.fixture
def postgres_url():
    """A throwaway database on the test PostgreSQL server, dropped (connections and all) afterwards.

    Skips when the server is unreachable, except in CI (CI=true), where that fails the test.
    """
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    admin = make_url(POSTGRES_ADMIN_URL)
    try:
        conn = psycopg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False),
                               autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL unreachable at {admin.render_as_string()}: {' '.join(str(exc).split())}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = sql.Identifier(database := f"i2vd_test_{os.getpid()}_{secrets.token_hex(4)}")
    with conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        try:
            yield admin.set(database=database).render_as_string(hide_password=False)
        finally:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """The same test on both engines: a SQLite file, then a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine-test.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def dirs(tmp_path, tiny_model_dir) -> dict[str, Path]:
    """inbox/, outputs/ and state/ under tmp_path, the tiny model pre-placed in state/."""
    d = {name: tmp_path / name for name in ("inbox", "outputs", "state")}
    for path in d.values():
        path.mkdir()
    shutil.copytree(tiny_model_dir, d["state"] / "models" / "tiny-i2vgen-xl")
    return d


def make_settings(dirs: dict[str, Path], **overrides) -> Settings:
    values = dict(inbox_dir=dirs["inbox"], outputs_dir=dirs["outputs"], state_dir=dirs["state"],
                  model="tiny", settle_seconds=0.3, poll_interval_seconds=0.3, pair_timeout_seconds=30)
    values.update(overrides)
    return Settings(**values)


def make_queue(settings: Settings) -> JobQueue:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return JobQueue(session_factory(engine))


def write_image(path: Path, size=(48, 40), color=(200, 120, 40), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new(mode, size, color).save(path, format=fmt)
    return path


def write_sidecar(path: Path, **fields) -> Path:
    data = {"prompt": "a test scene", **TINY_SIDECAR, **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


def drop_pair(inbox: Path, name: str, **fields) -> tuple[Path, Path]:
    """A pair written the safe way (temporary names, then rename), as `i2vd submit` does."""
    image = write_image(inbox / f".{name}.png.tmp", fmt="PNG")
    sidecar = write_sidecar(inbox / f".{name}.json.tmp", **fields)
    final_image, final_sidecar = inbox / f"{name}.png", inbox / f"{name}.json"
    os.rename(image, final_image)
    os.rename(sidecar, final_sidecar)
    return final_image, final_sidecar


def probe(path: Path) -> tuple[int, float, tuple[int, int]]:
    """(frames, fps, (width, height)) of a video, by decoding every frame with ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return sum(1 for _ in reader), float(meta["fps"]), tuple(meta["size"])


def wait_for(predicate, timeout: float = 180.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# Set by systemd for its services (a CI runner may be one); a test daemon gets them only on purpose.
SERVICE_MANAGER_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM")


def daemon_env(dirs: dict[str, Path], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("I2VD_") and k not in SERVICE_MANAGER_VARS}
    env.update({
        "I2VD_INBOX_DIR": str(dirs["inbox"]), "I2VD_OUTPUTS_DIR": str(dirs["outputs"]),
        "I2VD_STATE_DIR": str(dirs["state"]), "I2VD_MODEL": "tiny", "I2VD_SETTLE_SECONDS": "0.3",
        "I2VD_POLL_INTERVAL_SECONDS": "0.3", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
        # Any free port: test daemons never collide with each other or with a real i2vd.
        "I2VD_METRICS_ADDRESS": "127.0.0.1:0",
    })
    env.update(extra)
    return env


class DaemonProcess:
    """`i2vd run` as a real subprocess."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.log_path = cwd / "daemon-stderr.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run"], env=env, cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_for(lambda: "daemon_ready" in self.output or self.proc.poll() is not None, timeout,
                 what="daemon_ready")
        assert self.proc.poll() is None, f"daemon exited early:\n{self.output}"

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture
def run_daemon(tmp_path):
    started: list[DaemonProcess] = []

    def start(env: dict[str, str]) -> DaemonProcess:
        daemon = DaemonProcess(env, tmp_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.kill()
