"""The alembic migrations on both engines: a fresh upgrade, and down and up again with data in place."""

from __future__ import annotations

import multiprocessing

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from daemon.db.engine import downgrade, make_engine, schema_revision, session_factory, upgrade
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
        # Except the trigram indexes of prompts, outside the models: SQLite's jobs_fts virtual table (0007)
        # and PostgreSQL's pg_trgm expression index (0008).
        diffs = [d for d in compare_metadata(MigrationContext.configure(conn), Base.metadata)
                 if not (d[0] == "remove_table" and d[1].name.startswith("jobs_fts"))
                 and not (d[0] == "remove_index" and d[1].name == "ix_jobs_prompt_trgm")]
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


def test_a_role_that_may_not_add_pg_trgm_still_migrates_and_searches(postgres_url, caplog):
    """0008's prompt index needs the pg_trgm extension; a role that may create tables but not extensions
    gets the schema without it (search scans, as before 0008), not a daemon that cannot start."""
    import secrets

    from sqlalchemy.engine import make_url

    from daemon.web.queries import JobFilter, list_jobs

    role = f"i2vd_plain_{secrets.token_hex(3)}"
    owner = make_engine(postgres_url)
    with owner.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"GRANT CREATE ON SCHEMA public TO {role}"))
    plain = make_engine(make_url(postgres_url).set(username=role).render_as_string(hide_password=False))
    try:
        upgrade(plain)
        assert schema_revision(plain)[0] == schema_revision(plain)[1]
        assert "prompt search stays a scan: pg_trgm cannot be created" in caplog.text
        assert "ix_jobs_prompt_trgm" not in {i["name"] for i in inspect(plain).get_indexes("jobs")}
        with plain.begin() as conn:
            conn.execute(text(
                "INSERT INTO jobs (state, priority, idempotency_key, params, output_stem, output_subdir, "
                "source_image, image_path, created_at, cancel_requested) VALUES ('queued', 0, 'k', "
                "'{\"prompt\": \"waves at night\"}', 'w', '', '/in/w.png', '/done/w.png', CURRENT_TIMESTAMP, false)"))
        assert [j.output_stem for j in list_jobs(session_factory(plain), JobFilter(prompt="AVES")).jobs] == ["w"]
    finally:
        plain.dispose()
        with owner.begin() as conn:
            conn.execute(text("DROP OWNED BY " + role))
            conn.execute(text(f"DROP ROLE {role}"))
        owner.dispose()
