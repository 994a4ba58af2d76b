"""Job queue data access: every read and state change of jobs and attempts goes through here.

Each state change writes its event (daemon/events/kinds.py) in its own transaction, and every write to
a running job is fenced on its lease owner: a worker that lost its lease changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pathlib import Path
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from daemon.events import kinds
from daemon.events.outbox import record_event, record_events
from daemon.db.tables import Attempt, Event, Job, JobState, rowcount, utcnow
from daemon.jobs.errors import JobNotFound, KeyConflict, ModelNotServed, NotRetryable


if TYPE_CHECKING:
    from daemon.models.catalog import ModelCatalog

WAITING_STATES = (JobState.INTAKE, JobState.QUEUED)  # not started; priority may still change
FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)  # nothing happens to them any more
RETRYABLE_STATES = (JobState.FAILED, JobState.CANCELLED)
PROGRESS_EVENT_INTERVAL = 1.0  # seconds: at most one job.progress event a second per job (phases always)


def _queued_data(name: str, image: str, sidecar: str | None, priority: int, params: dict, **extra) -> dict:
    """The data of a job.queued event."""
    return {"name": name, "image": Path(image).name, "sidecar": Path(sidecar).name if sidecar else None,
            "priority": priority, "params": params, **extra}


def claimable_at(now: datetime):
    """A queued job may be claimed now: it waits for no retry back-off."""
    return or_(Job.run_after.is_(None), Job.run_after <= now)


def claim_order(models: Sequence[str] | None = None, loaded: Sequence[str] = ()) -> list:
    """The ORDER BY of claims: priority, then (for a worker serving `models`) a `loaded` model's job, then arrival."""
    order = [Job.priority.desc(), Job.id]
    if models is not None:
        order.insert(1, case((func.coalesce(Job.model, models[0]).in_(loaded), 0), else_=1))
    return order


@dataclass(frozen=True)
class NewJob:
    idempotency_key: str
    params: dict
    priority: int
    output_stem: str
    output_subdir: str
    source_image: str
    source_sidecar: str | None
    image_path: str
    sidecar_path: str | None
    model: str | None = None  # the served model's name; None: whichever model a worker serves first


class JobQueue:
    """Jobs in the database; each method is one short transaction."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._progress_events: dict[int, tuple[str, float]] = {}  # job -> (phase, monotonic) of its last one

    # -- intake -------------------------------------------------------------------------------

    def create(self, new: NewJob) -> tuple[Job, bool]:
        """Insert a job in state intake; (existing job, False) when its key is already known."""
        return self.create_many([new])[0]

    def create_many(self, news: Sequence[NewJob]) -> list[tuple[Job, bool]]:
        """`create` for many jobs in one transaction (a big drop is queued in batches); in their order.

        One INSERT ... ON CONFLICT DO NOTHING RETURNING: a known key is no error, only a row not returned.
        Rows go in key order, so two daemons inserting the same batch wait for each other, never deadlock.
        """
        if not news:
            return []
        with self._sessions() as s:
            insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
            made = dict(s.execute(
                insert(cast(Table, Job.__table__)).on_conflict_do_nothing(index_elements=[Job.idempotency_key])
                .returning(Job.idempotency_key, Job.id),
                [{"state": JobState.INTAKE, **new.__dict__} for new in sorted(news, key=lambda n: n.idempotency_key)],
            ).all())
            s.commit()
            missing = [n.idempotency_key for n in news if n.idempotency_key not in made]
            known = {job.idempotency_key: job for job in s.scalars(
                select(Job).where(Job.idempotency_key.in_(missing)))} if missing else {}
        results = []
        for new in news:
            if new.idempotency_key in made:
                results.append((Job(id=made[new.idempotency_key], state=JobState.INTAKE, **new.__dict__), True))
            elif new.idempotency_key in known:
                results.append((known[new.idempotency_key], False))
            else:  # the conflicting row vanished again; let the caller retry later
                raise KeyConflict(f"job with key {new.idempotency_key} conflicted but is gone")
        return results

    def by_key(self, key: str) -> Job | None:
        with self._sessions() as s:
            return s.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()

    def mark_queued(self, job_id: int) -> bool:
        """intake -> queued; False when the job had already left intake."""
        return bool(self.mark_queued_many([job_id]))

    def mark_queued_many(self, job_ids: Sequence[int]) -> list[int]:
        """intake -> queued for many jobs in one transaction; the ids that were still in intake."""
        if not job_ids:
            return []
        with self._sessions() as s:
            jobs = sorted(s.execute(
                update(Job).where(Job.id.in_(job_ids), Job.state == JobState.INTAKE).values(state=JobState.QUEUED)
                .returning(Job.id, Job.output_stem, Job.source_image, Job.source_sidecar, Job.priority, Job.params)
                .execution_options(synchronize_session=False)
            ).all())
            record_events(s, [(kinds.JOB_QUEUED, job.id, _queued_data(
                job.output_stem, job.source_image, job.source_sidecar, job.priority, job.params)) for job in jobs])
            s.commit()
            return [job.id for job in jobs]

    def record_rejection(self, code: str, message: str, files: list[str], *, hint: str | None = None,
                         folder: str = "", error_file: str | None = None) -> None:
        """A dropped pair was moved to failed/ (no job was made): its input.rejected event."""
        with self._sessions() as s:
            record_event(s, kinds.INPUT_REJECTED, None, {"code": code, "message": message, "hint": hint,
                                                         "files": files, "folder": folder,
                                                         "error_file": error_file})
            s.commit()

    def in_intake(self, older_than: timedelta | None = None) -> list[Job]:
        with self._sessions() as s:
            q = select(Job).where(Job.state == JobState.INTAKE)
            if older_than is not None:
                q = q.where(Job.created_at < utcnow() - older_than)
            return list(s.scalars(q.order_by(Job.id)))

    # -- worker -------------------------------------------------------------------------------

    def claim(self, owner: str, lease_seconds: float, models: Sequence[str] | None = None,
              loaded: Sequence[str] = ()) -> Job | None:
        """Atomically take the next queued job (priority, then arrival) and lease it to `owner`.

        `models`: the names of the models this worker serves, its default first; a job for another
        model is left to a worker that serves it (None: any job). Within one priority a job for a
        `loaded` model goes first, so a worker swaps models only when a more urgent job needs it.
        A job without a model (queued before models had names) counts as the default model's.

        One UPDATE ... RETURNING on both engines. PostgreSQL: the subquery's FOR UPDATE SKIP LOCKED
        lets concurrent claimers pass over each other's rows instead of queueing behind them.
        SQLite ignores it; there a write statement takes the database's write lock before it reads
        (waiting out busy_timeout), so two claims never see the same queued row.
        """
        with self._sessions() as s:
            now = utcnow()
            candidates = select(Job.id).where(Job.state == JobState.QUEUED, claimable_at(now))
            if models is not None:
                candidates = candidates.where(func.coalesce(Job.model, models[0]).in_(models))
            next_id = (
                candidates
                .order_by(*claim_order(models, loaded))
                .limit(1)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            job = s.scalars(
                update(Job)
                .where(Job.id == next_id, Job.state == JobState.QUEUED)
                .values(
                    state=JobState.RUNNING,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    started_at=now,
                    run_after=None,
                    phase="loading",
                    progress_step=None,
                    progress_total=None,
                )
                .returning(Job)
                .execution_options(populate_existing=True)
            ).one_or_none()
            s.commit()
            return job

    def start_attempt(self, job_id: int, worker: str, params: dict, rung: str = "full",
                      worker_id: int | None = None) -> Attempt:
        with self._sessions() as s:
            number = (s.scalar(select(func.max(Attempt.number)).where(Attempt.job_id == job_id)) or 0) + 1
            attempt = Attempt(job_id=job_id, number=number, worker=worker, params=params, rung=rung,
                              worker_id=worker_id)
            s.add(attempt)
            s.flush()
            record_event(s, kinds.JOB_STARTED, job_id, {"attempt": number, "rung": rung, "worker": worker,
                                                        "params": params})
            s.commit()
            return attempt

    def finish_attempt(self, attempt_id: int, outcome: str, *, error_type: str | None = None,
                       error_message: str | None = None, error_traceback: str | None = None,
                       peak_gpu_memory_bytes: int | None = None) -> None:
        with self._sessions() as s:
            s.execute(
                update(Attempt).where(Attempt.id == attempt_id).values(
                    finished_at=utcnow(), outcome=outcome, error_type=error_type,
                    error_message=error_message, error_traceback=error_traceback,
                    peak_gpu_memory_bytes=peak_gpu_memory_bytes,
                )
            )
            s.commit()

    def heartbeat(self, job_id: int, owner: str, lease_seconds: float) -> bool:
        """Extend the lease; False when the job is no longer ours (lease lost)."""
        with self._sessions() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            )
            s.commit()
            return rowcount(result) == 1

    def progress(self, job_id: int, phase: str, step: int | None = None, total: int | None = None, *,
                 owner: str) -> bool:
        """Record progress of `owner`'s job; returns whether a cancel was requested meanwhile.

        Writes a job.progress event on a phase change and at most once a second otherwise. Nothing
        is written once `owner` lost the job (its heartbeat then stops it).
        """
        last_phase, last_at = self._progress_events.get(job_id, (None, 0.0))
        now = time.monotonic()
        emit = phase != last_phase or now - last_at >= PROGRESS_EVENT_INTERVAL
        with self._sessions() as s:
            cancel = s.execute(
                update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
                .values(phase=phase, progress_step=step, progress_total=total).returning(Job.cancel_requested)
            ).one_or_none()
            if cancel is not None and emit:
                record_event(s, kinds.JOB_PROGRESS, job_id, {"phase": phase, "step": step, "total": total})
                self._progress_events[job_id] = (phase, now)
            s.commit()
            return bool(cancel and cancel[0])

    def set_outputs(self, job_id: int, output_path: str, metadata_path: str, owner: str) -> bool:
        """Record the final names before they are published, so recovery can find them.

        False when `owner` no longer holds the job: another worker took it over after the lease
        expired, and publishing now would make a second video.
        """
        with self._sessions() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
                .values(output_path=output_path, metadata_path=metadata_path)
            )
            s.commit()
            return rowcount(result) == 1

    def succeed(self, job_id: int, owner: str, *, rung: str | None = None, timings: dict | None = None,
                recovered: bool = False) -> bool:
        """running -> succeeded, only while `owner` holds the job; outputs are those set_outputs recorded."""
        with self._sessions() as s:
            row = self._end(job_id, JobState.SUCCEEDED, owner).returning(Job.output_path, Job.metadata_path)
            done = s.execute(row).one_or_none()
            if done is not None:
                self._end_events(s, job_id, kinds.JOB_SUCCEEDED, {
                    "video": done.output_path, "metadata": done.metadata_path, "rung": rung,
                    "timings": timings or {}, "recovered": recovered})
            s.commit()
            return done is not None

    def fail(self, job_id: int, code: str, message: str, *, owner: str | None = None) -> bool:
        """-> failed: a running job only by its `owner`; without one, only a job nobody runs (intake, queued)."""
        with self._sessions() as s:
            result = s.execute(self._end(job_id, JobState.FAILED, owner, error_code=code, error_message=message))
            if rowcount(result) == 1:
                self._end_events(s, job_id, kinds.JOB_FAILED, {"code": code, "message": message})
            s.commit()
            return rowcount(result) == 1

    def requeue(self, job_id: int, owner: str | None = None, *, expired_before: datetime | None = None,
                reason: str = "interrupted") -> bool:
        """running -> queued (shutdown, lost lease, dead worker); only `owner`'s if given.

        With `expired_before`, only while the lease is still expired: a slow owner that renewed it
        in the meantime keeps its job.
        """
        return self._requeue(job_id, owner, 0, expired_before, kinds.JOB_QUEUED, {"reason": reason})

    def schedule_retry(self, job_id: int, owner: str, delay_seconds: float, error: str) -> bool:
        """running -> queued, claimable again after `delay_seconds` (a transient failure)."""
        return self._requeue(job_id, owner, delay_seconds, None, kinds.JOB_RETRY_SCHEDULED,
                             {"error": error, "delay_seconds": delay_seconds})

    def _requeue(self, job_id: int, owner: str | None, delay_seconds: float, expired_before: datetime | None,
                 event: str, data: dict) -> bool:
        with self._sessions() as s:
            q = update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING)
            if owner is not None:
                q = q.where(Job.lease_owner == owner)
            if expired_before is not None:
                q = q.where(Job.lease_expires_at < expired_before)
            run_after = utcnow() + timedelta(seconds=delay_seconds) if delay_seconds else None
            result = s.execute(q.values(
                state=JobState.QUEUED, lease_owner=None, lease_expires_at=None, phase=None,
                progress_step=None, progress_total=None, run_after=run_after))
            if rowcount(result) == 1:
                self._progress_events.pop(job_id, None)  # the next run reports its phases afresh
                record_event(s, event, job_id, {**data, "run_after": run_after.isoformat() if run_after else None})
            s.commit()
            return rowcount(result) == 1

    def cancel(self, job_id: int) -> JobState | None:
        """queued -> cancelled at once; running -> asked to stop at its next step. None: no such job."""
        with self._sessions() as s:
            result = s.execute(self._end(job_id, JobState.CANCELLED, None, from_states=(JobState.QUEUED,)))
            if rowcount(result) == 1:
                self._end_events(s, job_id, kinds.JOB_CANCELLED, {"while": "queued"})
                s.commit()
                return JobState.CANCELLED
            s.execute(update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING)
                      .values(cancel_requested=True))
            s.commit()
        job = self.get(job_id)
        return job.state if job else None

    def set_priority(self, job_id: int, priority: int) -> bool:
        """Reorder a waiting job (higher runs first); False when it is no longer intake or queued."""
        with self._sessions() as s:
            result = s.execute(update(Job).values(priority=priority).where(
                Job.id == job_id, Job.state.in_(WAITING_STATES)))
            s.commit()
            return rowcount(result) == 1

    def mark_cancelled(self, job_id: int, owner: str, *, expired_before: datetime | None = None) -> bool:
        """running -> cancelled, once `owner`'s worker stopped the job on request, or recovery found
        that a cancel was requested before its worker died (then, as in `requeue`, `expired_before`)."""
        with self._sessions() as s:
            q = self._end(job_id, JobState.CANCELLED, owner)
            if expired_before is not None:
                q = q.where(Job.lease_expires_at < expired_before)
            result = s.execute(q)
            if rowcount(result) == 1:
                self._end_events(s, job_id, kinds.JOB_CANCELLED, {"while": "running"})
            s.commit()
            return rowcount(result) == 1

    def retry(self, job_id: int, catalog: ModelCatalog | None = None) -> Job:
        """A new queued job with the same inputs and parameters, linked to the failed or cancelled one.

        Idempotent: a job retried before returns its retry (a double click makes one job). With the
        `catalog` of served models, a job whose model is no longer served is refused (it would wait forever).
        """
        with self._sessions() as s:
            old = s.get(Job, job_id)
            if old is None:
                raise JobNotFound(job_id)
            earlier = s.scalars(select(Job).where(Job.retried_from_id == job_id).order_by(Job.id).limit(1)).first()
            if earlier is not None:
                return earlier
            if old.state not in RETRYABLE_STATES:
                raise NotRetryable(f"job {job_id} is {old.state.value}; only failed or cancelled jobs are retried")
            if catalog is not None and old.model is not None and catalog.find(old.model) is None:
                raise ModelNotServed(old.model, catalog.describe())
            job = Job(
                state=JobState.QUEUED, priority=old.priority, idempotency_key=f"retry-of-{old.id}",
                params=old.params, model=old.model, output_stem=old.output_stem, output_subdir=old.output_subdir,
                source_image=old.image_path, source_sidecar=old.sidecar_path, image_path=old.image_path,
                sidecar_path=old.sidecar_path, retried_from_id=old.id,
            )
            s.add(job)
            try:
                s.flush()
            except IntegrityError:  # a concurrent retry of the same job won: its job is the answer
                s.rollback()
                return s.scalars(select(Job).where(Job.idempotency_key == f"retry-of-{job_id}")).one()
            record_event(s, kinds.JOB_QUEUED, job.id, _queued_data(
                job.output_stem, job.image_path, job.sidecar_path, job.priority, job.params, retry_of=old.id))
            s.commit()
            return job

    @staticmethod
    def _end(job_id: int, state: JobState, owner: str | None,
             from_states: tuple[JobState, ...] = (JobState.INTAKE, JobState.QUEUED), **values: object):
        """The UPDATE that ends a job: a running one only by its owner, else one nobody holds."""
        q = update(Job).where(Job.id == job_id)
        if owner is not None:
            q = q.where(Job.state == JobState.RUNNING, Job.lease_owner == owner)
        else:
            q = q.where(Job.state.in_(from_states))
        return q.values(state=state, finished_at=utcnow(), lease_owner=None, lease_expires_at=None, **values)

    def _end_events(self, s: Session, job_id: int, event: str, data: dict) -> None:
        """A finished job's progress events have served their purpose; its ending is recorded."""
        s.execute(delete(Event).where(Event.job_id == job_id, Event.type == kinds.JOB_PROGRESS))
        self._progress_events.pop(job_id, None)
        record_event(s, event, job_id, data)

    # -- recovery -----------------------------------------------------------------------------

    def running(self) -> list[Job]:
        with self._sessions() as s:
            return list(s.scalars(select(Job).where(Job.state == JobState.RUNNING).order_by(Job.id)))

    # -- reading ------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._sessions() as s:
            return s.get(Job, job_id)

    def position(self, job: Job) -> int | None:
        """1 for the job claimed next among its model's jobs, and so on; None unless the job is queued.

        In claim order: the jobs claimable now first (a retry waiting out its back-off comes after
        them), and only jobs of the same model, since a worker serving this one takes no other's.
        """
        if job.state != JobState.QUEUED:
            return None
        with self._sessions() as s:
            ranked = (
                select(Job.id, func.row_number().over(order_by=[
                    case((claimable_at(utcnow()), 0), else_=1), *claim_order()]).label("position"))
                .where(Job.state == JobState.QUEUED, Job.model.is_not_distinct_from(job.model))
                .subquery()
            )
            return s.scalar(select(ranked.c.position).where(ranked.c.id == job.id))

    def counts(self) -> dict[JobState, int]:
        with self._sessions() as s:
            rows = s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        counts = {state: 0 for state in JobState}
        counts.update({state: n for state, n in rows})
        return counts

    def queued_by_model(self) -> dict[str | None, int]:
        """Queued jobs per model name (None: queued before jobs named their model)."""
        with self._sessions() as s:
            rows = s.execute(select(Job.model, func.count()).where(Job.state == JobState.QUEUED)
                             .group_by(Job.model)).all()
        return {model: n for model, n in rows}

    def recent(self, limit: int = 10) -> list[Job]:
        with self._sessions() as s:
            return list(s.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))
