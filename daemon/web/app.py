"""The web application's factory: shared parts on app.state, middleware, error handlers, routers."""

from __future__ import annotations

import threading

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker

from daemon import __version__
from daemon.jobs.queue import JobQueue
from daemon.settings import Settings, split_host_port
from daemon.web import api, errors, pages, predict
from daemon.web.context import HERE, WebContext
from daemon.web.database import SqliteFile
from daemon.web.security import BodyLimit, Gate, HostCheck, SecurityHeaders
from daemon.web.submit import WebSubmitter

ROUTERS = (pages.login, pages.router, api.router, predict.router)


def create_app(settings: Settings, sessions: sessionmaker[Session],
               stopping: threading.Event | None = None) -> FastAPI:
    """The application for `settings`' database and folders; `stopping` ends the event streams."""
    queue = JobQueue(sessions)
    gate = Gate(settings.web_token.get_secret_value() if settings.web_token else None,
                session_seconds=settings.web_session_hours * 3600)
    app = FastAPI(title="i2vd", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="The i2vd queue: submit pictures, watch jobs, fetch videos.")
    app.state.web = WebContext(settings=settings, sessions=sessions, queue=queue,
                               submitter=WebSubmitter(settings, queue), gate=gate,
                               templates=pages.make_templates(login_enabled=not gate.open),
                               stopping=stopping or threading.Event(), database_file=_sqlite_file(sessions))
    # One request carries at most MAX_FILES_PER_FORM images of the intake's size limit.
    app.add_middleware(BodyLimit, limit=settings.max_image_bytes * pages.MAX_FILES_PER_FORM + 1024 * 1024)
    app.add_middleware(HostCheck, bound_host=split_host_port(settings.web_address)[0])
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    errors.install(app, pages.render_error)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _sqlite_file(sessions: sessionmaker[Session]) -> SqliteFile | None:
    engine = sessions.kw.get("bind")
    if engine is None or engine.url.get_backend_name() != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return None
    return SqliteFile(engine)
