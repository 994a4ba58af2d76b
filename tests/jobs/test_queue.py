"""The job queue and its migrations on a real SQLite database."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import PurePath

import pytest
from sqlalchemy import inspect, text

from support.daemons import make_queue, make_settings
from daemon.db.engine import downgrade, make_engine, schema_revision, upgrade
from daemon.db.tables import JobState
from daemon.errors import InputRejected
from daemon.intake.sidecar import Sidecar, params_for
from daemon.jobs.errors import JobNotFound, ModelNotServed, NotRetryable
from daemon.jobs.queue import NewJob
from daemon.models.catalog import ModelCatalog


def new_job(key: str, priority: int = 0) -> NewJob:
    return NewJob(idempotency_key=key, params={"seed": 1}, priority=priority, output_stem=key,
                  output_subdir="", source_image=f"/in/{key}.png", source_sidecar=f"/in/{key}.json",
                  image_path=f"/done/{key}.png", sidecar_path=f"/done/{key}.json")


def queued(queue, key: str, priority: int = 0) -> int:
    job, created = queue.create(new_job(key, priority))
    assert created and queue.mark_queued(job.id)
    return job.id


def test_migrations_upgrade_downgrade_and_wal(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    upgrade(engine)
    current, head = schema_revision(engine)
    assert current == head
    assert {"jobs", "attempts"} <= set(inspect(engine).get_table_names())
    downgrade(engine, "base")
    assert "jobs" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert schema_revision(engine)[0] == head
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_same_key_is_one_job(dirs):
    queue = make_queue(make_settings(dirs))
    first, created = queue.create(new_job("a"))
    again, created_again = queue.create(new_job("a"))
    assert created and not created_again and again.id == first.id
    assert queue.get(first.id).state == JobState.INTAKE
    assert queue.claim("w", 60) is None  # intake jobs are not claimable


def test_claim_order_is_priority_then_arrival(dirs):
    queue = make_queue(make_settings(dirs))
    low = queued(queue, "low", priority=-1)
    first = queued(queue, "first")
    urgent = queued(queue, "urgent", priority=5)
    second = queued(queue, "second")
    order = [queue.claim("w", 60).id for _ in range(4)]
    assert order == [urgent, first, second, low]
    assert queue.claim("w", 60) is None


def test_concurrent_claims_never_share_a_job(dirs):
    settings = make_settings(dirs)
    make_queue(settings)
    ids = [queued(make_queue(settings), f"j{i}") for i in range(30)]
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_all(queue, owner: str) -> None:
        while (job := queue.claim(owner, 60)) is not None:
            with lock:
                claimed.append(job.id)

    # each worker with its own engine, as another process would have
    threads = [threading.Thread(target=claim_all, args=(make_queue(settings), f"w{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # each job exactly once


def test_requeue_and_heartbeat_respect_the_owner(dirs):
    queue = make_queue(make_settings(dirs))
    job_id = queued(queue, "a")
    assert queue.claim("alice", 60).id == job_id
    assert queue.heartbeat(job_id, "alice", 60)
    assert not queue.heartbeat(job_id, "bob", 60)
    assert not queue.requeue(job_id, "bob")
    assert queue.requeue(job_id, "alice")
    assert queue.get(job_id).state == JobState.QUEUED
    assert queue.claim("bob", 60).lease_owner == "bob"
    assert queue.counts()[JobState.RUNNING] == 1


def test_a_double_retry_makes_one_job(dirs):
    queue = make_queue(make_settings(dirs))
    failed = queued(queue, "a")
    queue.claim("w", 60)
    assert queue.fail(failed, "generation_error", "boom", owner="w")
    first, second = queue.retry(failed), queue.retry(failed)
    assert first.id == second.id and first.retried_from_id == failed
    assert queue.counts()[JobState.QUEUED] == 1


def test_retry_refuses_a_job_whose_model_is_no_longer_served_in_intakes_words(dirs):
    settings = make_settings(dirs).model_copy(update={"models": ("tiny", "other=tiny:svd")})
    queue = make_queue(settings)
    job, _ = queue.create(replace(new_job("a"), model="gone"))
    assert queue.mark_queued(job.id) and queue.cancel(job.id) == JobState.CANCELLED
    catalog = ModelCatalog.from_settings(settings)
    with pytest.raises(ModelNotServed) as refused:
        queue.retry(job.id, catalog)
    with pytest.raises(InputRejected) as rejected:
        params_for(Sidecar(prompt="waves", model="gone"), PurePath(), catalog, settings)
    assert str(refused.value) in str(rejected.value)
    assert "'gone' is not served here; served models: i2vgen-xl (default), other" in str(refused.value)
    assert queue.counts()[JobState.QUEUED] == 0


def test_retry_names_what_it_refuses(dirs):
    queue = make_queue(make_settings(dirs))
    waiting = queued(queue, "a")
    with pytest.raises(JobNotFound, match="no job 99"):
        queue.retry(99)
    with pytest.raises(NotRetryable, match="is queued; only failed or cancelled"):
        queue.retry(waiting)


def test_queue_position_follows_claim_order_within_the_model_and_after_back_offs(dirs):
    queue = make_queue(make_settings(dirs))
    backing_off = queued(queue, "backing-off", priority=5)
    queue.claim("w", 60)
    assert queue.schedule_retry(backing_off, "w", 3600, "boom")  # claimable only in an hour
    first = queued(queue, "first")
    job, _ = queue.create(replace(new_job("elsewhere", priority=9), model="other"))
    queue.mark_queued(job.id)
    second = queued(queue, "second")

    positions = [queue.position(queue.get(i)) for i in (first, second, backing_off)]
    assert positions == [1, 2, 3]
    assert queue.position(queue.get(job.id)) == 1  # alone among its model's jobs
    assert [queue.claim("w", 60, models=["tiny"]).id for _ in range(2)] == [first, second]


def test_create_many_makes_the_new_and_names_the_known_in_order(dirs):
    queue = make_queue(make_settings(dirs))
    known, _ = queue.create(new_job("known"))
    made = queue.create_many([new_job("a"), new_job("known"), new_job("b")])
    assert [created for _, created in made] == [True, False, True]
    assert made[1][0].id == known.id
    assert [queue.get(job.id).output_stem for job, _ in made] == ["a", "known", "b"]
    assert queue.mark_queued_many([job.id for job, _ in made]) == sorted(job.id for job, _ in made)
    assert queue.mark_queued_many([known.id]) == []  # released once
