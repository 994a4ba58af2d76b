"""The alembic migrations on both engines: a fresh upgrade, and down and up again with data in place."""

from __future__ import annotations

import multiprocessing

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from daemon.db.engine import downgrade, make_engine, schema_revision, upgrade
from daemon.db.tables import Base


def columns(engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def test_migrations_build_the_models_schema_and_go_down_and_up(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    current, head = schema_revision(engine)
    assert current == head
    assert {"jobs", "attempts", "workers"} <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        # The hand-written migrations produce exactly what the models describe, on this engine.
        # Except jobs_fts: SQLite's trigram index of prompts (0007), a virtual table outside the models.
        diffs = [d for d in compare_metadata(MigrationContext.configure(conn), Base.metadata)
                 if not (d[0] == "remove_table" and d[1].name.startswith("jobs_fts"))]
        assert diffs == []

    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO workers (name, host, pid, gpu, device, started_at, last_seen_at) "
            "VALUES ('gpu-a:7', 'gpu-a', 7, '1', 'cuda:0', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(text(
            "INSERT INTO jobs (state, priority, idempotency_key, params, output_stem, output_subdir, "
            "source_image, image_path, created_at, cancel_requested) VALUES ('succeeded', 0, 'k', '{}', "
            "'beach', '', '/in/beach.png', '/done/beach.png', CURRENT_TIMESTAMP, false)"))
        conn.execute(text(
            "INSERT INTO attempts (job_id, number, worker, params, started_at, worker_id) "
            "SELECT id, 1, 'gpu-a:7', '{}', CURRENT_TIMESTAMP, (SELECT id FROM workers) FROM jobs"))

    downgrade(engine, "0001")
    assert schema_revision(engine)[0] == "0001"
    assert "workers" not in inspect(engine).get_table_names()
    assert "worker_id" not in columns(engine, "attempts")
    with engine.connect() as conn:  # the jobs and their history survive the way down
        assert conn.execute(text("SELECT worker FROM attempts")).scalars().all() == ["gpu-a:7"]

    upgrade(engine)
    assert schema_revision(engine)[0] == head
    assert "worker_id" in columns(engine, "attempts")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 1

    downgrade(engine, "base")
    assert not {"jobs", "attempts", "workers"} & set(inspect(engine).get_table_names())
    upgrade(engine)
    assert schema_revision(engine)[0] == head
    engine.dispose()


def upgrade_when_told(url: str, start) -> None:
    engine = make_engine(url)
    start.wait()
    upgrade(engine)


def test_daemons_starting_together_on_a_fresh_database_all_come_up(database_url):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=upgrade_when_told, args=(database_url, start)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    current, head = schema_revision(make_engine(database_url))
    assert current == head
