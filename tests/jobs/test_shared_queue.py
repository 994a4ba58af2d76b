"""One queue shared by several daemons, on SQLite and on PostgreSQL: claims, leases, takeover."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import threading

from sqlalchemy.engine import make_url

from support.files import TINY_SIDECAR, write_image

from support.daemons import make_settings
from daemon.db.engine import make_engine, session_factory, upgrade
from daemon.db.tables import JobState, utcnow
from daemon.jobs.queue import JobQueue, NewJob
from daemon.jobs.recovery import recover_jobs
from daemon.intake.sidecar import Sidecar, resolve


def make_shared_queue(url: str) -> JobQueue:
    engine = make_engine(url)
    upgrade(engine)
    return JobQueue(session_factory(engine))


def queued(queue: JobQueue, key: str, priority: int = 0, params: dict | None = None,
           image: str | None = None) -> int:
    job, created = queue.create(NewJob(
        idempotency_key=key, params=params or {"seed": 1}, priority=priority, output_stem=key, output_subdir="",
        source_image=f"/in/{key}.png", source_sidecar=f"/in/{key}.json", image_path=image or f"/done/{key}.png",
        sidecar_path=f"/done/{key}.json"))
    assert created and queue.mark_queued(job.id)
    return job.id


def claim_until_empty(url: str, owner: str, start: multiprocessing.Barrier, results) -> None:
    """One daemon's worker, in a process of its own."""
    queue = JobQueue(session_factory(make_engine(url)))
    start.wait()
    claimed = []
    while (job := queue.claim(owner, 60)) is not None:
        claimed.append(job.id)
    results.put((owner, claimed))


def test_claims_from_several_processes_take_each_job_once(database_url):
    queue = make_shared_queue(database_url)
    ids = [queued(queue, f"j{i}") for i in range(200)]
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=claim_until_empty, args=(database_url, f"w{i}", start, results))
             for i in range(4)]
    for p in procs:
        p.start()
    claims = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    everything = [job_id for claimed in claims.values() for job_id in claimed]
    assert sorted(everything) == ids  # every job claimed, none twice
    assert sum(1 for claimed in claims.values() if claimed) >= 2, "the claims never overlapped in time"
    assert queue.counts()[JobState.RUNNING] == 200


def test_a_locked_row_is_passed_over_not_waited_for(postgres_url):
    import psycopg

    queue = make_shared_queue(postgres_url)
    first, second = queued(queue, "first"), queued(queue, "second")
    # Another daemon is in the middle of claiming `first`: its row is locked.
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as other:
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (first,))
        got: list[int] = []
        claimer = threading.Thread(target=lambda: got.append(queue.claim("me", 60).id))
        claimer.start()
        claimer.join(timeout=5)
        assert not claimer.is_alive(), "claim waited for another transaction's row lock"
        assert got == [second]
    assert queue.claim("me", 60).id == first  # released: the next claim takes it


def test_recovery_leaves_live_jobs_on_other_hosts_alone(database_url):
    queue = make_shared_queue(database_url)
    dead = subprocess.Popen(["true"])
    dead.wait()
    here = socket.gethostname()
    owners = {
        "live elsewhere": ("gpu-b.example:4242", 60),  # no such process here, but its lease is fresh
        "lost elsewhere": ("gpu-c.example:4243", -1),  # its host stopped renewing: lease expired
        "dead here": (f"{here}:{dead.pid}", 60),  # a process on this host that is gone
    }
    jobs = {}
    for case, (owner, lease) in owners.items():
        job_id = queued(queue, case.replace(" ", "-"))
        assert queue.claim(owner, lease).id == job_id
        jobs[case] = (job_id, queue.start_attempt(job_id, owner, {}).id)

    recovered = recover_jobs(queue, max_crash_attempts=3)
    assert sorted(recovered) == sorted([jobs["lost elsewhere"][0], jobs["dead here"][0]])
    live = queue.get(jobs["live elsewhere"][0])
    assert live.state == JobState.RUNNING and live.lease_owner == "gpu-b.example:4242"
    assert live.attempts[0].outcome is None
    for case in ("lost elsewhere", "dead here"):
        job = queue.get(jobs[case][0])
        assert job.state == JobState.QUEUED and job.lease_owner is None
        assert [a.outcome for a in job.attempts] == ["crashed"]
    assert recover_jobs(queue, max_crash_attempts=3) == []  # nothing left; a second pass changes nothing


def test_a_lease_renewed_in_time_is_kept_and_a_lost_one_publishes_nothing(database_url):
    queue = make_shared_queue(database_url)
    job_id = queued(queue, "a")
    queue.claim("slow:1", -1)  # its lease ran out while its worker was busy
    seen_expired_at = utcnow()
    assert queue.heartbeat(job_id, "slow:1", 60)  # ...and it renewed before any daemon acted on it
    assert not queue.requeue(job_id, "slow:1", expired_before=seen_expired_at)
    assert queue.get(job_id).lease_owner == "slow:1"

    # The other order: the lease runs out, a daemon takes the job over, then the old owner wakes up.
    assert queue.heartbeat(job_id, "slow:1", -1)
    assert queue.requeue(job_id, "slow:1", expired_before=utcnow())
    assert queue.claim("fast:2", 60).id == job_id
    assert not queue.heartbeat(job_id, "slow:1", 60)
    assert not queue.set_outputs(job_id, "/out/a.mp4", "/out/a.json", "slow:1")
    assert queue.set_outputs(job_id, "/out/a.mp4", "/out/a.json", "fast:2")
    assert queue.get(job_id).lease_owner == "fast:2"


def test_times_come_back_in_utc_whatever_the_session_time_zone(postgres_url):
    tokyo = make_url(postgres_url).update_query_dict({"options": "-c timezone=Asia/Tokyo"})
    queue = make_shared_queue(tokyo.render_as_string(hide_password=False))
    job = queue.get(queued(queue, "a"))
    assert job.created_at.utcoffset().total_seconds() == 0
    assert abs((utcnow() - job.created_at).total_seconds()) < 60


def test_a_worker_whose_job_was_taken_over_meanwhile_publishes_nothing(dirs, postgres_url):
    from daemon.models.catalog import ModelCatalog
    from daemon.service.daemon import load_models
    from daemon.worker.runner import Worker
    from pipeline.runtime import resolve_placement

    settings = make_settings(dirs, database_url=postgres_url, lease_seconds=600)  # no heartbeat in time
    queue = make_shared_queue(postgres_url)
    catalog = ModelCatalog.from_settings(settings)
    worker = Worker(settings, queue, load_models(settings, resolve_placement("cpu").device, catalog))
    params = resolve(Sidecar(prompt="a test scene", **TINY_SIDECAR), catalog.default.rules,
                     default_preset="preview", default_fps=8)
    image = write_image(dirs["inbox"] / "done" / "a.png")
    job_id = queued(queue, "a", params=params.to_dict(), image=str(image))
    job = queue.claim(worker.owner, 600)
    # While it generates, its host is cut off: the lease runs out and another host takes the job.
    assert queue.requeue(job_id, worker.owner) and queue.claim("gpu-b.example:9", 600).id == job_id

    worker.execute(job)
    assert list(dirs["outputs"].rglob("*")) == []  # no video, no metadata, no temporary file
    after = queue.get(job_id)
    assert after.state == JobState.RUNNING and after.lease_owner == "gpu-b.example:9"
    assert after.output_path is None
    assert [a.outcome for a in after.attempts] == ["interrupted"]
    assert "lease" in after.attempts[0].error_message


def test_two_retries_of_one_job_at_once_make_one_job(database_url):
    queue = make_shared_queue(database_url)
    job_id = queued(queue, "a")
    queue.claim("w:1", 60)
    assert queue.fail(job_id, "generation_error", "boom", owner="w:1")
    start, retries = threading.Barrier(2), []

    def retry() -> None:  # a double click: two requests, each with its own connection
        other = JobQueue(session_factory(make_engine(database_url)))
        start.wait()
        retries.append(other.retry(job_id).id)

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(retries) == 2 and retries[0] == retries[1]
    assert queue.counts()[JobState.QUEUED] == 1
