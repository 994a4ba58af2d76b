"""What every route works with (settings, sessions, queue, submitter, gate, templates) and the check it passes."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.security import HTTPBearer
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from daemon.jobs.queue import JobQueue
from daemon.settings import Settings
from daemon.web.database import SqliteFile
from daemon.web.errors import Forbidden, LoginRequired, Unauthorized
from daemon.web.security import UNSAFE_METHODS, Gate, cross_site
from daemon.web.submit import WebSubmitter

HERE = Path(__file__).resolve().parent


@dataclass
class WebContext:
    """The application's shared parts, kept on `app.state.web`."""

    settings: Settings
    sessions: sessionmaker[Session]
    queue: JobQueue
    submitter: WebSubmitter
    gate: Gate
    templates: Jinja2Templates
    stopping: threading.Event
    database_file: SqliteFile | None  # None for PostgreSQL


def web(request: Request) -> WebContext:
    """The dependency routes take their context from."""
    return request.app.state.web


# Declares the bearer scheme in the OpenAPI schema; the token itself is checked by guard.
bearer_scheme = HTTPBearer(auto_error=False, description="The web_token, when one is set.")


def guard(request: Request) -> None:
    """Every route but the login page, the schema and static files: CSRF, then the token (HostCheck ran)."""
    ctx = web(request)
    if ctx.database_file is not None:
        ctx.database_file.check()
    if request.method in UNSAFE_METHODS and not ctx.gate.bearer(request) and cross_site(request):
        raise Forbidden("cross_site_request", "A form on another site tried to change this queue.",
                        "Use the i2vd page itself, or send the token as a bearer header from scripts.")
    if not ctx.gate.allowed(request):
        if request.url.path.startswith("/api/"):
            raise Unauthorized("unauthorized", "This API needs the web token.",
                               "Send the header 'Authorization: Bearer <web_token>'.")
        raise LoginRequired()
