"""Recovery of jobs whose worker died, on a real database: what it restarts, and what it must not."""

from __future__ import annotations

import subprocess
import socket

from support.daemons import make_queue, make_settings
from support.jobs import queued_job
from daemon.db.tables import JobState
from daemon.jobs.recovery import recover_jobs


def dead_owner() -> str:
    """The identity of a process on this host that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}"


def test_a_cancel_requested_before_the_worker_died_is_honoured_not_restarted(dirs):
    queue = make_queue(make_settings(dirs))
    job = queued_job(queue)
    owner = dead_owner()
    assert queue.claim(owner, 60).id == job.id
    attempt = queue.start_attempt(job.id, owner, {})
    assert queue.cancel(job.id) == JobState.RUNNING  # asked; then the daemon crashed before its next step

    assert recover_jobs(queue, max_crash_attempts=3) == [job.id]
    after = queue.get(job.id)
    assert after.state == JobState.CANCELLED and after.lease_owner is None
    assert [a.outcome for a in after.attempts] == ["crashed"] and after.attempts[0].id == attempt.id
    assert queue.claim("other:1", 60) is None  # nothing to run again


def test_an_expired_lease_with_a_cancel_request_is_cancelled_only_while_still_expired(dirs):
    queue = make_queue(make_settings(dirs))
    job = queued_job(queue)
    queue.claim("gpu-b.example:4242", -1)  # another host's worker, its lease run out
    queue.cancel(job.id)
    assert recover_jobs(queue, max_crash_attempts=3) == [job.id]
    assert queue.get(job.id).state == JobState.CANCELLED
