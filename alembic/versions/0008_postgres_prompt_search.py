"""PostgreSQL: a trigram index of prompts, so the web's search is an index lookup there too

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import logging

from sqlalchemy.exc import DBAPIError

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INDEX = "ix_jobs_prompt_trgm"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return  # SQLite has jobs_fts (0007)
    # pg_trgm is a trusted extension (PostgreSQL 13+): a role that may create in the database may add it.
    # Where it cannot, search stays a scan of every job, which is slower and nothing else.
    try:
        with bind.begin_nested():
            op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DBAPIError as exc:
        logging.getLogger(__name__).warning("prompt search stays a scan: pg_trgm cannot be created (%s)",
                                            str(exc.orig).strip().splitlines()[0])
        return
    # The expression the web's ILIKE '%q%' uses (daemon/web/queries.py): params ->> 'prompt'.
    op.execute(f"CREATE INDEX {INDEX} ON jobs USING gin ((params ->> 'prompt') gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {INDEX}")
