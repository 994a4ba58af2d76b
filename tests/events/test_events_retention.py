"""Retention and the `i2vd events` / `i2vd prune` commands, in-process on both engines."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import update

from daemon.cli.main import main
from daemon.events import kinds
from daemon.events.outbox import EventLog
from daemon.events.retention import prune, prune_progress
from daemon.db.tables import Event, Job, utcnow
from daemon.jobs.queue import JobQueue, NewJob


def finished_job(queue: JobQueue, key: str, outputs) -> int:
    job, _ = queue.create(NewJob(idempotency_key=key, params={}, priority=0, output_stem=key, output_subdir="",
                                 source_image=f"/in/{key}.png", source_sidecar=None, image_path=f"/done/{key}.png",
                                 sidecar_path=None))
    queue.mark_queued(job.id)
    queue.claim("w", 60)
    video, metadata = outputs / f"{key}.mp4", outputs / f"{key}.json"
    video.write_bytes(b"mp4")
    metadata.write_text("{}")
    queue.set_outputs(job.id, str(video), str(metadata), "w")
    assert queue.succeed(job.id, "w")
    return job.id


def age(sessions, job_id: int, days: float) -> None:
    then = utcnow() - timedelta(days=days)
    with sessions() as s:
        s.execute(update(Job).where(Job.id == job_id).values(finished_at=then))
        s.execute(update(Event).where(Event.job_id == job_id).values(created_at=then))
        s.commit()


def test_prune_deletes_old_finished_jobs_and_their_events_but_not_videos(sessions, tmp_path):
    queue, log = JobQueue(sessions), EventLog(sessions)
    old, recent = finished_job(queue, "old", tmp_path), finished_job(queue, "recent", tmp_path)
    failed, _ = queue.create(NewJob(idempotency_key="f", params={}, priority=0, output_stem="f", output_subdir="",
                                    source_image="/in/f.png", source_sidecar=None, image_path="/done/f.png",
                                    sidecar_path=None))
    queue.fail(failed.id, "inputs_vanished", "gone")
    retry = queue.retry(failed.id)  # a newer job linked to a pruned one keeps its history
    queue.record_rejection("invalid_json", "old rejection", ["x.json"])
    for job_id in (old, failed.id):
        age(sessions, job_id, 40)
    with sessions() as s:
        s.execute(update(Event).where(Event.job_id.is_(None)).values(created_at=utcnow() - timedelta(days=40)))
        s.commit()

    pruned = prune(sessions, 30)
    assert (pruned.jobs, pruned.files) == (2, 0)
    assert queue.get(old) is None and queue.get(failed.id) is None
    assert queue.get(recent) is not None and queue.get(retry.id).retried_from_id is None
    assert {e.job_id for e in log.since()} == {recent, retry.id}  # the rejection went too
    assert pruned.events == 2 + 1 + 1  # old: queued, succeeded; failed: failed; the rejection
    assert (tmp_path / "old.mp4").exists()  # videos are the user's

    age(sessions, recent, 40)
    assert prune(sessions, 30, delete_outputs=True).files == 2
    assert not (tmp_path / "recent.mp4").exists() and not (tmp_path / "recent.json").exists()


def test_stale_progress_is_pruned(sessions):
    queue, log = JobQueue(sessions), EventLog(sessions)
    job, _ = queue.create(NewJob(idempotency_key="p", params={}, priority=0, output_stem="p", output_subdir="",
                                 source_image="/in/p.png", source_sidecar=None, image_path="/done/p.png",
                                 sidecar_path=None))
    queue.mark_queued(job.id)
    queue.claim("w", 60)
    queue.progress(job.id, "denoising", 1, 10, owner="w")
    assert prune_progress(sessions) == 0  # fresh progress stays while the job runs
    assert prune_progress(sessions, now=utcnow() + timedelta(hours=2)) == 1
    assert [e.type for e in log.since()] == [kinds.JOB_QUEUED]


def test_events_and_prune_commands(sessions, database_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("I2VD_DATABASE_URL", database_url)
    monkeypatch.setenv("I2VD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("I2VD_CONFIG", raising=False)
    queue = JobQueue(sessions)
    done = finished_job(queue, "beach", tmp_path)
    queue.record_rejection("invalid_json", "bad.json is not JSON.", ["bad.json"])

    assert main(["events", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["type"] for e in lines] == [kinds.JOB_QUEUED, kinds.JOB_SUCCEEDED, kinds.INPUT_REJECTED]
    assert main(["events", "--since", str(lines[0]["id"]), "--type", "job.*"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == 1 and kinds.JOB_SUCCEEDED in text[0] and f"job {done}" in text[0]
    assert main(["events", "--type", "nothing.*"]) == 2

    assert main(["prune"]) == 2  # no retention_days: say so, delete nothing
    assert "retention_days" in capsys.readouterr().err
    age(sessions, done, 10)
    assert main(["prune", "--days", "7"]) == 0
    assert "pruned 1 job(s)" in capsys.readouterr().out and (tmp_path / "beach.mp4").exists()
    assert queue.get(done) is None
