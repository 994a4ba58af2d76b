"""An intake-only daemon queues pairs without loading the model; a daemon beside it runs the jobs."""

from __future__ import annotations

from pathlib import Path

from support.daemons import daemon_env, make_queue, make_settings, wait_for

from support.files import drop_pair, probe

from daemon.db.tables import JobState


def test_intake_only_daemon_queues_pairs_without_torch_and_a_worker_daemon_runs_them(dirs, tmp_path, run_daemon):
    intake = run_daemon(daemon_env(dirs, I2VD_INTAKE_ONLY="true", I2VD_LOG_FILE=str(tmp_path / "intake.log")))
    intake.wait_ready()
    drop_pair(dirs["inbox"], "harbour")

    done = dirs["inbox"] / "done"
    wait_for(lambda: (done / "harbour.png").exists() and (done / "harbour.json").exists(), 60,
             what="the pair moved to done/")
    queue = make_queue(make_settings(dirs))
    wait_for(lambda: queue.counts()[JobState.QUEUED] == 1, 10, what="the job queued")
    maps = Path(f"/proc/{intake.proc.pid}/maps").read_text()
    assert "libtorch" not in maps, "an intake-only daemon must not load the model stack"
    assert not list(dirs["outputs"].glob("*.mp4"))

    worker = run_daemon(daemon_env(dirs))
    mp4 = wait_for(lambda: next(dirs["outputs"].glob("harbour*.mp4"), None), 180, what="the MP4")
    assert probe(mp4)[0] == 8
    wait_for(lambda: queue.counts()[JobState.SUCCEEDED] == 1, 30, what="the job succeeded")
    assert worker.stop() == 0
    assert intake.stop() == 0
