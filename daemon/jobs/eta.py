"""A running job's time left, as `i2vd status` and the web page show it."""

from __future__ import annotations

from datetime import datetime

from daemon.db.tables import Job, JobState, utcnow


def eta_seconds(job: Job, now: datetime | None = None) -> float | None:
    """Time left, measured from the job's start (not its queueing) and the steps done so far."""
    if job.state != JobState.RUNNING or not job.progress_step or not job.progress_total or not job.started_at:
        return None
    elapsed = ((now or utcnow()) - job.started_at).total_seconds()
    return round(elapsed / job.progress_step * (job.progress_total - job.progress_step), 1)
