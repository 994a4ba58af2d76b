"""workers, and which worker ran each attempt

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("gpu", sa.String(64)),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True)),
    )
    # Batch mode: SQLite cannot add a foreign key in place, so alembic rebuilds the table there.
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("worker_id", sa.Integer()))
        batch.create_foreign_key("fk_attempts_worker_id_workers", "workers", ["worker_id"], ["id"],
                                 ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_constraint("fk_attempts_worker_id_workers", type_="foreignkey")
        batch.drop_column("worker_id")
    op.drop_table("workers")
