"""Settings, queues and `i2vd run` subprocesses for tests, and waiting on them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon.db.engine import make_engine, session_factory, upgrade
from daemon.jobs.queue import JobQueue
from daemon.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get("I2VD_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def make_settings(dirs: dict[str, Path], **overrides) -> Settings:
    values = dict(inbox_dir=dirs["inbox"], outputs_dir=dirs["outputs"], state_dir=dirs["state"],
                  model="tiny", settle_seconds=0.3, poll_interval_seconds=0.3, pair_timeout_seconds=30)
    values.update(overrides)
    return Settings(**values)


def make_queue(settings: Settings) -> JobQueue:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return JobQueue(session_factory(engine))


def wait_for(predicate, timeout: float = 180.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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
