"""Alembic environment: uses the engine i2vd hands over, or builds one from i2vd's settings."""

from alembic import context

from daemon.db import make_engine
from daemon.models import Base
from daemon.settings import load_settings

target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = context.config.attributes.get("engine") or make_engine(load_settings().database_url)
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        context.run_migrations()


run_migrations_online()
