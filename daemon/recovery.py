"""Start-up and periodic recovery: jobs whose worker died, and what a crash left in outputs/."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from daemon.logs import get_logger
from daemon.models import Job, utcnow
from daemon.outputs import sweep_temporaries
from daemon.queue import JobQueue

log = get_logger("i2vd.recovery")


def owner_is_dead(owner: str | None) -> bool:
    """True when the lease owner is a process on this host that no longer exists."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover_jobs(queue: JobQueue) -> list[int]:
    """Return abandoned running jobs to the queue, or finish them if their video was published.

    Every daemon on every host runs this; a job running on another live host is never touched
    (its lease is renewed), and of two daemons recovering the same job only one wins.
    """
    now = utcnow()
    recovered = []
    for job in queue.running():
        expired = job.lease_expires_at is not None and job.lease_expires_at < now
        if not (expired or owner_is_dead(job.lease_owner)):
            continue
        if job.output_path and Path(job.output_path).is_file():
            # crashed after publishing: the video exists, do not make another
            if not queue.succeed(job.id):
                continue
            log.info("job_succeeded", job_id=job.id, output=job.output_path, recovered=True)
        elif queue.requeue(job.id, job.lease_owner, expired_before=now if expired else None):
            log.warning("job_requeued", job_id=job.id, previous_owner=job.lease_owner,
                        reason="lease expired" if expired else "worker process died")
        else:
            continue  # another daemon recovered it first, or its owner renewed the lease
        _close_open_attempts(queue, job)
        recovered.append(job.id)
    return recovered


def _close_open_attempts(queue: JobQueue, job: Job) -> None:
    """The lost owner's attempt; by now the job may be running again under a new one."""
    for attempt in job.attempts:
        if attempt.finished_at is None and attempt.worker == job.lease_owner:
            queue.finish_attempt(attempt.id, "crashed", error_type="WorkerLost",
                                 error_message=f"worker {attempt.worker} stopped without finishing")


def sweep_outputs(queue: JobQueue, outputs_dir: Path) -> None:
    for path in sweep_temporaries(outputs_dir, lambda: {job.id for job in queue.running()}):
        log.info("temp_removed", path=str(path))
