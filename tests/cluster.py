"""Helpers for tests with several daemons on one database: `i2vd status` as a user reads it."""

from __future__ import annotations

import subprocess
import sys


def status(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "status"], env=env, capture_output=True,
                          text=True, check=True).stdout


def worker_rows(status_output: str) -> dict[str, list[str]]:
    """The workers table of `i2vd status`: HOST -> [HOST, PID, GPU, DEVICE, STATE, LAST SEEN..., JOB]."""
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
