"""jobs name the model that runs them; workers list the models they serve

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL model: a job queued before this revision; any worker runs it on its default model.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("model", sa.String(64)))
        batch.create_index("ix_jobs_state_model", ["state", "model"])
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("models", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("models")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_state_model")
        batch.drop_column("model")
