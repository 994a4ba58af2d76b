"""The worker registry: every i2vd process, its host, pid and GPU, and when it was last seen alive.

A daemon registers when its model is loaded, renews `last_seen_at` from a thread of its own every
lease_seconds/3, and records `stopped_at` on a clean exit. It is for people (`i2vd status`): a worker
not seen for lease_seconds is reported dead. Whether a job is taken over is decided by its lease
alone (recovery.py), so a stale row here never moves a job.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from daemon.logs import get_logger
from daemon.db.tables import WorkerRecord, utcnow
from daemon.periodic import PeriodicTask
from daemon.process import worker_identity

log = get_logger("i2vd.workers")

SHOWN_FOR = timedelta(days=1)  # a dead worker stays in `i2vd status` this long


@dataclass(frozen=True)
class Identity:
    name: str  # host:pid, the lease owner of its jobs
    host: str
    pid: int
    gpu: str | None


def this_process() -> Identity:
    """Who this process is; the GPU is what CUDA_VISIBLE_DEVICES gives it (the systemd template sets it)."""
    return Identity(worker_identity(), socket.gethostname(), os.getpid(),
                    os.environ.get("CUDA_VISIBLE_DEVICES") or None)


class WorkerRegistry:
    """This process's row in `workers`, kept fresh by a heartbeat thread."""

    def __init__(self, sessions: sessionmaker[Session], identity: Identity, lease_seconds: float) -> None:
        self._sessions = sessions
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.worker_id: int | None = None
        # Only `i2vd status` reads this row, so a long outage is logged but never stops the beat.
        self._task = PeriodicTask("worker-registry", self._beat, lease_seconds / 3, escalate_after=lease_seconds)

    def register(self, device: str, models: list[str] | None = None) -> int:
        me = self.identity
        with self._sessions() as s:
            record = WorkerRecord(name=me.name, host=me.host, pid=me.pid, gpu=me.gpu, device=device,
                                  models=models)
            s.add(record)
            s.commit()
            self.worker_id = record.id
            if s.get_bind().dialect.name != "sqlite":  # SQLite shares this host's clock
                self._check_clock(s)
        log.info("worker_registered", worker_id=self.worker_id, worker=me.name, gpu=me.gpu, device=device,
                 models=models)
        return self.worker_id

    def _check_clock(self, s: Session) -> None:
        """Other hosts judge this worker's leases by their own clocks: warn when ours is off."""
        before = utcnow()
        db_now = s.scalar(select(func.now()))
        after = utcnow()
        if db_now is None:  # no server clock to compare with
            return
        skew = (before + (after - before) / 2 - db_now).total_seconds()
        if abs(skew) > self.lease_seconds / 10:
            log.warning("clock_skew", seconds=round(skew, 3),
                        detail="this host's clock differs from the database server's; keep hosts in "
                               "sync (NTP), or other hosts may take over live jobs or wait too long")

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        """Stop beating and record the clean exit."""
        self._task.stop()
        try:
            self._update(last_seen_at=utcnow(), stopped_at=utcnow())
        except SQLAlchemyError as exc:  # the row then ages into "dead" in `i2vd status`: harmless
            log.warning("worker_stop_unrecorded", worker_id=self.worker_id, error=str(exc).splitlines()[0])

    def _beat(self) -> None:
        self._update(last_seen_at=utcnow())

    def _update(self, **values: object) -> None:
        with self._sessions() as s:
            s.execute(update(WorkerRecord).where(WorkerRecord.id == self.worker_id).values(**values))
            s.commit()


# -- reading (i2vd status) ----------------------------------------------------------------------


def recent_workers(sessions: sessionmaker[Session], now: datetime | None = None) -> list[WorkerRecord]:
    """Workers that have not stopped cleanly and were seen within SHOWN_FOR, by host and pid."""
    since = (now or utcnow()) - SHOWN_FOR
    with sessions() as s:
        return list(s.scalars(
            select(WorkerRecord)
            .where(WorkerRecord.stopped_at.is_(None), WorkerRecord.last_seen_at >= since)
            .order_by(WorkerRecord.host, WorkerRecord.pid, WorkerRecord.id)
        ))


def is_alive(worker: WorkerRecord, now: datetime, lease_seconds: float) -> bool:
    return now - worker.last_seen_at <= timedelta(seconds=lease_seconds)
