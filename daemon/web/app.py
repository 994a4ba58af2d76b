"""The web application: pages, the JSON API and the event stream, over the daemons' database."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response,
                               StreamingResponse)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from daemon import __version__
from daemon.errors import InputRejected
from daemon.logs import get_logger
from daemon.db.tables import Job, JobState
from daemon.jobs.queue import JobQueue
from daemon.settings import Settings, split_host_port
from daemon.intake.sidecar import PRESETS, Sidecar
from daemon.web import queries
from daemon.web.queries import JobFilter
from daemon.web.security import (SESSION_COOKIE, UNSAFE_METHODS, BodyLimit, Gate, SecurityHeaders, cross_site,
                                 host_allowed)
from daemon.web.stream import EventLogFeed, event_stream
from daemon.web.submit import WebSubmitter, sidecar_fields, submission_key

log = get_logger("i2vd.web")

HERE = Path(__file__).resolve().parent
MAX_FILES_PER_FORM = 20
RESERVED_FORM_FIELDS = ("image", "submission", "next")
MAIN_FIELDS = ("prompt", "preset", "model")  # shown on the form; the rest folded under "Advanced"
MEDIA_KINDS = ("video", "poster", "preview")
CANCELLABLE = (JobState.QUEUED, JobState.RUNNING)


class WebError(Exception):
    """A refusal the API answers as JSON with an error sidecar's keys, and a page as an error page."""

    def __init__(self, status: int, code: str, message: str, hint: str | None = None,
                 field_errors: list[dict] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.hint, self.field_errors = status, code, hint, field_errors or []

    @classmethod
    def rejected(cls, rejection: InputRejected) -> WebError:
        status = 413 if rejection.code == "image_too_large" else 422
        return cls(status, rejection.code, str(rejection), rejection.hint, rejection.field_errors)

    def body(self) -> dict:
        return {"code": self.code, "error": str(self), "hint": self.hint, "field_errors": self.field_errors}


class LoginRequired(Exception):
    """A page asked for without the login cookie."""


def create_app(settings: Settings, sessions: sessionmaker[Session],
               stopping: threading.Event | None = None) -> FastAPI:
    """The application for `settings`' database and folders; `stopping` ends the event streams."""
    stopping = stopping or threading.Event()
    queue = JobQueue(sessions)
    submitter = WebSubmitter(settings, queue)
    gate = Gate(settings.web_token.get_secret_value() if settings.web_token else None)
    bound_host = split_host_port(settings.web_address)[0]
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(version=__version__, presets=list(PRESETS), states=[s.value for s in JobState],
                                 login_enabled=not gate.open, JobState=JobState)
    templates.env.filters["seconds"] = _duration
    templates.env.filters["when"] = lambda v: "" if v is None else f"{v:%Y-%m-%d %H:%M:%S} UTC"

    def guard(request: Request) -> None:
        """Every route but the login page and static files: host, CSRF, then the token."""
        if not host_allowed(request, bound_host):
            raise WebError(400, "bad_host", "This server answers to localhost names only.",
                           "Open it as http://127.0.0.1:PORT/ or set web_address and web_token.")
        if request.method in UNSAFE_METHODS and not gate.bearer(request) and cross_site(request):
            raise WebError(403, "cross_site_request", "A form on another site tried to change this queue.",
                           "Use the i2vd page itself, or send the token as a bearer header from scripts.")
        if not gate.allowed(request):
            if request.url.path.startswith("/api/"):
                raise WebError(401, "unauthorized", "This API needs the web token.",
                               "Send the header 'Authorization: Bearer <web_token>'.")
            raise LoginRequired()

    app = FastAPI(title="i2vd", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="The i2vd queue: submit pictures, watch jobs, fetch videos.")
    # One request carries at most MAX_FILES_PER_FORM images of the intake's size limit.
    app.add_middleware(BodyLimit, limit=settings.max_image_bytes * MAX_FILES_PER_FORM + 1024 * 1024)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(WebError)
    async def _web_error(request: Request, exc: WebError) -> Response:
        headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
        if request.url.path.startswith("/api/"):
            return JSONResponse(exc.body(), exc.status, headers=headers)
        return templates.TemplateResponse(request, "error.html", {"error": exc}, status_code=exc.status,
                                          headers=headers)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _exc: LoginRequired) -> Response:
        return RedirectResponse("/login", 303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return await _web_error(request, WebError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"field": ".".join(str(p) for p in e["loc"][1:]) or "(request)", "message": e["msg"]}
                  for e in exc.errors()]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return await _web_error(request, WebError(422, "invalid_request", f"The request is invalid: {summary}.",
                                                  field_errors=errors))

    # -- login ----------------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request):
        return templates.TemplateResponse(request, "login.html", {"failed": False})

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        if cross_site(request):
            raise WebError(403, "cross_site_request", "A form on another site tried to log in here.")
        form = await request.form()
        if gate.open or not gate.token_matches(str(form.get("token", ""))):
            log.warning("web_login_failed", client=request.client.host if request.client else None)
            return templates.TemplateResponse(request, "login.html", {"failed": True}, status_code=401)
        response = RedirectResponse("/", 303)
        response.set_cookie(SESSION_COOKIE, gate.session_value(), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response

    @app.post("/logout", include_in_schema=False, dependencies=[Depends(guard)])
    def logout():
        response = RedirectResponse("/login" if not gate.open else "/", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    pages = APIRouter(dependencies=[Depends(guard)], include_in_schema=False)
    api = APIRouter(prefix="/api", dependencies=[Depends(guard)])

    # -- pages ----------------------------------------------------------------------------------

    def queue_context() -> dict:
        running = queries.jobs_in(sessions, (JobState.RUNNING,), 50)
        return {
            "running": running,
            "waiting": queries.waiting_jobs(sessions),
            "finished": queries.jobs_in(sessions, queries.FINISHED, 10),
            "counts": queue.counts(),
            "workers": queries.workers(sessions, running, settings.lease_seconds),
            "eta": queries.eta_seconds,
        }

    def form_context() -> dict:
        fields = sidecar_fields()
        return {"main_fields": [f for f in MAIN_FIELDS if f in fields],
                "advanced_fields": [f for f in fields if f not in MAIN_FIELDS],
                "field_info": Sidecar.model_fields, "submission": secrets.token_urlsafe(16)}

    @pages.get("/", response_class=HTMLResponse)
    def queue_page(request: Request):
        return templates.TemplateResponse(request, "queue.html", {**queue_context(), **form_context(),
                                                                   "outcomes": None})

    @pages.get("/fragments/queue", response_class=HTMLResponse)
    def queue_fragment(request: Request):
        return templates.TemplateResponse(request, "_live.html", queue_context())

    @pages.post("/submit", response_class=HTMLResponse)
    async def submit_form(request: Request):
        form = await request.form(max_files=MAX_FILES_PER_FORM)
        uploads = [f for f in form.getlist("image") if isinstance(f, UploadFile) and f.filename]
        fields = _fields(form)
        client_key = str(form.get("submission") or secrets.token_urlsafe(16))
        outcomes = []
        if not uploads:
            outcomes.append({"name": "", "job": None, "error": WebError(
                422, "missing_image", "Choose or drop at least one picture.")})
        for index, upload in enumerate(uploads):
            try:
                job, _ = await run_in_threadpool(submitter.submit, fields, upload.filename, upload.file,
                                                 submission_key(client_key, index))
                outcomes.append({"name": upload.filename, "job": job, "error": None})
            except InputRejected as rejection:
                outcomes.append({"name": upload.filename, "job": None, "error": WebError.rejected(rejection)})
        status = 422 if any(o["error"] for o in outcomes) else 200
        return templates.TemplateResponse(
            request, "queue.html", {**queue_context(), **form_context(), "outcomes": outcomes,
                                    "values": fields}, status_code=status)

    @pages.get("/results", response_class=HTMLResponse)
    def results_page(request: Request, q: str = "", state: str = "succeeded", model: str = "", page: int = 1):
        flt = JobFilter(prompt=q.strip()[:200], state=JobState(state) if state in set(JobState) else None,
                        model=model.strip()[:200], page=page)
        listing = queries.list_jobs(sessions, flt)
        media = {job.id: {k: queries.media_file(job, k) is not None for k in ("poster", "preview")}
                 for job in listing.jobs}
        rejected = queries.rejected_inputs(sessions) if state in ("failed", "") else []
        return templates.TemplateResponse(request, "results.html", {
            "listing": listing, "filter": flt, "state": state, "media": media, "rejected": rejected})

    @pages.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: int):
        job = _job(job_id)
        return templates.TemplateResponse(request, "job.html", job_context(job))

    @pages.get("/fragments/jobs/{job_id}", response_class=HTMLResponse)
    def job_fragment(request: Request, job_id: int):
        return templates.TemplateResponse(request, "_job_status.html", job_context(_job(job_id)))

    def job_context(job: Job) -> dict:
        data = queries.job_json(job, queue.position(job), detail=True)
        return {"job": job, "data": data, "eta": queries.eta_seconds}

    @pages.post("/jobs/{job_id}/cancel")
    async def cancel_form(request: Request, job_id: int):
        _cancel(job_id)
        return RedirectResponse(_next(await request.form(), f"/jobs/{job_id}"), 303)

    @pages.post("/jobs/{job_id}/retry")
    async def retry_form(request: Request, job_id: int):
        job = _retry(job_id)
        return RedirectResponse(f"/jobs/{job.id}", 303)

    @pages.post("/jobs/{job_id}/priority")
    async def priority_form(request: Request, job_id: int):
        form = await request.form()
        _set_priority(job_id, str(form.get("priority", "")))
        return RedirectResponse(_next(form, f"/jobs/{job_id}"), 303)

    # -- API ------------------------------------------------------------------------------------

    @api.post("/jobs", status_code=201, summary="Submit one image with sidecar fields (multipart)",
              responses={200: {"description": "The same Idempotency-Key again: the job it made"},
                         413: {"description": "image_too_large"}, 422: {"description": "An error sidecar"}})
    async def api_submit(request: Request):
        """Multipart form: the picture as `image`, the sidecar fields (`prompt`, `preset`, ...) by name.

        An `Idempotency-Key` header makes a repeated request return the job the first one made.
        """
        form = await request.form(max_files=2)
        uploads = [f for f in form.getlist("image") if isinstance(f, UploadFile)]
        if len(uploads) != 1:
            raise WebError(422, "missing_image" if not uploads else "too_many_images",
                           "Send exactly one file, as the multipart field 'image'.",
                           "curl -F image=@photo.png -F prompt='waves' .../api/jobs")
        client_key = request.headers.get("idempotency-key") or secrets.token_urlsafe(16)
        try:
            job, created = await run_in_threadpool(submitter.submit, _fields(form), uploads[0].filename,
                                                   uploads[0].file, submission_key(client_key, 0))
        except InputRejected as rejection:
            raise WebError.rejected(rejection) from None
        log.info("web_job_submitted", job_id=job.id, created=created)
        return JSONResponse({"id": job.id, "state": job.state.value, "links": {"page": f"/jobs/{job.id}"}},
                            201 if created else 200)

    @api.get("/jobs", summary="Jobs, newest first; search by prompt, filter by state and model")
    def api_jobs(q: str = "", state: JobState | None = None, model: str = "", page: int = 1):
        listing = queries.list_jobs(sessions, JobFilter(prompt=q.strip(), state=state, model=model.strip(),
                                                        page=page))
        return {"jobs": [queries.job_json(j) for j in listing.jobs], "total": listing.total,
                "page": listing.page, "pages": listing.pages}

    @api.get("/jobs/{job_id}", summary="One job: parameters, progress, attempts, metadata")
    def api_job(job_id: int):
        job = _job(job_id)
        return queries.job_json(job, queue.position(job), detail=True)

    @api.post("/jobs/{job_id}/cancel", summary="Cancel a queued job, or stop a running one at its next step")
    def api_cancel(job_id: int):
        return {"id": job_id, "state": _cancel(job_id).value}

    @api.post("/jobs/{job_id}/retry", status_code=201, summary="Queue a failed or cancelled job again")
    def api_retry(job_id: int):
        return {"id": _retry(job_id).id, "retried_from_id": job_id}

    @api.post("/jobs/{job_id}/priority", summary="Reorder a waiting job (form or query field priority)")
    async def api_priority(request: Request, job_id: int):
        form = await request.form()
        value = str(form.get("priority", request.query_params.get("priority", "")))
        _set_priority(job_id, value)
        return {"id": job_id, "priority": int(value)}

    @api.get("/workers", summary="The daemons: host, GPU, device, alive")
    def api_workers():
        return {"workers": queries.workers(sessions, queue.running(), settings.lease_seconds)}

    def media_route(kind: str):
        def serve(job_id: int, download: bool = False):
            path = queries.media_file(_job(job_id), kind)
            if path is None:
                raise WebError(404, "not_found", f"Job {job_id} has no {kind}.")
            media_type = "video/mp4" if kind == "video" else queries.MEDIA_TYPES[path.suffix.lower()]
            return FileResponse(path, media_type=media_type,
                                content_disposition_type="attachment" if download else "inline",
                                filename=path.name)
        serve.__name__ = f"api_{kind}"
        return serve

    for kind in MEDIA_KINDS:
        api.add_api_route(f"/jobs/{{job_id}}/{kind}", media_route(kind), methods=["GET"],
                          summary=f"The job's {kind} file", response_class=FileResponse)

    @api.get("/events", summary="Server-sent events from the event outbox (job.queued, job.progress, ...)",
             response_class=StreamingResponse)
    def api_events(request: Request, after: int | None = None, types: str = "", job_id: int | None = None):
        """From now on; from an event id with `after` or the Last-Event-ID header (a reconnect misses
        nothing). `types` is a comma-separated list; `job_id` follows one job."""
        last_seen = request.headers.get("last-event-id", "")
        if after is None and last_seen.isdigit():
            after = int(last_seen)
        wanted = [t.strip() for t in types.split(",") if t.strip()] or None
        feed = EventLogFeed(sessions, after, wanted, job_id)
        return StreamingResponse(event_stream(request, feed, stopping), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    # -- actions shared by the page and the API -----------------------------------------------

    def _job(job_id: int) -> Job:
        job = queue.get(job_id)
        if job is None:
            raise WebError(404, "not_found", f"There is no job {job_id}.")
        return job

    def _cancel(job_id: int) -> JobState:
        job = _job(job_id)
        state = queue.cancel(job_id) if job.state in CANCELLABLE else job.state
        if state not in (JobState.CANCELLED, JobState.RUNNING) or job.state not in CANCELLABLE:
            raise WebError(409, "not_cancellable", f"Job {job_id} is {state.value}; nothing to cancel.")
        log.info("web_job_cancel", job_id=job_id, state=state.value)
        return state

    def _retry(job_id: int) -> Job:
        try:
            job = queue.retry(job_id)
        except LookupError:
            raise WebError(404, "not_found", f"There is no job {job_id}.") from None
        except ValueError as exc:
            raise WebError(409, "not_retryable", str(exc)) from None
        log.info("web_job_retried", job_id=job.id, retried_from_id=job_id)
        return job

    def _set_priority(job_id: int, value: str) -> None:
        field = Sidecar.model_fields["priority"]
        bounds = {type(m).__name__: m for m in field.metadata}
        low, high = bounds["Ge"].ge, bounds["Le"].le
        if not value.strip().lstrip("+-").isdigit() or not low <= int(value) <= high:
            raise WebError(422, "invalid_priority", f"Priority must be a whole number from {low} to {high}.",
                           field_errors=[{"field": "priority", "message": f"must be {low}..{high}"}])
        _job(job_id)
        if not queue.set_priority(job_id, int(value)):
            raise WebError(409, "not_waiting", f"Job {job_id} is no longer waiting; its priority is fixed.")

    app.include_router(pages)
    app.include_router(api)
    return app


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _fields(form) -> dict[str, str]:
    """The sidecar fields of a form: every text field but the page's own."""
    return {k: v for k, v in form.multi_items() if isinstance(v, str) and k not in RESERVED_FORM_FIELDS}


def _next(form, default: str) -> str:
    """Where to go after a button: a path on this site only (no '//host' or scheme)."""
    target = str(form.get("next", ""))
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else default
