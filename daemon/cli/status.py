"""The text of `i2vd status`: queue counts, running jobs, workers, and the latest jobs."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from daemon.db.tables import Job, JobState, WorkerRecord, utcnow
from daemon.intake.inbox import lone_halves
from daemon.jobs.eta import eta_seconds
from daemon.jobs.queue import JobQueue
from daemon.settings import Settings
from daemon.worker.registry import is_alive, recent_workers


def status_text(queue: JobQueue, sessions: sessionmaker[Session], settings: Settings, limit: int) -> str:
    """Counts, lone halves in the inbox, running jobs with progress and lease, unserved models, workers,
    the latest jobs."""
    lease_seconds = settings.lease_seconds
    counts = queue.counts()
    lines = ["  ".join(f"{state.value}: {counts[state]}" for state in JobState)]
    # Counted on disk, not asked of the daemons: every daemon sees the same inbox, an intake-only
    # one included, and the files are the truth (README: status).
    if waiting := lone_halves(settings):
        lines.append(f"waiting for its other half: {waiting}")
    running, now = queue.running(), utcnow()
    for job in running:
        lines.append(f"running #{job.id} {job.output_stem}: {progress_line(job)}, on {job.lease_owner}"
                     f"{lease_note(job, now)}")
    known = recent_workers(sessions, now)
    lines += unserved_lines(queue.queued_by_model(), known, now, lease_seconds)
    workers = worker_lines(known, running, now, lease_seconds)
    if workers:
        lines += ["", *workers]
    jobs = queue.recent(limit)
    if jobs:
        lines.append(f"\n{'ID':>5}  {'STATE':<10} {'NAME':<28} {'CREATED (UTC)':<20} RESULT")
    for job in jobs:
        lines.append(f"{job.id:>5}  {job.state.value:<10} {job.output_stem[:28]:<28} "
                     f"{job.created_at:%Y-%m-%d %H:%M:%S}  {result(job)[:80]}")
    return "\n".join(lines)


def result(job: Job) -> str:
    """A job's outcome in a few words: its video, when it retries, or its error."""
    if job.state == JobState.SUCCEEDED and job.output_path:
        return Path(job.output_path).name
    if job.run_after and job.state == JobState.QUEUED:
        return f"retry after {job.run_after:%H:%M:%S}"
    return job.error_message or ""


def progress_line(job: Job, width: int = 30) -> str:
    """A progress bar with an ETA measured from the job's start (not its queueing)."""
    if not job.progress_total:
        return job.phase or "starting"
    step, total = job.progress_step or 0, job.progress_total
    filled = int(width * step / total)
    bar = "#" * filled + "-" * (width - filled)
    left = eta_seconds(job)
    eta = f" ETA {left:.0f}s" if left is not None else ""
    return f"{job.phase} [{bar}] {step}/{total}{eta}"


def worker_lines(workers: list[WorkerRecord], running: list[Job], now: datetime,
                 lease_seconds: float) -> list[str]:
    """The workers table of `i2vd status`."""
    if not workers:
        return []
    jobs = {job.lease_owner: job for job in running}
    width = max(len("HOST"), *(len(w.host) for w in workers))
    lines = [f"workers (dead = not seen for {lease_seconds:g} s):",
             f"  {'HOST':<{width}} {'PID':>7}  {'GPU':<6} {'DEVICE':<8} {'STATE':<6} {'LAST SEEN':<10} "
             f"{'JOB':<7} MODELS"]
    for w in workers:
        job = jobs.get(w.name)
        state = "alive" if is_alive(w, now, lease_seconds) else "dead"
        lines.append(f"  {w.host:<{width}} {w.pid:>7}  {w.gpu or '-':<6} {w.device:<8} {state:<6} "
                     f"{ago(now - w.last_seen_at):<10} {f'#{job.id}' if job else '':<7} "
                     f"{', '.join(w.models) if w.models else '-'}".rstrip())
    return lines


def unserved_lines(queued_by_model: dict[str | None, int], workers: list[WorkerRecord], now: datetime,
                   lease_seconds: float) -> list[str]:
    """Why queued jobs wait: a line per model that no live worker serves (its jobs stay queued)."""
    alive = [w for w in workers if is_alive(w, now, lease_seconds)]
    if any(w.models is None for w in alive):  # a worker from before models: it takes any job
        return []
    served = sorted({name for w in alive for name in w.models or ()})
    serving = f"live workers serve: {', '.join(served)}" if served else "no worker is alive"
    return [f"{count} queued for model {model}: no live worker serves it ({serving}); start an i2vd "
            f"whose models setting names {model}, or cancel these jobs"
            for model, count in sorted(queued_by_model.items(), key=lambda item: str(item[0]))
            if model is not None and model not in served]


def lease_note(job: Job, now: datetime) -> str:
    """Why a running job may be stuck: its lease expired and no worker has taken it over yet."""
    if job.lease_expires_at is None or job.lease_expires_at >= now:
        return ""
    return (f" (lease expired {ago(now - job.lease_expires_at)}; "
            "the next recovery pass of any daemon requeues it)")


def ago(delta: timedelta) -> str:
    """`delta` as seconds under two minutes, minutes under two hours, else hours."""
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"
