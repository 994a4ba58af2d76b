"""The database edge: engine creation (SQLite tuned for a daemon, or PostgreSQL) and alembic migrations."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from alembic import command
from daemon.errors import ConfigError, I2vdError

DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)
"""What a database that is away (down, restarting, locked past the busy timeout) raises."""
MIGRATIONS_DIR = Path(__file__).parent / "migrations"  # a link to the repository's alembic/; a copy in the wheel
SQLITE_BUSY_TIMEOUT_MS = 30_000
# A daemon needs four connections at once (intake loop, worker, job heartbeat, worker heartbeat).
# Keeping no more open lets ~20 daemons share PostgreSQL's default max_connections of 100;
# the overflow (closed again after use) covers a short burst such as a CLI command in-process.
POSTGRES_POOL_SIZE = 4
MIGRATION_LOCK_KEY = 0x69327664  # "i2vd": the advisory lock that lets one daemon migrate at a time


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _postgres_engine(parsed)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "handle_error")
    def _drop_read_only_connection(context):
        # SQLite opens a file it cannot write (a read-only remount, a NAS share blinking) read-only
        # and keeps it so when the file is writable again: this connection goes, the next reopens.
        if getattr(context.original_exception, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY:
            if context.execution_context is not None:  # its statement would keep the files open past close()
                context.execution_context.cursor.close()
            context.is_disconnect = True

    return engine


def _postgres_engine(url: URL) -> Engine:
    if url.drivername == "postgresql":  # the bare scheme means psycopg2 to SQLAlchemy; i2vd ships psycopg 3
        url = url.set(drivername="postgresql+psycopg")
    try:
        return create_engine(url, pool_pre_ping=True, pool_size=POSTGRES_POOL_SIZE,
                             max_overflow=POSTGRES_POOL_SIZE)
    except ImportError as exc:
        raise ConfigError(f"database_url {url.drivername}:// needs the {exc.name} package: "
                          "pip install 'i2vd[postgres]'") from None


def sqlite_path(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for other engines and in-memory databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    if not MIGRATIONS_DIR.is_dir():
        raise FileNotFoundError(f"alembic migrations not found at {MIGRATIONS_DIR}; reinstall i2vd")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (idempotent, and safe for daemons starting together)."""
    with _migration_lock(engine):
        command.upgrade(alembic_config(engine), revision)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One migrating process at a time: daemons started together (i2vd@0, i2vd@1, ...) would
    otherwise all find the schema old and create the same tables; all but one would crash."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
    elif (path := sqlite_path(engine.url)) is not None:
        with open(path.with_name(path.name + ".migrate-lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            yield
    else:
        yield


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(alembic_config(engine), revision)


def schema_revision(engine: Engine) -> tuple[str | None, str]:
    """(current revision, head revision)."""
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if head is None:  # alembic's answer for a folder without revisions
        raise I2vdError(f"no migrations found in {MIGRATIONS_DIR}: this i2vd installation is incomplete")
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, head


def unwritable_reason(engine: Engine) -> str | None:
    """None when this process can write to the (migrated) database, else one line saying what to fix.

    A real write, rolled back: file modes, read-only mounts and missing grants all show up.
    """
    try:
        with engine.connect() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
            conn.rollback()
    except (SQLAlchemyError, OSError) as exc:
        return cannot_write(engine, exc)
    return None


def cannot_write(engine: Engine, exc: BaseException) -> str:
    """One line: the database cannot be written (`exc` says how), and what to fix."""
    error = (str(getattr(exc, "orig", None) or exc).splitlines() or ["?"])[0][:200]
    path = sqlite_path(engine.url)
    if path is None:
        where = engine.url.render_as_string(hide_password=True)
        return (f"cannot write to the database {where} ({error}): check that the server is up and that "
                "this user may write to it")
    return (f"cannot write to the database {path} ({error}): make it and its folder {path.parent} writable "
            f"by user {_user()} (SQLite writes {path.name}-wal and -shm beside it), or set I2VD_DATABASE_URL")


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())
