"""The HTML side: login, the queue page and its live fragments, results, one job, and the buttons."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from daemon import __version__
from daemon.db.tables import Job, JobState
from daemon.errors import InputRejected
from daemon.intake.sidecar import PRESETS, Sidecar
from daemon.jobs.eta import eta_seconds
from daemon.jobs.queue import FINISHED_STATES
from daemon.logs import get_logger
from daemon.web import actions, queries
from daemon.web.context import HERE, WebContext, guard, web
from daemon.web.errors import Forbidden, Invalid, WebError, rejected
from daemon.web.queries import JobFilter
from daemon.web.security import SESSION_COOKIE, cross_site
from daemon.web.submit import sidecar_fields, submission_key

log = get_logger("i2vd.web")

MAX_FILES_PER_FORM = 20
MAIN_FIELDS = ("prompt", "preset", "model")  # shown on the form; the rest folded under "Advanced"

login = APIRouter(include_in_schema=False)
router = APIRouter(dependencies=[Depends(guard)], include_in_schema=False)


def make_templates(login_enabled: bool) -> Jinja2Templates:
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(version=__version__, presets=list(PRESETS), states=[s.value for s in JobState],
                                 login_enabled=login_enabled, JobState=JobState)
    templates.env.filters["seconds"] = _duration
    templates.env.filters["when"] = lambda v: "" if v is None else f"{v:%Y-%m-%d %H:%M:%S} UTC"
    return templates


def render_error(request: Request, error: WebError, headers: dict | None = None) -> Response:
    """The HTML error page for a refusal on a page route."""
    return web(request).templates.TemplateResponse(request, "error.html", {"error": error},
                                                   status_code=error.status, headers=headers)


# -- login ----------------------------------------------------------------------------------------

@login.get("/login", response_class=HTMLResponse)
def login_page(request: Request, ctx: WebContext = Depends(web)):
    return ctx.templates.TemplateResponse(request, "login.html", {"failed": False})


@login.post("/login")
async def login_form(request: Request, ctx: WebContext = Depends(web)):
    if cross_site(request):
        raise Forbidden("cross_site_request", "A form on another site tried to log in here.")
    form = await request.form()
    if ctx.gate.open or not ctx.gate.token_matches(str(form.get("token", ""))):
        log.warning("web_login_failed", client=request.client.host if request.client else None)
        return ctx.templates.TemplateResponse(request, "login.html", {"failed": True}, status_code=401)
    response = RedirectResponse("/", 303)
    response.set_cookie(SESSION_COOKIE, ctx.gate.start_session(), max_age=int(ctx.gate.session_seconds),
                        httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
def logout(request: Request, ctx: WebContext = Depends(web)):
    ctx.gate.end_session(request)
    response = RedirectResponse("/login" if not ctx.gate.open else "/", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- pages ----------------------------------------------------------------------------------------

def queue_context(ctx: WebContext) -> dict:
    running = queries.jobs_in(ctx.sessions, (JobState.RUNNING,), 50)
    return {
        "running": running,
        "waiting": queries.waiting_jobs(ctx.sessions),
        "finished": queries.jobs_in(ctx.sessions, FINISHED_STATES, 10),
        "counts": ctx.queue.counts(),
        "workers": queries.workers(ctx.sessions, running, ctx.settings.lease_seconds),
        "eta": eta_seconds,
    }


def form_context() -> dict:
    fields = sidecar_fields()
    return {"main_fields": [f for f in MAIN_FIELDS if f in fields],
            "advanced_fields": [f for f in fields if f not in MAIN_FIELDS],
            "field_info": Sidecar.model_fields, "submission": secrets.token_urlsafe(16)}


def job_context(ctx: WebContext, job: Job) -> dict:
    data = queries.job_json(job, ctx.queue.position(job), detail=True)
    return {"job": job, "data": data, "eta": eta_seconds}


@router.get("/", response_class=HTMLResponse)
def queue_page(request: Request, ctx: WebContext = Depends(web)):
    return ctx.templates.TemplateResponse(request, "queue.html", {**queue_context(ctx), **form_context(),
                                                                   "outcomes": None})


@router.get("/fragments/queue", response_class=HTMLResponse)
def queue_fragment(request: Request, ctx: WebContext = Depends(web)):
    return ctx.templates.TemplateResponse(request, "_live.html", queue_context(ctx))


@router.post("/submit", response_class=HTMLResponse)
async def submit_form(request: Request, ctx: WebContext = Depends(web)):
    form = await request.form(max_files=MAX_FILES_PER_FORM)
    uploads = [f for f in form.getlist("image") if isinstance(f, UploadFile) and f.filename]
    fields = actions.form_fields(form)
    client_key = str(form.get("submission") or secrets.token_urlsafe(16))
    outcomes: list[dict] = []
    if not uploads:
        outcomes.append({"name": "", "job": None,
                         "error": Invalid("missing_image", "Choose or drop at least one picture.")})
    for index, upload in enumerate(uploads):
        try:
            job, _ = await run_in_threadpool(ctx.submitter.submit, fields, upload.filename, upload.file,
                                             submission_key(client_key, index))
            outcomes.append({"name": upload.filename, "job": job, "error": None})
        except InputRejected as rejection:
            outcomes.append({"name": upload.filename, "job": None, "error": rejected(rejection)})
    status = 422 if any(o["error"] for o in outcomes) else 200
    return ctx.templates.TemplateResponse(
        request, "queue.html", {**queue_context(ctx), **form_context(), "outcomes": outcomes, "values": fields},
        status_code=status)


@router.get("/results", response_class=HTMLResponse)
def results_page(request: Request, q: str = "", state: str = "succeeded", model: str = "", page: int = 1,
                 ctx: WebContext = Depends(web)):
    flt = JobFilter(prompt=q.strip()[:200], state=JobState(state) if state in set(JobState) else None,
                    model=model.strip()[:200], page=page)
    listing = queries.list_jobs(ctx.sessions, flt)
    media = {job.id: {k: queries.media_file(job, k) is not None for k in ("poster", "preview")}
             for job in listing.jobs}
    rejected_inputs = queries.rejected_inputs(ctx.sessions) if state in ("failed", "") else []
    return ctx.templates.TemplateResponse(request, "results.html", {
        "listing": listing, "filter": flt, "state": state, "media": media, "rejected": rejected_inputs})


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: actions.JobId, ctx: WebContext = Depends(web)):
    return ctx.templates.TemplateResponse(request, "job.html", job_context(ctx, actions.job(ctx, job_id)))


@router.get("/fragments/jobs/{job_id}", response_class=HTMLResponse)
def job_fragment(request: Request, job_id: actions.JobId, ctx: WebContext = Depends(web)):
    return ctx.templates.TemplateResponse(request, "_job_status.html", job_context(ctx, actions.job(ctx, job_id)))


@router.post("/jobs/{job_id}/cancel")
async def cancel_form(request: Request, job_id: actions.JobId, ctx: WebContext = Depends(web)):
    actions.cancel(ctx, job_id)
    return RedirectResponse(actions.next_path(await request.form(), f"/jobs/{job_id}"), 303)


@router.post("/jobs/{job_id}/retry")
def retry_form(job_id: actions.JobId, ctx: WebContext = Depends(web)):
    return RedirectResponse(f"/jobs/{actions.retry(ctx, job_id).id}", 303)


@router.post("/jobs/{job_id}/priority")
async def priority_form(request: Request, job_id: actions.JobId, ctx: WebContext = Depends(web)):
    form = await request.form()
    actions.set_priority(ctx, job_id, str(form.get("priority", "")))
    return RedirectResponse(actions.next_path(form, f"/jobs/{job_id}"), 303)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
