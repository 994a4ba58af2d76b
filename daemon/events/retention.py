"""Retention: finished jobs and their events older than `retention_days` are deleted, and progress
events that outlived their job's run. Videos stay unless `retention_delete_outputs` says otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from daemon.events import kinds
from daemon.db.tables import Event, Job, rowcount, utcnow
from daemon.jobs.queue import FINISHED_STATES

PROGRESS_KEPT = timedelta(hours=1)  # a running job's progress events; its end deletes them sooner
BATCH = 500  # jobs deleted per transaction: short transactions, small IN lists


@dataclass(frozen=True)
class Pruned:
    jobs: int
    events: int
    files: int  # videos and metadata files deleted (retention_delete_outputs)


def prune(sessions: sessionmaker[Session], days: float, *, delete_outputs: bool = False,
          now: datetime | None = None) -> Pruned:
    """Delete jobs that finished more than `days` ago, their attempts and events, and older job-less
    events (rejected inputs); with `delete_outputs`, also the jobs' video and metadata files."""
    cutoff = (now or utcnow()) - timedelta(days=days)
    jobs = events = files = 0
    while True:
        with sessions() as s:
            rows = s.execute(select(Job.id, Job.output_path, Job.metadata_path).where(
                Job.state.in_(FINISHED_STATES), Job.finished_at < cutoff).order_by(Job.id).limit(BATCH)).all()
            if not rows:
                break
            ids = [r.id for r in rows]
            events += rowcount(s.execute(delete(Event).where(Event.job_id.in_(ids))))
            # A newer retry keeps its own history; only its link to the pruned job goes.
            s.execute(update(Job).where(Job.retried_from_id.in_(ids)).values(retried_from_id=None))
            s.execute(delete(Job).where(Job.id.in_(ids)))  # attempts go with them (ON DELETE CASCADE)
            s.commit()
        jobs += len(ids)
        if delete_outputs:
            files += _delete_files(p for r in rows for p in (r.output_path, r.metadata_path))
    with sessions() as s:
        events += rowcount(s.execute(delete(Event).where(Event.job_id.is_(None), Event.created_at < cutoff)))
        s.commit()
    return Pruned(jobs, events, files)


def prune_progress(sessions: sessionmaker[Session], now: datetime | None = None) -> int:
    """Progress events older than an hour (a job that ends deletes its own at once)."""
    with sessions() as s:
        n = rowcount(s.execute(delete(Event).where(Event.type == kinds.JOB_PROGRESS,
                                                   Event.created_at < (now or utcnow()) - PROGRESS_KEPT)))
        s.commit()
    return n


def _delete_files(paths) -> int:
    deleted = 0
    for path in paths:
        if path:
            try:
                Path(path).unlink()
                deleted += 1
            except FileNotFoundError:
                pass
    return deleted
