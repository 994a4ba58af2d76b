"""A SQLite file on a filesystem that turns read-only for a while: writes fail meanwhile, and the
engine writes again after, even where its pooled connection was opened while the file was read-only
(SQLite keeps such a connection read-only for good)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from daemon.db.engine import DATABASE_UNAVAILABLE, make_engine
from support.readonly_fs import flippable_mount


def test_writes_fail_while_read_only_and_work_again_after(tmp_path):
    with flippable_mount(tmp_path) as mount:
        engine = make_engine(f"sqlite:///{mount.mountpoint / 'i2vd.db'}")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        with mount.read_only():
            with pytest.raises(DATABASE_UNAVAILABLE):  # on the connection opened before
                with engine.begin() as conn:
                    conn.execute(text("INSERT INTO t VALUES (1)"))
            engine.dispose()  # the next connection is opened while read-only (SQLite then opens it so)
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 0  # reads go on
        with pytest.raises(DATABASE_UNAVAILABLE, match="readonly"):  # the connection opened read-only...
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (2)"))
        for _ in range(3):  # ...is dropped on its first refused write, and the next one writes
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (2)"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 3
        engine.dispose()
