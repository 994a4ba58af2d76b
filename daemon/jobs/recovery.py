"""Start-up and periodic recovery: jobs whose worker died, and what a crash left in outputs/."""

from __future__ import annotations

from pathlib import Path

from daemon.logs import get_logger
from daemon.db.tables import utcnow
from daemon.jobs.outputs import OutputPaths, discard_set, finish_set, sweep_temporaries
from daemon.jobs.codes import ErrorCode
from daemon.jobs.queue import JobQueue
from daemon.process import is_dead_here

log = get_logger("i2vd.recovery")


def recover_jobs(queue: JobQueue, max_crash_attempts: int) -> list[int]:
    """Return abandoned running jobs to the queue, finish them if their output set was published
    (or only its metadata's rename is missing; a set left partial is removed), cancel them if a
    cancel was requested, or fail them as poison when they have now crashed their worker
    `max_crash_attempts` times.

    Every daemon on every host runs this; a job running on another live host is never touched
    (its lease is renewed), and of two daemons recovering the same job only one wins; the winner
    closes the lost worker's attempt.
    """
    now = utcnow()
    recovered = []
    for job in queue.running():
        expired = job.lease_expires_at is not None and job.lease_expires_at < now
        if not (expired or is_dead_here(job.lease_owner)):
            continue
        # The lost owner's attempt; by now the job may be running again under a new one.
        lost = [a for a in job.attempts if a.finished_at is None and a.worker == job.lease_owner]
        crashes = len(lost) + sum(1 for a in job.attempts if a.outcome == "crashed")
        recorded = OutputPaths.recorded(job.output_path, job.metadata_path)
        published = recorded is not None and finish_set(job.id, recorded)
        # A running job has a lease_owner (a claim sets both); the owner-fenced ends below skip one without.
        if published:
            rung = job.attempts[-1].rung if job.attempts else None
            if job.lease_owner is None or not queue.succeed(job.id, job.lease_owner, rung=rung, recovered=True):
                continue
            log.info("job_succeeded", job_id=job.id, output=job.output_path, recovered=True)
        elif job.cancel_requested:  # asked to stop before its worker died: running it again is not wanted
            if job.lease_owner is None or not queue.mark_cancelled(
                    job.id, job.lease_owner, expired_before=now if expired else None):
                continue
            log.info("job_cancelled", job_id=job.id, previous_owner=job.lease_owner, recovered=True)
        elif crashes >= max_crash_attempts:
            message = (f"poison job: its worker crashed {crashes} times while running it "
                       f"(max_crash_attempts={max_crash_attempts}); not run again. See `i2vd jobs show "
                       f"{job.id}` and the log for what crashed it; `i2vd retry {job.id}` queues it again")
            if not queue.fail(job.id, ErrorCode.POISON_JOB, message, owner=job.lease_owner):
                continue
            log.error("job_failed", job_id=job.id, error_code=ErrorCode.POISON_JOB, error=message)
        elif queue.requeue(job.id, job.lease_owner, expired_before=now if expired else None,
                           reason="lease_expired" if expired else "worker_died"):
            log.warning("job_requeued", job_id=job.id, previous_owner=job.lease_owner,
                        reason="lease expired" if expired else "worker process died")
        else:
            continue  # another daemon recovered it first, or its owner renewed the lease
        if recorded is not None and not published:
            # Only now that the lost worker's attempt cannot publish any more: what it left is garbage.
            for path in discard_set(job.id, recorded):
                log.info("output_discarded", job_id=job.id, path=str(path))
        for attempt in lost:
            queue.finish_attempt(attempt.id, "crashed", error_type="WorkerLost",
                                 error_message=f"worker {attempt.worker} stopped without finishing")
        recovered.append(job.id)
    return recovered


def sweep_outputs(queue: JobQueue, outputs_dir: Path) -> None:
    for path in sweep_temporaries(outputs_dir, lambda: {job.id for job in queue.running()}):
        log.info("temp_removed", path=str(path))
