"""One place that turns refusals into responses: the HTTP status comes from the error's type."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from daemon.errors import InputRejected
from daemon.jobs.errors import JobNotFound, KeyConflict, ModelNotServed, NotRetryable, QueueError
from daemon.logs import get_logger
from daemon.web.security import SECURITY_HEADERS

log = get_logger("i2vd.web")


class WebError(Exception):
    """A refusal the API answers as JSON with an error sidecar's keys, and a page as an error page."""

    status = 400

    def __init__(self, code: str, message: str, hint: str | None = None,
                 field_errors: list[dict] | None = None) -> None:
        super().__init__(message)
        self.code, self.hint, self.field_errors = code, hint, field_errors or []

    def body(self) -> dict:
        return {"code": self.code, "error": str(self), "hint": self.hint, "field_errors": self.field_errors}


class Unauthorized(WebError):
    status = 401


class Forbidden(WebError):
    status = 403


class NotFound(WebError):
    status = 404


class Conflict(WebError):
    status = 409


class TooLarge(WebError):
    status = 413


class Invalid(WebError):
    status = 422


class Unavailable(WebError):
    status = 503


class TimedOut(WebError):
    status = 504


class HttpError(WebError):
    """A refusal from the framework itself (unknown route, wrong method): its status as given."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status


class LoginRequired(Exception):
    """A page asked for without a valid login session."""


# The queue's refusals by type (daemon/jobs/errors.py); the most specific class first.
QUEUE_ERRORS: dict[type[QueueError], tuple[type[WebError], str]] = {
    JobNotFound: (NotFound, "not_found"),
    ModelNotServed: (Conflict, "model_not_served"),
    NotRetryable: (Conflict, "not_retryable"),
    KeyConflict: (Unavailable, "busy"),
}
# InputRejected is one type for every intake code; the one whose remedy is a smaller body is a 413.
REJECTION_STATUS = {"image_too_large": TooLarge}


def from_queue(exc: QueueError) -> WebError:
    """The web refusal for an error the queue raised."""
    web_error, code = next(v for kind, v in QUEUE_ERRORS.items() if isinstance(exc, kind))
    return web_error(code, str(exc))


def rejected(rejection: InputRejected) -> WebError:
    """An intake rejection (sidecar rules, image checks) as a refusal with the same code and fields."""
    kind = REJECTION_STATUS.get(rejection.code, Invalid)
    return kind(rejection.code, str(rejection), rejection.hint, rejection.field_errors)


def install(app: FastAPI, render_error) -> None:
    """Register the handlers; `render_error(request, WebError)` draws the HTML error page."""

    async def web_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WebError)
        headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
        if request.url.path.startswith("/api/") or request.url.path == "/api":
            return JSONResponse(exc.body(), exc.status, headers=headers)
        return render_error(request, exc, headers)

    async def input_rejected(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InputRejected)
        return await web_error(request, rejected(exc))

    async def queue_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, QueueError)
        return await web_error(request, from_queue(exc))

    async def login_required(request: Request, _exc: Exception) -> Response:
        return RedirectResponse("/login", 303)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = "not_found" if exc.status_code == 404 else "http_error"
        return await web_error(request, HttpError(exc.status_code, code, str(exc.detail)))

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [{"field": ".".join(str(p) for p in e["loc"][1:]) or "(request)", "message": e["msg"]}
                  for e in exc.errors()]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return await web_error(request, Invalid("invalid_request", f"The request is invalid: {summary}.",
                                                field_errors=errors))

    async def database_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OperationalError)
        log.warning("web_database_unavailable", path=request.url.path, error=str(exc.orig)[:200])
        return await web_error(request, Unavailable("database_unavailable", "The queue's database did not answer.",
                                                    "Try again in a moment."))

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Outside every middleware: the security headers are added here, and the body stays JSON.
        log.error("web_internal_error", path=request.url.path, error=f"{type(exc).__name__}: {exc}"[:300])
        body = WebError("internal_error", "The server failed to answer this request.",
                        "The web log's web_internal_error line has the details.").body()
        return JSONResponse(body, 500, headers=SECURITY_HEADERS)

    app.add_exception_handler(WebError, web_error)
    app.add_exception_handler(InputRejected, input_rejected)
    app.add_exception_handler(QueueError, queue_error)
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(OperationalError, database_error)
    app.add_exception_handler(Exception, unexpected)
