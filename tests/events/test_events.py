"""The event outbox on both engines: one event per state change, in its transaction, fenced on the owner."""

from __future__ import annotations

import time

import pytest

from daemon.db.engine import make_engine, session_factory, upgrade
from daemon.events import kinds
from daemon.events.outbox import EventLog
from daemon.db.tables import JobState
from daemon.jobs.queue import JobQueue, NewJob


@pytest.fixture
def queue_and_log(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    sessions = session_factory(engine)
    yield JobQueue(sessions), EventLog(sessions)
    engine.dispose()


def new_job(key: str) -> NewJob:
    return NewJob(idempotency_key=key, params={"seed": 1, "prompt": "p"}, priority=0, output_stem=key,
                  output_subdir="", source_image=f"/in/{key}.png", source_sidecar=f"/in/{key}.json",
                  image_path=f"/done/{key}.png", sidecar_path=f"/done/{key}.json")


def queued(queue: JobQueue, key: str) -> int:
    job, _ = queue.create(new_job(key))
    assert queue.mark_queued(job.id)
    return job.id


def types(log: EventLog, job_id: int | None = None) -> list[str]:
    return [e.type for e in log.since(job_id=job_id)]


def test_a_job_story_in_order_with_progress_throttled_and_pruned(queue_and_log):
    queue, log = queue_and_log
    job_id = queued(queue, "beach")
    assert queue.claim("alice", 60).id == job_id
    queue.start_attempt(job_id, "alice", {"seed": 1}, "full")
    for step in range(5):  # five steps within a second: one event, then one per phase change
        queue.progress(job_id, "denoising", step, 5, owner="alice")
    queue.progress(job_id, "decoding", owner="alice")
    assert types(log, job_id) == [kinds.JOB_QUEUED, kinds.JOB_STARTED, kinds.JOB_PROGRESS, kinds.JOB_PROGRESS]
    time.sleep(1.05)
    queue.progress(job_id, "decoding", owner="alice")
    assert types(log, job_id).count(kinds.JOB_PROGRESS) == 3
    assert queue.schedule_retry(job_id, "alice", 0.0, "OSError: disk full")
    assert queue.claim("bob", 60).id == job_id
    queue.start_attempt(job_id, "bob", {"seed": 1}, "vae_slicing")
    queue.set_outputs(job_id, "/out/beach.mp4", "/out/beach.json", "bob")
    assert queue.succeed(job_id, "bob", rung="vae_slicing", timings={"generation_seconds": 1.5})

    events = log.since(job_id=job_id)
    assert [e.type for e in events] == [kinds.JOB_QUEUED, kinds.JOB_STARTED, kinds.JOB_RETRY_SCHEDULED,
                                        kinds.JOB_STARTED, kinds.JOB_SUCCEEDED]  # progress gone with the job
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert events[0].payload["name"] == "beach" and events[0].payload["image"] == "beach.png"
    assert events[2].payload["error"] == "OSError: disk full"
    assert events[3].payload["rung"] == "vae_slicing" and events[3].payload["attempt"] == 2
    done = events[-1].to_json()
    assert set(done) == {"id", "type", "job_id", "time", "data"} and done["job_id"] == job_id
    assert done["data"]["video"] == "/out/beach.mp4" and done["data"]["rung"] == "vae_slicing"
    assert done["data"]["timings"] == {"generation_seconds": 1.5}
    assert done["time"].endswith("+00:00")
    assert log.latest_id() == events[-1].id


def test_rejection_cancel_fail_and_retry_events(queue_and_log):
    queue, log = queue_and_log
    queue.record_rejection("invalid_json", "beach.json is not valid JSON.", ["beach.png", "beach.json"],
                           hint="Fix it.", error_file="beach.error.json")
    waiting = queued(queue, "waiting")
    assert queue.cancel(waiting) == JobState.CANCELLED
    running = queued(queue, "running")
    queue.claim("alice", 60)
    assert queue.cancel(running) == JobState.RUNNING  # only asked: no event until the worker stops it
    assert queue.mark_cancelled(running, "alice")
    again = queue.retry(waiting)
    queue.claim("alice", 60)
    assert queue.fail(again.id, "generation_error", "RuntimeError: boom", owner="alice")

    events = log.since()
    assert [(e.type, e.job_id) for e in events] == [
        (kinds.INPUT_REJECTED, None), (kinds.JOB_QUEUED, waiting), (kinds.JOB_CANCELLED, waiting),
        (kinds.JOB_QUEUED, running), (kinds.JOB_CANCELLED, running), (kinds.JOB_QUEUED, again.id),
        (kinds.JOB_FAILED, again.id)]
    assert events[0].payload["code"] == "invalid_json" and events[0].payload["files"] == ["beach.png", "beach.json"]
    assert events[2].payload["while"] == "queued" and events[4].payload["while"] == "running"
    assert events[5].payload["retry_of"] == waiting
    assert events[6].payload == {"code": "generation_error", "message": "RuntimeError: boom"}
    # the cursor and filters the web page and `i2vd events` use
    assert [e.id for e in log.since(events[4].id)] == [events[5].id, events[6].id]
    assert len(log.since(limit=2)) == 2
    assert [e.type for e in log.since(types={kinds.JOB_CANCELLED})] == [kinds.JOB_CANCELLED] * 2


def test_a_worker_that_lost_its_lease_changes_nothing(queue_and_log):
    queue, log = queue_and_log
    job_id = queued(queue, "contested")
    queue.claim("alice", 60)
    assert queue.requeue(job_id, "alice", reason="lease_expired")  # as recovery does after alice's lease ran out
    assert queue.claim("bob", 60).id == job_id
    before = log.latest_id()

    assert not queue.progress(job_id, "denoising", 3, 10, owner="alice")
    assert not queue.set_outputs(job_id, "/out/a.mp4", "/out/a.json", "alice")
    assert not queue.succeed(job_id, "alice")
    assert not queue.fail(job_id, "generation_error", "late", owner="alice")
    assert not queue.fail(job_id, "generation_error", "no owner given")  # a running job needs its owner
    assert not queue.mark_cancelled(job_id, "alice")
    assert not queue.schedule_retry(job_id, "alice", 5, "late")
    job = queue.get(job_id)
    assert job.state == JobState.RUNNING and job.lease_owner == "bob" and job.phase == "loading"
    assert job.output_path is None and job.error_code is None
    assert log.latest_id() == before  # and no event claims otherwise

    assert queue.progress(job_id, "denoising", 3, 10, owner="bob") is False  # no cancel asked
    assert queue.get(job_id).progress_step == 3
    assert queue.succeed(job_id, "bob")
    assert [e.type for e in log.since(before)] == [kinds.JOB_SUCCEEDED]
