"""The JSON API under /api: submit, list, one job, the buttons, the files, workers and the event stream."""

from __future__ import annotations

import re
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from daemon.db.tables import JobState
from daemon.events import kinds
from daemon.logs import get_logger
from daemon.web import actions, queries
from daemon.web.context import WebContext, bearer_scheme, guard, web
from daemon.web.errors import Invalid, NotFound
from daemon.web.queries import JobFilter
from daemon.web.stream import EventLogFeed, event_stream
from daemon.web.submit import sidecar_fields, submission_key

log = get_logger("i2vd.web")

MEDIA_KINDS = ("video", "poster", "preview")
EVENT_ID = re.compile(r"[0-9]{1,18}")

router = APIRouter(prefix="/api", dependencies=[Depends(guard), Depends(bearer_scheme)])


@router.post("/jobs", status_code=201, summary="Submit one image with sidecar fields (multipart)",
             responses={200: {"description": "The same Idempotency-Key again: the job it made"},
                        409: {"description": "idempotency_key_reused: the key made a job from another request"},
                        413: {"description": "image_too_large"}, 422: {"description": "An error sidecar"}},
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["image"],
                 "properties": {"image": {"type": "string", "format": "binary"},
                                **{name: {"type": "string"} for name in sidecar_fields()}}}}}}})
async def submit(request: Request, ctx: WebContext = Depends(web)):
    """Multipart form: the picture as `image`, the sidecar fields (`prompt`, `preset`, ...) by name.

    An `Idempotency-Key` header makes a repeated request return the job the first one made.
    """
    form = await request.form(max_files=2)
    uploads = [f for f in form.getlist("image") if isinstance(f, UploadFile)]
    if len(uploads) != 1:
        raise Invalid("missing_image" if not uploads else "too_many_images",
                      "Send exactly one file, as the multipart field 'image'.",
                      "curl -F image=@photo.png -F prompt='waves' .../api/jobs")
    client_key = request.headers.get("idempotency-key") or secrets.token_urlsafe(16)
    job, created = await run_in_threadpool(ctx.submitter.submit, actions.form_fields(form), uploads[0].filename,
                                           uploads[0].file, submission_key(client_key, 0))
    log.info("web_job_submitted", job_id=job.id, created=created)
    return JSONResponse({"id": job.id, "state": job.state.value, "links": {"page": f"/jobs/{job.id}"}},
                        201 if created else 200)


@router.get("/jobs", summary="Jobs, newest first; search by prompt, filter by state and model")
def jobs(q: str = "", state: JobState | None = None, model: str = "", page: int = 1,
         ctx: WebContext = Depends(web)):
    listing = queries.list_jobs(ctx.sessions, JobFilter(prompt=q.strip()[:200], state=state, model=model.strip()[:200],
                                                        page=page))
    return {"jobs": [queries.job_json(j) for j in listing.jobs], "total": listing.total,
            "page": listing.page, "pages": listing.pages}


@router.get("/jobs/{job_id}", summary="One job: parameters, progress, attempts, metadata")
def job(job_id: actions.JobId, ctx: WebContext = Depends(web)):
    found = actions.job(ctx, job_id)
    return queries.job_json(found, ctx.queue.position(found), detail=True)


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued job, or stop a running one at its next step")
def cancel(job_id: actions.JobId, ctx: WebContext = Depends(web)):
    return {"id": job_id, "state": actions.cancel(ctx, job_id).value}


@router.post("/jobs/{job_id}/retry", status_code=201, summary="Queue a failed or cancelled job again")
def retry(job_id: actions.JobId, ctx: WebContext = Depends(web)):
    return {"id": actions.retry(ctx, job_id).id, "retried_from_id": job_id}


@router.post("/jobs/{job_id}/priority", summary="Reorder a waiting job (form or query field priority)")
async def priority(request: Request, job_id: actions.JobId, ctx: WebContext = Depends(web)):
    form = await request.form()
    value = str(form.get("priority", request.query_params.get("priority", "")))
    return {"id": job_id, "priority": actions.set_priority(ctx, job_id, value)}


@router.get("/workers", summary="The daemons: host, GPU, device, alive")
def workers(ctx: WebContext = Depends(web)):
    return {"workers": queries.workers(ctx.sessions, ctx.queue.running(), ctx.settings.lease_seconds)}


def media_route(kind: str):
    def serve(job_id: actions.JobId, download: bool = False, ctx: WebContext = Depends(web)):
        path = queries.media_file(actions.job(ctx, job_id), kind)
        if path is None:
            raise NotFound("not_found", f"Job {job_id} has no {kind}.")
        media_type = "video/mp4" if kind == "video" else queries.MEDIA_TYPES[path.suffix.lower()]
        return FileResponse(path, media_type=media_type,
                            content_disposition_type="attachment" if download else "inline", filename=path.name)
    serve.__name__ = f"api_{kind}"
    return serve


for _kind in MEDIA_KINDS:
    router.add_api_route(f"/jobs/{{job_id}}/{_kind}", media_route(_kind), methods=["GET"],
                         summary=f"The job's {_kind} file", response_class=FileResponse)


@router.get("/events", summary="Server-sent events from the event outbox (job.queued, job.progress, ...)",
            response_class=StreamingResponse)
def events(request: Request, after: Annotated[int | None, Query(ge=0, le=actions.MAX_ID)] = None, types: str = "",
           job_id: Annotated[int | None, Query(ge=1, le=actions.MAX_ID)] = None, ctx: WebContext = Depends(web)):
    """From now on; from an event id with `after` or the Last-Event-ID header (a reconnect misses
    nothing). `types` is a comma-separated list of types or globs (`job.*`); `job_id` follows one job."""
    last_seen = request.headers.get("last-event-id", "").strip()
    if after is None and EVENT_ID.fullmatch(last_seen):
        after = int(last_seen)
    patterns = [t.strip() for t in types.split(",") if t.strip()]
    unknown = [p for p in patterns if not kinds.matching_types([p])]
    if unknown:
        raise Invalid("unknown_event_type", f"No event type matches {', '.join(unknown)[:200]}; the types are "
                      f"{', '.join(kinds.EVENT_TYPES)}.", field_errors=[{"field": "types", "message": "unknown type"}])
    feed = EventLogFeed(ctx.sessions, after, list(kinds.matching_types(patterns)) if patterns else None, job_id)
    return StreamingResponse(event_stream(request, feed, ctx.stopping), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
