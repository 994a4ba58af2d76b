"""`i2vd doctor` as a person runs it: a subprocess, its words and its exit status."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from support.daemons import daemon_env, make_queue, make_settings
from daemon.intake.watcher import filesystem_type, needs_polling
from support.jobs import without_root_file_access


def doctor(env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "doctor"], env=env, capture_output=True,
                          text=True, timeout=120, **kwargs)


def lines_for(output: str, check: str) -> list[str]:
    return [line for line in output.splitlines() if line[6:].split(" ", 1)[0] == check]


def test_healthy_install_passes_and_explains(dirs):
    make_queue(make_settings(dirs))  # a database at head
    result = doctor(daemon_env(dirs))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for check in ("python", "gpu", "ffmpeg", "model", "database", "inbox", "outputs", "state", "inbox-fs",
                  "disk", "metrics"):
        assert lines_for(out, check) and all(line.startswith("ok") for line in lines_for(out, check)), check
    assert "with libx264" in lines_for(out, "ffmpeg")[0]
    assert "schema at head" in lines_for(out, "database")[0] and "writable" in lines_for(out, "database")[0]
    fs = filesystem_type(dirs["inbox"])
    assert not needs_polling(fs), f"this test needs its temporary folder on a local filesystem, not {fs}"
    assert lines_for(out, "inbox-fs") == [f"ok    inbox-fs  inbox on {fs}: file events (inotify), and a full "
                                          "rescan every 60 s."]
    assert "any free port" in lines_for(out, "metrics")[0]  # I2VD_METRICS_ADDRESS=127.0.0.1:0
    assert out.splitlines()[-1].startswith("i2vd can run")


def test_missing_ffmpeg_and_unwritable_outputs_block_running(dirs, tmp_path):
    dirs["outputs"].chmod(0o555)
    env = daemon_env(dirs, IMAGEIO_FFMPEG_EXE=str(tmp_path / "no-such-ffmpeg"))
    try:
        result = doctor(env, preexec_fn=without_root_file_access if os.geteuid() == 0 else None)
    finally:
        dirs["outputs"].chmod(0o755)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    [ffmpeg] = lines_for(out, "ffmpeg")
    assert ffmpeg.startswith("FAIL") and "no-such-ffmpeg" in ffmpeg and "does not run" in ffmpeg
    [outputs] = lines_for(out, "outputs")
    assert outputs.startswith("FAIL") and str(dirs["outputs"]) in outputs and "not writable" in outputs
    assert lines_for(out, "inbox")[0].startswith("ok")  # only what is broken is blamed
    assert out.splitlines()[-1] == "2 problem(s) keep i2vd from running: ffmpeg, outputs."
    assert "Traceback" not in result.stderr


def test_an_intake_only_daemon_needs_no_model_ffmpeg_or_gpu(dirs, tmp_path):
    make_queue(make_settings(dirs))
    env = daemon_env(dirs, I2VD_INTAKE_ONLY="true", I2VD_MODEL=str(tmp_path / "no-such-model"),
                     IMAGEIO_FFMPEG_EXE=str(tmp_path / "no-such-ffmpeg"), I2VD_OBSERVER="polling")
    result = doctor(env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "intake only" in lines_for(out, "role")[0]
    assert "polling every 0.3 s (I2VD_OBSERVER=polling)" in lines_for(out, "inbox-fs")[0]
    assert not any(lines_for(out, check) for check in ("python", "gpu", "ffmpeg", "model"))
    assert lines_for(out, "database")[0].startswith("ok")


def test_a_read_only_database_and_a_taken_metrics_port_block_running(dirs):
    make_queue(make_settings(dirs))
    database = dirs["state"] / "i2vd.sqlite3"
    database.chmod(0o444)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        # Intake only: the same database and metrics checks, without torch's start-up time.
        result = doctor(daemon_env(dirs, I2VD_INTAKE_ONLY="true", I2VD_METRICS_ADDRESS=address),
                        preexec_fn=without_root_file_access if os.geteuid() == 0 else None)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    [db_line] = lines_for(out, "database")
    assert db_line.startswith(f"FAIL  database  cannot write to the database {database} (attempt to write a "
                              f"readonly database): make it and its folder {dirs['state']} writable"), db_line
    [metrics_line] = lines_for(out, "metrics")
    assert metrics_line.startswith(f"FAIL  metrics   cannot serve metrics on {address} (Address already in use")
    assert "I2VD_METRICS_ADDRESS" in metrics_line
    assert out.splitlines()[-1] == "2 problem(s) keep i2vd from running: database, metrics."


def test_a_database_that_cannot_be_created_blocks_running(dirs, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    env = daemon_env(dirs, I2VD_INTAKE_ONLY="true", I2VD_DATABASE_URL=f"sqlite:///{locked / 'i2vd.sqlite3'}")
    result = doctor(env, preexec_fn=without_root_file_access if os.geteuid() == 0 else None)
    assert result.returncode == 1
    [db_line] = lines_for(result.stdout, "database")
    assert db_line.startswith("FAIL") and f"{locked} is not writable" in db_line
