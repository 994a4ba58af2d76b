"""Alembic environment: uses the engine i2vd hands over, or builds one from i2vd's settings."""

from alembic import context

from daemon.db.engine import make_engine
from daemon.db.tables import Base
from daemon.settings import load_settings

target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = context.config.attributes.get("engine") or make_engine(load_settings().database_url)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds a table (copy, drop, rename). With foreign keys on, dropping `jobs`
            # cascades and deletes every attempt. SQLite ignores this pragma inside a transaction,
            # so it goes before the migration's own.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                context.configure(connection=connection, target_metadata=target_metadata,
                                  render_as_batch=sqlite)
                context.run_migrations()
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


run_migrations_online()
