"""A daemon whose database goes away for a while keeps serving and picks up where it was; a job running
meanwhile keeps its attempt."""

from __future__ import annotations

import json
import time

import pytest
from support.cluster import Cluster
from support.daemons import daemon_env, wait_for

from support.files import drop_pair, probe
from daemon.db.engine import make_engine, session_factory
from daemon.db.tables import JobState
from daemon.jobs.queue import JobQueue
from support.outage import database_outliving_restarts, outage, server_stopped
from support.readonly_fs import flippable_mount
from support.notify import NotifyListener


def test_the_daemon_rides_out_a_database_outage(dirs, run_daemon, postgres_url):
    listener = NotifyListener()  # as under systemd: the loop also sends STATUS= lines from the queue
    env = daemon_env(dirs, I2VD_DATABASE_URL=postgres_url, I2VD_LEASE_SECONDS="6",
                     NOTIFY_SOCKET=listener.address)
    daemon = run_daemon(env)
    daemon.wait_ready()

    with outage(postgres_url):
        time.sleep(1.5)  # the idle worker's polls and the registry heartbeat fail meanwhile
        drop_pair(dirs["inbox"], "during")
        time.sleep(3)  # settled: intake tries to queue it, and cannot
        assert daemon.proc.poll() is None, daemon.output
    # Intake retries the pair at its next recovery pass (within a lease).
    video = wait_for(lambda: next(iter(dirs["outputs"].glob("during_*.mp4")), None), timeout=180,
                     what="the pair dropped during the outage")
    assert probe(video)[0] == 8
    assert daemon.stop() == 0
    listener.close()

    events = [json.loads(line) for line in (dirs["state"] / "i2vd.log").read_text().splitlines()]
    assert any(e["level"] in ("warning", "error") and e["event"] in ("claim_failed", "loop_error", "task_failed")
               for e in events), "the outage left no trace in the log"
    queue = JobQueue(session_factory(make_engine(postgres_url)))
    assert [(j.output_stem, j.state) for j in queue.recent()] == [("during", JobState.SUCCEEDED)]
    assert not list(dirs["inbox"].glob("failed/*"))


def four_jobs_through_a_blip(dirs, tmp_path, database_url: str, blip) -> None:
    """Two daemons on `database_url` generate; `blip()` takes the database away for a few seconds:
    every job succeeds with its first attempt."""
    cluster = Cluster(tmp_path)
    try:
        env = daemon_env(dirs, I2VD_DATABASE_URL=database_url, I2VD_DEVICE="cpu", OMP_NUM_THREADS="1")
        daemons = [cluster.start(env) for _ in range(2)]
        for daemon in daemons:
            daemon.wait_ready(timeout=300)
        for i in range(4):
            drop_pair(dirs["inbox"], f"p{i}", seed=i, steps=15)
        queue = JobQueue(session_factory(make_engine(database_url)))
        wait_for(lambda: sum(j.phase == "denoising" for j in queue.recent()) == 2, timeout=600,
                 what="both daemons generating")
        with blip():
            time.sleep(8)
        wait_for(lambda: queue.counts()[JobState.SUCCEEDED] == 4, timeout=1200, interval=1, what="4 jobs")
        for daemon in daemons:
            assert daemon.stop(timeout=300) == 0, daemon.output[-2000:]
        jobs = queue.recent()
    finally:
        cluster.kill_all()
    assert {j.output_stem: [a.outcome for a in j.attempts] for j in jobs} == {
        f"p{i}": ["succeeded"] for i in range(4)}
    assert sorted(v.name.split("_")[0] for v in dirs["outputs"].glob("*.mp4")) == [f"p{i}" for i in range(4)]
    logged = {e["event"] for d in daemons for e in cluster.events(d)}
    assert "database_wait" in logged or "progress_not_recorded" in logged  # the blip was felt


@pytest.mark.timeout(1500)  # two daemons loading the model and four jobs on two shared cores
def test_a_postgresql_restart_under_two_daemons_costs_no_job_its_attempt(dirs, tmp_path):
    """PostgreSQL stopped for 8 s while both daemons generate."""
    with database_outliving_restarts() as postgres_url:
        four_jobs_through_a_blip(dirs, tmp_path, postgres_url, server_stopped)


@pytest.mark.timeout(1500)
def test_a_sqlite_file_read_only_for_seconds_under_two_daemons_costs_no_job_its_attempt(dirs, tmp_path):
    """The filesystem under the SQLite file read-only for 8 s while both daemons generate (writes fail
    with EROFS on the files they hold open, as after a read-only remount)."""
    with flippable_mount(tmp_path / "db") as mount:
        four_jobs_through_a_blip(dirs, tmp_path, f"sqlite:///{mount.mountpoint / 'i2vd.db'}", mount.read_only)
