"""the web page's search and lists at 100,000 jobs: a trigram index of prompts, events by type, jobs by model

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

PROMPT = "json_extract({row}.params, '$.prompt')"


def upgrade() -> None:
    # Rejected inputs (events of one type, newest first) and one model's jobs: index walks, not scans.
    op.create_index("ix_events_type_id", "events", ["type", "id"])
    op.create_index("ix_jobs_model_id", "jobs", ["model", "id"])
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL searches prompts by ILIKE over the rows (a pg_trgm index is not built yet)
    # Prompt search by substring, as ILIKE '%q%' does, from an index: FTS5's trigram tokenizer (SQLite
    # 3.34+). jobs_fts.rowid is the job's id; triggers keep it in step with jobs (retention included).
    op.execute("CREATE VIRTUAL TABLE jobs_fts USING fts5(prompt, tokenize='trigram')")
    op.execute(f"INSERT INTO jobs_fts (rowid, prompt) SELECT id, {PROMPT.format(row='jobs')} FROM jobs")
    op.execute(f"CREATE TRIGGER jobs_fts_insert AFTER INSERT ON jobs BEGIN "
               f"INSERT INTO jobs_fts (rowid, prompt) VALUES (new.id, {PROMPT.format(row='new')}); END")
    op.execute(f"CREATE TRIGGER jobs_fts_update AFTER UPDATE OF params ON jobs BEGIN "
               f"UPDATE jobs_fts SET prompt = {PROMPT.format(row='new')} WHERE rowid = new.id; END")
    op.execute("CREATE TRIGGER jobs_fts_delete AFTER DELETE ON jobs BEGIN "
               "DELETE FROM jobs_fts WHERE rowid = old.id; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("jobs_fts_insert", "jobs_fts_update", "jobs_fts_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS jobs_fts")
    op.drop_index("ix_jobs_model_id", table_name="jobs")
    op.drop_index("ix_events_type_id", table_name="events")
