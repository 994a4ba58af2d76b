"""retry backoff and OOM ladder rungs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("run_after", sa.DateTime(timezone=True)))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("rung", sa.String(32), nullable=False, server_default="full"))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("rung")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_after")
