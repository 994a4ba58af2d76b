"""Real database outages for tests: a SQLite file write-locked by another connection, or a PostgreSQL
database that refuses connections and has its open ones terminated."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from daemon.db.engine import make_engine, sqlite_path
from support.daemons import POSTGRES_ADMIN_URL

BUSY_TIMEOUT = 0.05  # seconds a write waits on a locked SQLite file before it fails


def engine_for_outages(url: str) -> Engine:
    """An engine whose writes fail soon during an outage: SQLite's busy timeout cut from 30 s."""
    if sqlite_path(url) is None:
        return make_engine(url)
    return create_engine(url, connect_args={"timeout": BUSY_TIMEOUT})


@contextmanager
def outage(url: str) -> Iterator[None]:
    """While inside, every write to the database at `url` fails."""
    path = sqlite_path(url)
    if path is not None:
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # holds the write lock until the rollback
        try:
            yield
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        return
    import psycopg
    from psycopg import sql

    database = make_url(url).database
    admin = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(database)))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        try:
            yield
        finally:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(database)))


@contextmanager
def database_outliving_restarts() -> Iterator[str]:
    """A throwaway PostgreSQL database, created and dropped over connections of their own: the
    `postgres_url` fixture's connection would not survive `server_stopped`."""
    import os
    import secrets

    import psycopg
    import pytest
    from psycopg import sql

    admin = make_url(POSTGRES_ADMIN_URL)
    admin_dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"i2vd_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"PostgreSQL unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {' '.join(str(exc).split())}")
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=30) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def server_stopped(cluster: str = "15 main") -> Iterator[None]:
    """The whole local PostgreSQL server stopped (fast shutdown: sessions cut) while inside; started after.

    It stops the server every test shares: keep the time inside short.
    """
    import subprocess

    command = ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster.split()]
    subprocess.run([*command, "stop", "-m", "fast"], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([*command, "start"], check=True, capture_output=True)
