"""Several real `i2vd run` daemons on one inbox and one PostgreSQL database, with the tiny model."""

from __future__ import annotations

import collections
import signal
import socket
import time

import pytest

from support.cluster import Cluster, status, worker_rows
from support.daemons import daemon_env, wait_for
from support.files import drop_pair, probe
from daemon.db.engine import make_engine, session_factory
from daemon.db.tables import JobState
from daemon.jobs.queue import JobQueue

PAIRS = 40


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.kill_all()


def cluster_env(dirs, database_url: str, gpu: int, **extra: str) -> dict[str, str]:
    # One torch thread per daemon: four CPU workers, not four fighting over every core.
    return daemon_env(dirs, I2VD_DATABASE_URL=database_url, I2VD_DEVICE="cpu", CUDA_VISIBLE_DEVICES=str(gpu),
                      OMP_NUM_THREADS="1", **extra)


@pytest.mark.timeout(900)  # minutes on two shared cores: 40 jobs, and four daemons loading the model
def test_four_daemons_share_one_inbox_and_run_every_job_once(dirs, postgres_url, cluster):
    envs = [cluster_env(dirs, postgres_url, gpu) for gpu in range(4)]
    daemons = [cluster.start(env) for env in envs]
    for daemon in daemons:
        daemon.wait_ready(timeout=240)
    for i in range(PAIRS):
        drop_pair(dirs["inbox"], f"p{i:02}", seed=i)

    engine = make_engine(postgres_url)
    queue = JobQueue(session_factory(engine))
    wait_for(lambda: queue.counts()[JobState.SUCCEEDED] == PAIRS, timeout=600, interval=1,
             what=f"{PAIRS} succeeded jobs")
    rows = worker_rows(status(envs[0]))
    assert {(row[2], row[4]) for row in rows.values()} == {("0", "alive"), ("1", "alive"), ("2", "alive"),
                                                           ("3", "alive")}
    for daemon in daemons:
        assert daemon.stop() == 0, daemon.output[-2000:]

    videos = sorted(dirs["outputs"].glob("*.mp4"))
    assert [v.name.split("_")[0] for v in videos] == [f"p{i:02}" for i in range(PAIRS)]  # one video each
    assert probe(videos[0]) == (8, 8.0, (32, 32))
    jobs = queue.recent(10 * PAIRS)
    assert len(jobs) == PAIRS and {j.state for j in jobs} == {JobState.SUCCEEDED}
    assert len({j.idempotency_key for j in jobs}) == PAIRS
    assert sorted(p.name for p in (dirs["inbox"] / "done").iterdir()) == sorted(
        f"p{i:02}{ext}" for i in range(PAIRS) for ext in (".png", ".json"))  # each pair ingested once
    assert [len(j.attempts) for j in jobs] == [1] * PAIRS  # no job run twice, none interrupted
    assert {a.outcome for j in jobs for a in j.attempts} == {"succeeded"}
    # Each attempt names its worker: host, pid and GPU; every daemon took a share of the work.
    by_gpu = collections.Counter(j.attempts[0].worker_record.gpu for j in jobs)
    assert set(by_gpu) == {"0", "1", "2", "3"}, by_gpu
    pids = {d.proc.pid for d in daemons}
    assert {j.attempts[0].worker_record.pid for j in jobs} == pids

    started = collections.Counter(e["job_id"] for d in daemons for e in cluster.events(d)
                                  if e["event"] == "job_started")
    queued = collections.Counter(e["job_id"] for d in daemons for e in cluster.events(d)
                                 if e["event"] == "job_queued")
    assert started == queued == collections.Counter({j.id: 1 for j in jobs})
    assert all("Traceback" not in d.output for d in daemons)
    engine.dispose()


@pytest.mark.timeout(600)
def test_a_lost_hosts_job_is_taken_over_after_its_lease_and_published_once(dirs, postgres_url, cluster):
    """A host that is lost cannot be found dead by pid from another host; only its lease runs out.
    Freezing a daemon (SIGSTOP) is exactly that, seen from the other one; waking it later is the
    host coming back from a network partition, still holding a job that is no longer its own."""
    lease = 3.0
    envs = [cluster_env(dirs, postgres_url, gpu, I2VD_LEASE_SECONDS=str(lease)) for gpu in range(2)]
    daemons = [cluster.start(env) for env in envs]
    for daemon in daemons:
        daemon.wait_ready(timeout=180)
    engine = make_engine(postgres_url)
    queue = JobQueue(session_factory(engine))
    drop_pair(dirs["inbox"], "long", steps=20, seed=1)

    job = wait_for(lambda: next((j for j in queue.running() if (j.progress_step or 0) >= 2), None),
                   timeout=120, what="the job in mid-denoising")
    victim = next(d for d in daemons if job.lease_owner.endswith(f":{d.proc.pid}"))
    survivor = next(d for d in daemons if d is not victim)
    victim.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.5)  # a renewal already on its way lands first
    lease_ran_out_at = queue.get(job.id).lease_expires_at

    wait_for(lambda: queue.get(job.id).state == JobState.SUCCEEDED, timeout=180, what="takeover and success")
    done = queue.get(job.id)
    lost_attempt, new_attempt = done.attempts
    assert lost_attempt.worker == job.lease_owner and lost_attempt.outcome == "crashed"
    assert new_attempt.worker_record.pid == survivor.proc.pid and new_attempt.outcome == "succeeded"
    assert new_attempt.started_at > lease_ran_out_at  # not before the lease ran out
    videos = list(dirs["outputs"].glob("long_*.mp4"))
    assert len(videos) == 1 and str(videos[0]) == done.output_path

    rows = worker_rows(status(envs[0]))
    here = socket.gethostname()
    assert rows[f"{here}:{victim.proc.pid}"][4] == "dead"
    assert rows[f"{here}:{survivor.proc.pid}"][4] == "alive"

    victim.proc.send_signal(signal.SIGCONT)  # back from the partition, mid-job
    wait_for(lambda: any(e["event"] == "job_interrupted" and e["job_id"] == job.id and e["lease_lost"]
                         for e in cluster.events(victim)), timeout=60, what="the woken worker to give up")
    assert list(dirs["outputs"].glob("long_*.mp4")) == videos  # it published nothing
    assert not list(dirs["outputs"].glob(".i2vd-tmp-*"))
    after = queue.get(job.id)
    assert after.state == JobState.SUCCEEDED and after.output_path == done.output_path
    for daemon in daemons:
        assert daemon.stop() == 0
    engine.dispose()
