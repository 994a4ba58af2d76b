"""Job queue data access: every read and state change of jobs and attempts goes through here."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from daemon.models import Attempt, Job, JobState, utcnow


def worker_identity() -> str:
    """host:pid of this process, recorded as lease owner and on attempts."""
    return f"{socket.gethostname()}:{os.getpid()}"


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

    # -- intake -------------------------------------------------------------------------------

    def create(self, new: NewJob) -> tuple[Job, bool]:
        """Insert a job in state intake; (existing job, False) when its key is already known."""
        with self._sessions() as s:
            job = Job(state=JobState.INTAKE, **new.__dict__)
            s.add(job)
            try:
                s.commit()
                return job, True
            except IntegrityError:
                s.rollback()
        existing = self.by_key(new.idempotency_key)
        if existing is None:  # the conflicting row vanished again; let the caller retry later
            raise RuntimeError(f"job with key {new.idempotency_key} conflicted but is gone")
        return existing, False

    def by_key(self, key: str) -> Job | None:
        with self._sessions() as s:
            return s.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()

    def mark_queued(self, job_id: int) -> bool:
        """intake -> queued; False when the job had already left intake."""
        return self._transition(job_id, (JobState.INTAKE,), state=JobState.QUEUED)

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
            candidates = select(Job.id).where(
                Job.state == JobState.QUEUED, or_(Job.run_after.is_(None), Job.run_after <= now))
            order = [Job.priority.desc(), Job.id]
            if models is not None:
                model = func.coalesce(Job.model, models[0])
                candidates = candidates.where(model.in_(models))
                order.insert(1, case((model.in_(loaded), 0), else_=1))
            next_id = (
                candidates
                .order_by(*order)
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
            return result.rowcount == 1

    def progress(self, job_id: int, phase: str, step: int | None = None, total: int | None = None) -> bool:
        """Record progress; returns whether a cancel was requested meanwhile."""
        with self._sessions() as s:
            cancel = s.scalar(update(Job).where(Job.id == job_id).values(
                phase=phase, progress_step=step, progress_total=total).returning(Job.cancel_requested))
            s.commit()
            return bool(cancel)

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
            return result.rowcount == 1

    def succeed(self, job_id: int) -> bool:
        return self._finish(job_id, JobState.SUCCEEDED)

    def fail(self, job_id: int, code: str, message: str) -> bool:
        return self._finish(job_id, JobState.FAILED, error_code=code, error_message=message)

    def requeue(self, job_id: int, owner: str | None = None, delay_seconds: float = 0, *,
                expired_before: datetime | None = None) -> bool:
        """running -> queued (shutdown, lost worker, retry after `delay_seconds`); only `owner`'s if given.

        With `expired_before`, only while the lease is still expired: a slow owner that renewed it
        in the meantime keeps its job.
        """
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
            s.commit()
            return result.rowcount == 1

    def cancel(self, job_id: int) -> JobState | None:
        """queued -> cancelled at once; running -> asked to stop at its next step. None: no such job."""
        if self._finish(job_id, JobState.CANCELLED, from_states=(JobState.QUEUED,)):
            return JobState.CANCELLED
        self._transition(job_id, (JobState.RUNNING,), cancel_requested=True)
        job = self.get(job_id)
        return job.state if job else None

    def mark_cancelled(self, job_id: int) -> bool:
        return self._finish(job_id, JobState.CANCELLED, from_states=(JobState.RUNNING,))

    def retry(self, job_id: int) -> Job:
        """A new queued job with the same inputs and parameters, linked to the failed or cancelled one."""
        with self._sessions() as s:
            old = s.get(Job, job_id)
            if old is None:
                raise LookupError(f"no job {job_id}")
            if old.state not in (JobState.FAILED, JobState.CANCELLED):
                raise ValueError(f"job {job_id} is {old.state.value}; only failed or cancelled jobs are retried")
            job = Job(
                state=JobState.QUEUED, priority=old.priority, idempotency_key=f"retry-{uuid.uuid4().hex}",
                params=old.params, model=old.model, output_stem=old.output_stem, output_subdir=old.output_subdir,
                source_image=old.image_path, source_sidecar=old.sidecar_path, image_path=old.image_path,
                sidecar_path=old.sidecar_path, retried_from_id=old.id,
            )
            s.add(job)
            s.commit()
            return job

    def _finish(self, job_id: int, state: JobState, from_states: tuple[JobState, ...] | None = None,
                **values: object) -> bool:
        return self._transition(
            job_id, from_states or (JobState.RUNNING, JobState.QUEUED, JobState.INTAKE), state=state,
            finished_at=utcnow(), lease_owner=None, lease_expires_at=None, **values,
        )

    def _transition(self, job_id: int, from_states: tuple[JobState, ...], **values: object) -> bool:
        with self._sessions() as s:
            result = s.execute(
                update(Job).where(Job.id == job_id, Job.state.in_(from_states)).values(**values)
            )
            s.commit()
            return result.rowcount == 1

    # -- recovery -----------------------------------------------------------------------------

    def running(self) -> list[Job]:
        with self._sessions() as s:
            return list(s.scalars(select(Job).where(Job.state == JobState.RUNNING).order_by(Job.id)))

    # -- reading ------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._sessions() as s:
            return s.get(Job, job_id)

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
