"""The page's read model: jobs listed, searched, filtered and paginated; one job as plain values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import column, func, select, table, text
from sqlalchemy.orm import Session, sessionmaker

from daemon.events import kinds
from daemon.db.tables import Event, Job, JobState, utcnow
from daemon.jobs.eta import eta_seconds
from daemon.jobs.queue import claim_order
from daemon.worker.registry import is_alive, recent_workers

PAGE_SIZE = 24
TRIGRAM = 3  # the shortest search the trigram index answers; FTS5 trigram matching is case-insensitive
WAITING = (JobState.INTAKE, JobState.QUEUED)
MAX_METADATA_BYTES = 1024 * 1024
# Media a job's metadata may name beside its video, and how each is served.
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".png": "image/png",
               ".gif": "image/gif"}


@dataclass(frozen=True)
class JobFilter:
    """What a list shows: a prompt substring, one state, one model; page numbers start at 1."""

    prompt: str = ""
    state: JobState | None = None
    model: str = ""
    page: int = 1


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    total: int
    page: int
    pages: int


def _has_prompt_index(sessions: sessionmaker[Session]) -> bool:
    """SQLite databases have jobs_fts, the trigram index of prompts (migration 0007). PostgreSQL's
    (0008, where pg_trgm could be added) indexes the ILIKE expression itself: nothing to choose there."""
    return sessions.kw["bind"].dialect.name == "sqlite"


def list_jobs(sessions: sessionmaker[Session], flt: JobFilter, page_size: int = PAGE_SIZE) -> JobPage:
    """Newest first; with a state, an index walk over (state, id) (migration 0006); a prompt of three
    characters or more is found in a trigram index (0007 on SQLite, 0008 on PostgreSQL), a shorter one
    by a scan."""
    query, order = select(Job), Job.id.desc()
    count = None
    if flt.state is not None:
        query = query.where(Job.state == flt.state)
    if flt.model:
        query = query.where(Job.model == flt.model.replace("\x00", ""))
    prompt = flt.prompt.replace("\x00", "")
    if len(prompt) >= TRIGRAM and _has_prompt_index(sessions):
        fts = table("jobs_fts", column("rowid"))
        match = text("jobs_fts MATCH :phrase").bindparams(phrase='"' + prompt.replace('"', '""') + '"')
        if flt.state is None and not flt.model:
            # The prompt alone: count and page straight from the index, in its rowid (= job id) order.
            count = select(func.count()).select_from(fts).where(match)
            query, order = query.join(fts, Job.id == fts.c.rowid).where(match), fts.c.rowid.desc()
        else:  # with filters, the matching ids as a set beside the (state, id) or (model, id) walk
            query = query.where(Job.id.in_(select(fts.c.rowid).where(match)))
    elif prompt:
        pattern = "%" + prompt.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(Job.params["prompt"].as_string().ilike(pattern, escape="\\"))
    with sessions() as s:
        total = s.scalar(count if count is not None else select(func.count()).select_from(query.subquery())) or 0
        pages = max(1, -(-total // page_size))
        page = min(max(flt.page, 1), pages)
        jobs = list(s.scalars(query.order_by(order).offset((page - 1) * page_size).limit(page_size)))
    return JobPage(jobs, total, page, pages)


def waiting_jobs(sessions: sessionmaker[Session], limit: int = 50) -> list[Job]:
    """Queued jobs in the order workers claim them, so a job's queue position is its place here."""
    with sessions() as s:
        return list(s.scalars(select(Job).where(Job.state == JobState.QUEUED)
                              .order_by(*claim_order()).limit(limit)))


def jobs_in(sessions: sessionmaker[Session], states: tuple[JobState, ...], limit: int) -> list[Job]:
    with sessions() as s:
        return list(s.scalars(select(Job).where(Job.state.in_(states)).order_by(Job.id.desc()).limit(limit)))


def workers(sessions: sessionmaker[Session], running: list[Job], lease_seconds: float) -> list[dict]:
    now = utcnow()
    jobs = {job.lease_owner: job.id for job in running}
    return [{"id": w.id, "name": w.name, "host": w.host, "pid": w.pid, "gpu": w.gpu, "device": w.device,
             "models": w.models or [], "alive": is_alive(w, now, lease_seconds),
             "last_seen_at": w.last_seen_at.isoformat(),
             "job_id": jobs.get(w.name)}
            for w in recent_workers(sessions, now)]




def read_metadata(job: Job) -> dict | None:
    """The metadata JSON the worker wrote beside the video, or None when there is none (yet)."""
    if job.state != JobState.SUCCEEDED or not job.metadata_path:
        return None
    path = Path(job.metadata_path)
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read(MAX_METADATA_BYTES))
    except (OSError, ValueError):
        return None


def media_file(job: Job, kind: str, metadata: dict | None = None) -> Path | None:
    """The job's video, or the poster/preview its metadata's `extras` names beside it; never a path
    from a URL. Only the file name of an entry counts, looked up in the video's own folder.
    """
    if job.state != JobState.SUCCEEDED or not job.output_path:
        return None
    video = Path(job.output_path)
    if kind == "video":
        path = video
    else:
        metadata = metadata if metadata is not None else read_metadata(job) or {}
        extras = metadata.get("extras")  # {"poster": "NAME.jpg", "preview": "NAME.preview.webp", ...}
        name = extras.get(kind) if isinstance(extras, dict) else None
        if not isinstance(name, str) or not name:
            return None
        path = video.parent / Path(name).name
        if path.suffix.lower() not in MEDIA_TYPES:
            return None
    return path if path.is_file() and not path.is_symlink() else None


def job_json(job: Job, position: int | None = None, *, detail: bool = False) -> dict:
    """A job as the API returns it."""
    links: dict[str, str] = {"page": f"/jobs/{job.id}"}
    data: dict[str, Any] = {
        "id": job.id,
        "state": job.state.value,
        "priority": job.priority,
        "name": job.output_stem,
        "prompt": job.params.get("prompt"),
        "model": job.model,
        "params": job.params,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "progress": {"phase": job.phase, "step": job.progress_step, "total": job.progress_total,
                     "eta_seconds": eta_seconds(job)} if job.state == JobState.RUNNING else None,
        "queue_position": position,
        "retry_after": _iso(job.run_after) if job.state == JobState.QUEUED else None,
        "cancel_requested": job.cancel_requested,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "retried_from_id": job.retried_from_id,
        "links": links,
    }
    if job.state == JobState.SUCCEEDED and job.output_path:
        links["video"] = f"/api/jobs/{job.id}/video"
    if detail:
        metadata = read_metadata(job)
        for kind in ("poster", "preview"):
            if media_file(job, kind, metadata) is not None:
                links[kind] = f"/api/jobs/{job.id}/{kind}"
        data["metadata"] = metadata
        data["attempts"] = [
            {"number": a.number, "worker": a.worker, "rung": a.rung, "params": a.params, "outcome": a.outcome,
             "gpu": a.worker_record.gpu if a.worker_record else None,
             "host": a.worker_record.host if a.worker_record else None,
             "error_type": a.error_type, "error_message": a.error_message,
             "started_at": _iso(a.started_at), "finished_at": _iso(a.finished_at),
             "peak_gpu_memory_bytes": a.peak_gpu_memory_bytes}
            for a in job.attempts
        ]
    return data


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def rejected_inputs(sessions: sessionmaker[Session], limit: int = 20) -> list[dict]:
    """The newest input.rejected events: dropped pairs moved to failed/ and refused uploads."""
    with sessions() as s:
        events = s.scalars(select(Event).where(Event.type == kinds.INPUT_REJECTED)
                           .order_by(Event.id.desc()).limit(limit)).all()
    return [{"files": ", ".join(e.payload.get("files") or []), "folder": e.payload.get("folder") or "",
             "code": e.payload.get("code"), "error": e.payload.get("message"), "hint": e.payload.get("hint"),
             "time": e.created_at} for e in events]


def average_duration(sessions: sessionmaker[Session], last: int = 20) -> float | None:
    """Mean seconds from queued to finished of the newest succeeded jobs (Gradio's average_duration)."""
    with sessions() as s:
        rows = s.execute(select(Job.created_at, Job.finished_at).where(Job.state == JobState.SUCCEEDED)
                         .order_by(Job.id.desc()).limit(last)).all()
    spans = [(done - made).total_seconds() for made, done in rows if made and done]
    return sum(spans) / len(spans) if spans else None
