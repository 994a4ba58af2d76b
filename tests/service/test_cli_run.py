"""`i2vd run` refusing to start: one line saying what to fix, before the slow model load, and in the log."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys

from support.daemons import daemon_env, make_queue, make_settings
from support.jobs import without_root_file_access


def run(env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "run"], env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)


def logged(state_dir) -> list[dict]:
    return [json.loads(line) for line in (state_dir / "i2vd.log").read_text().splitlines()]


def test_a_read_only_database_is_named_before_the_model_loads(tmp_path):
    dirs = {name: tmp_path / name for name in ("inbox", "outputs", "state")}
    make_queue(make_settings(dirs))
    database = dirs["state"] / "i2vd.sqlite3"
    database.chmod(0o444)
    result = run(daemon_env(dirs), preexec_fn=without_root_file_access if os.geteuid() == 0 else None)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"i2vd: cannot write to the database {database} (attempt to write a readonly "
                           f"database): make it and its folder {dirs['state']} writable by user {pwd.getpwuid(os.geteuid()).pw_name}"), last
    assert "Traceback" not in result.stderr and "model_loading" not in result.stderr
    assert "database_unwritable" in [e["event"] for e in logged(dirs["state"])]


def test_a_taken_metrics_port_is_in_the_log_file_too(tmp_path):
    dirs = {name: tmp_path / name for name in ("inbox", "outputs", "state")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run(daemon_env(dirs, I2VD_METRICS_ADDRESS=address, I2VD_INTAKE_ONLY="true"))
    assert result.returncode == 2
    [event] = [e for e in logged(dirs["state"]) if e["event"] == "metrics_bind_failed"]
    assert event["level"] == "error" and event["address"] == address
    assert event["detail"] == result.stderr.strip().splitlines()[-1].removeprefix("i2vd: ")
