"""A daemon whose PostgreSQL goes away for a while keeps serving and picks up where it was."""

from __future__ import annotations

import json
import time

from support.daemons import daemon_env, wait_for

from support.files import drop_pair, probe
from daemon.db.engine import make_engine, session_factory
from daemon.db.tables import JobState
from daemon.jobs.queue import JobQueue
from support.outage import outage
from support.notify import NotifyListener


def test_the_daemon_rides_out_a_database_outage(dirs, run_daemon, postgres_url):
    listener = NotifyListener()  # as under systemd: the loop also sends STATUS= lines from the queue
    env = daemon_env(dirs, I2VD_DATABASE_URL=postgres_url, I2VD_LEASE_SECONDS="6",
                     NOTIFY_SOCKET=listener.address)
    daemon = run_daemon(env)
    daemon.wait_ready()

    with outage(postgres_url):
        time.sleep(1.5)  # the idle worker's polls and the registry heartbeat fail meanwhile
        drop_pair(dirs["inbox"], "during")
        time.sleep(3)  # settled: intake tries to queue it, and cannot
        assert daemon.proc.poll() is None, daemon.output
    # Intake retries the pair at its next recovery pass (within a lease).
    video = wait_for(lambda: next(iter(dirs["outputs"].glob("during_*.mp4")), None), timeout=180,
                     what="the pair dropped during the outage")
    assert probe(video)[0] == 8
    assert daemon.stop() == 0
    listener.close()

    events = [json.loads(line) for line in (dirs["state"] / "i2vd.log").read_text().splitlines()]
    assert any(e["level"] in ("warning", "error") and e["event"] in ("worker_error", "loop_error", "task_failed")
               for e in events), "the outage left no trace in the log"
    queue = JobQueue(session_factory(make_engine(postgres_url)))
    assert [(j.output_stem, j.state) for j in queue.recent()] == [("during", JobState.SUCCEEDED)]
    assert not list(dirs["inbox"].glob("failed/*"))
