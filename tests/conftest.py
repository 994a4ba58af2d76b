"""Shared fixtures: the tiny model built once, real folders, a real daemon subprocess."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest
from daemon.db.engine import make_engine, session_factory, upgrade
from support.daemons import POSTGRES_ADMIN_URL, DaemonProcess

# The server that .ci/run starts; tests make and drop their own databases on it.


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from pipeline.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("model") / "tiny-i2vgen-xl")


@pytest.fixture
def postgres_url():
    """A throwaway database on the test PostgreSQL server, dropped (connections and all) afterwards.

    Skips when the server is unreachable, except in CI (CI=true), where that fails the test.
    """
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    admin = make_url(POSTGRES_ADMIN_URL)
    try:
        conn = psycopg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False),
                               autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL unreachable at {admin.render_as_string()}: {' '.join(str(exc).split())}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = sql.Identifier(database := f"i2vd_test_{os.getpid()}_{secrets.token_hex(4)}")
    with conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        try:
            yield admin.set(database=database).render_as_string(hide_password=False)
        finally:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """The same test on both engines: a SQLite file, then a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine-test.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def sessions(database_url):
    """A migrated database (SQLite, then PostgreSQL) for tests of the data layer."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def dirs(tmp_path, tiny_model_dir) -> dict[str, Path]:
    """inbox/, outputs/ and state/ under tmp_path, the tiny model pre-placed in state/."""
    d = {name: tmp_path / name for name in ("inbox", "outputs", "state")}
    for path in d.values():
        path.mkdir()
    shutil.copytree(tiny_model_dir, d["state"] / "models" / "tiny-i2vgen-xl")
    return d


# Set by systemd for its services (a CI runner may be one); a test daemon gets them only on purpose.


@pytest.fixture
def run_daemon(tmp_path):
    started: list[DaemonProcess] = []

    def start(env: dict[str, str]) -> DaemonProcess:
        daemon = DaemonProcess(env, tmp_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.kill()
