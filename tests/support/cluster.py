"""Helpers for tests with several daemons on one database: the daemons, and `i2vd status`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.daemons import DaemonProcess


def status(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "status"], env=env, capture_output=True,
                          text=True, check=True).stdout


def worker_rows(status_output: str) -> dict[str, list[str]]:
    """The workers table of `i2vd status`: HOST -> [HOST, PID, GPU, DEVICE, STATE, LAST SEEN..., JOB, MODELS]."""
    lines = status_output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("workers (")), None)
    if start is None:
        return {}
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        fields = line.split()
        rows[f"{fields[0]}:{fields[1]}"] = fields
    return rows


class Cluster:
    """Several `i2vd run` subprocesses, each with its own working folder and log file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemons: list[DaemonProcess] = []

    def start(self, env: dict[str, str]) -> DaemonProcess:
        cwd = self.root / f"daemon{len(self.daemons)}"
        cwd.mkdir()
        daemon = DaemonProcess({**env, "I2VD_LOG_FILE": str(cwd / "i2vd.log")}, cwd)
        self.daemons.append(daemon)
        return daemon

    def events(self, daemon: DaemonProcess) -> list[dict]:
        log_file = daemon.log_path.parent / "i2vd.log"
        return [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []

    def kill_all(self) -> None:
        for daemon in self.daemons:
            if daemon.proc.poll() is None:
                daemon.kill()  # SIGKILL ends a stopped (SIGSTOP) process too
