"""The worker registry as `i2vd status` shows it: who is alive, on which host and GPU, what is stuck."""

from __future__ import annotations

import re
import time

from support.cluster import status, worker_rows
from support.daemons import daemon_env
from daemon.db.engine import make_engine, session_factory, upgrade
from daemon.jobs.queue import JobQueue, NewJob
from daemon.worker.registry import Identity, WorkerRegistry

LEASE = 0.6


def running_job(queue: JobQueue, key: str, owner: str, lease: float) -> int:
    job, _ = queue.create(NewJob(
        idempotency_key=key, params={}, priority=0, output_stem=key, output_subdir="",
        source_image=f"/in/{key}.png", source_sidecar=None, image_path=f"/done/{key}.png", sidecar_path=None))
    queue.mark_queued(job.id)
    assert queue.claim(owner, lease).id == job.id
    return job.id


def test_status_lists_live_and_dead_workers_and_expired_leases(database_url, dirs):
    engine = make_engine(database_url)
    upgrade(engine)
    sessions, queue = session_factory(engine), JobQueue(session_factory(engine))
    here = WorkerRegistry(sessions, Identity("gpu-a:11", "gpu-a", 11, "0"), LEASE)
    lost = WorkerRegistry(sessions, Identity("gpu-b:22", "gpu-b", 22, "1"), LEASE)  # its host went away
    gone = WorkerRegistry(sessions, Identity("gpu-c:33", "gpu-c", 33, None), LEASE)  # stopped cleanly
    for registry in (here, lost, gone):
        registry.register("cuda:0")
    here.start()
    gone.start()
    gone.stop()
    alive_job = running_job(queue, "alive", "gpu-a:11", 60)
    stuck_job = running_job(queue, "stuck", "gpu-b:22", -5)
    try:
        time.sleep(3 * LEASE)  # gpu-b misses its beats; gpu-a keeps beating
        output = status(daemon_env(dirs, I2VD_DATABASE_URL=database_url, I2VD_LEASE_SECONDS=str(LEASE)))
    finally:
        here.stop()
    rows = worker_rows(output)
    assert set(rows) == {"gpu-a:11", "gpu-b:22"}, output  # the cleanly stopped worker is not listed
    assert rows["gpu-a:11"][2:5] == ["0", "cuda:0", "alive"] and rows["gpu-a:11"][-2] == f"#{alive_job}"
    assert rows["gpu-b:22"][2:5] == ["1", "cuda:0", "dead"] and rows["gpu-b:22"][-2] == f"#{stuck_job}"
    lines = output.splitlines()
    stuck_line = next(line for line in lines if line.startswith(f"running #{stuck_job} "))
    assert "on gpu-b:22" in stuck_line and re.search(r"lease expired \d+s ago", stuck_line)
    alive_line = next(line for line in lines if line.startswith(f"running #{alive_job} "))
    assert "lease expired" not in alive_line
    engine.dispose()
