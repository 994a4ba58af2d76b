"""`i2vd doctor` as a person runs it: a subprocess, its words and its exit status."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from support.daemons import daemon_env, make_queue, make_settings
from daemon.intake.watcher import filesystem_type, needs_polling
from support.jobs import without_root_file_access
from support.units import install

from daemon.service.doctor import check_metrics, check_unit
from daemon.service.units import render

REPO = Path(__file__).resolve().parents[2]


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


def test_the_installed_units_user_and_groups_must_exist(dirs, tmp_path):
    shipped = (REPO / "systemd" / "i2vd.service").read_text()
    unit = render(shipped, executable=Path(sys.executable).parent / "i2vd", inbox=dirs["inbox"],
                  outputs=dirs["outputs"], stop_grace_seconds=10, supplementary_groups=["no-such-group"])
    (tmp_path / "i2vd.service").write_text(unit.replace("User=i2vd", "User=no-such-user"))
    findings = check_unit(make_settings(dirs), dirs=(tmp_path,))
    messages = [f.message for f in findings if f.level == "fail"]
    assert len(messages) == 2, findings
    assert "runs as user 'no-such-user', which does not exist" in messages[0] and "217/USER" in messages[0]
    assert "group(s) i2vd no-such-group that do not exist" in messages[1] and "216/GROUP" in messages[1]


def test_an_installed_unit_whose_user_and_groups_exist_is_fine(dirs, tmp_path):
    assert install(tmp_path, "--inbox", str(dirs["inbox"]), "--outputs", str(dirs["outputs"])).returncode == 0
    for name in ("i2vd.service", "i2vd@.service"):
        unit = tmp_path / name
        unit.write_text(unit.read_text().replace("User=i2vd", "User=root").replace("Group=i2vd", "Group=root"))
    (tmp_path / "i2vd-web.service").unlink()
    findings = check_unit(make_settings(dirs), dirs=(tmp_path,))
    assert [f.level for f in findings] == ["ok", "ok"], findings
    assert findings[0].message.endswith("as user root, groups root video.") or \
        findings[0].message.endswith("as user root, groups root video render."), findings


def test_a_metrics_port_held_by_a_running_i2vd_is_no_problem(dirs):
    from daemon.metrics import MetricsServer

    server = MetricsServer("127.0.0.1", 0, dict, None)  # as the service runs beside `doctor` (README's "check it")
    try:
        settings = make_settings(dirs)
        settings.metrics_address = f"127.0.0.1:{server.port}"
        [finding] = check_metrics(settings)
    finally:
        server.close()
    assert finding.level == "info" and "in use by a running i2vd" in finding.message, finding
