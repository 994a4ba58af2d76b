"""Supervised periodic threads, and the job heartbeat riding out real database errors."""

from __future__ import annotations

import threading
import time

import pytest
from structlog.testing import capture_logs

from support.daemons import wait_for
from daemon.db.engine import session_factory, upgrade
from daemon.db.tables import JobState
from daemon.jobs.queue import JobQueue
from daemon.jobs.recovery import recover_jobs
from daemon.periodic import Backoff, PeriodicTask
from daemon.worker.lease import Heartbeat
from support.jobs import queued_job
from support.outage import engine_for_outages, outage

OWNER = "gpu-host:4242"


def test_backoff_doubles_up_to_its_cap():
    assert [Backoff(0.2, 1.0).delay(n) for n in (1, 2, 3, 4, 5)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_failing_beat_is_retried_logged_and_escalated_once():
    calls, escalated = [], []

    def beat():
        calls.append(time.monotonic())
        if len(calls) <= 6:
            raise OSError("disk on fire")

    task = PeriodicTask("sample", beat, 0.5, escalate_after=0.5,
                        on_escalate=lambda exc: escalated.append(exc) or True, job_id=3)
    with capture_logs() as logs:
        task.start()
        wait_for(lambda: len(calls) >= 8, timeout=20, what="beats after the failures")
        task.stop()
    assert not task.alive
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert len(failed) == 6 and failed[0]["error"] == "OSError: disk on fire" and failed[0]["job_id"] == 3
    assert [e["event"] for e in logs if e["event"] != "task_failed"] == ["task_escalated", "task_recovered"]
    assert len(escalated) == 1
    # The first retries come sooner than the interval (0.1, 0.2, 0.4 s: backoff from a fifth of it).
    assert calls[3] - calls[0] < 3 * 0.5 * 0.7


def test_a_beat_that_says_stop_ends_the_task():
    done = threading.Event()
    task = PeriodicTask("once", lambda: done.set() or False, 0.01, escalate_after=1)
    task.start()
    assert done.wait(5)
    wait_for(lambda: not task.alive, timeout=5, what="the task to end")


def _running_job(url: str, lease_seconds: float) -> tuple[JobQueue, int]:
    engine = engine_for_outages(url)
    upgrade(engine)
    queue = JobQueue(session_factory(engine))
    job = queued_job(queue)
    assert queue.claim(OWNER, lease_seconds).id == job.id
    return queue, job.id


def test_the_job_heartbeat_rides_out_a_database_error(database_url):
    """A write-locked SQLite file or a PostgreSQL that drops every connection, for half a lease: the
    heartbeat retries, the lease never lapses, and recovery leaves the job alone."""
    lease = 4.0
    queue, job_id = _running_job(database_url, lease)
    heartbeat = Heartbeat(queue, job_id, OWNER, lease)
    with capture_logs() as logs:
        heartbeat.start()
        try:
            wait_for(lambda: queue.get(job_id).lease_expires_at.timestamp() > time.time() + lease - 1.2,
                     timeout=5, what="a first renewal")
            renewed_until = queue.get(job_id).lease_expires_at
            with outage(database_url):
                wait_for(lambda: any(e["event"] == "task_failed" for e in logs), timeout=5,
                         what="a failed heartbeat")
                time.sleep(0.5)
            # Past the lease the last good beat gave: without a retry it would have lapsed by now.
            wait_for(lambda: time.time() > renewed_until.timestamp() + 0.5, timeout=10, what="the old lease")
            assert recover_jobs(queue, max_crash_attempts=3) == []
            job = queue.get(job_id)
            assert job.state == JobState.RUNNING and job.lease_owner == OWNER
            assert job.lease_expires_at > renewed_until
            assert not heartbeat.lost.is_set()
        finally:
            heartbeat.stop()
    assert [e["event"] for e in logs if e["event"].startswith("task_")][-1] == "task_recovered"


def test_a_heartbeat_failing_for_a_whole_lease_stops_the_job(tmp_path):
    url = f"sqlite:///{tmp_path / 'i2vd.sqlite3'}"
    queue, job_id = _running_job(url, 1.0)
    heartbeat = Heartbeat(queue, job_id, OWNER, 1.0)
    with capture_logs() as logs:
        heartbeat.start()
        try:
            with outage(url):
                # Another worker may run the job by now: this one stops at its next step.
                assert heartbeat.lost.wait(5)
        finally:
            heartbeat.stop()
    events = [e["event"] for e in logs]
    assert "task_escalated" in events and "lease_lost" in events


@pytest.fixture(autouse=True)
def _no_stray_threads():
    before = set(threading.enumerate())
    yield
    assert not [t for t in threading.enumerate() if t not in before and t.name.startswith("heartbeat-")]
