"""The event stream through real `i2vd run` subprocesses with the tiny model and a real receiver."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from support.cluster import Cluster
from support.daemons import daemon_env, make_queue, make_settings, wait_for
from support.files import drop_pair, write_image
from daemon.db.engine import make_engine, session_factory
from daemon.events import kinds
from daemon.events.outbox import EventLog
from daemon.db.tables import JobState
from support.webhooks import Receiver, free_port

SECRET = "s3cret"


def webhook_env(dirs, url: str, **extra: str) -> dict[str, str]:
    return daemon_env(dirs, I2VD_WEBHOOK_URLS=json.dumps([url]), I2VD_WEBHOOK_SECRET=SECRET,
                      I2VD_WEBHOOK_POLL_SECONDS="0.2", I2VD_WEBHOOK_TIMEOUT_SECONDS="1",
                      I2VD_WEBHOOK_BACKOFF_SECONDS="0.2", I2VD_WEBHOOK_BACKOFF_MAX_SECONDS="1", **extra)


def cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], env=env, capture_output=True, text=True)


def events_json(env, *args) -> list[dict]:
    out = cli(env, "events", "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def story(events: list[dict], job_id: int) -> list[str]:
    return [e["type"] for e in events if e["job_id"] == job_id]


def test_events_in_order_for_a_cancel_a_rejection_a_retry_and_a_success(dirs, run_daemon):
    receiver = Receiver().start()
    env = webhook_env(dirs, receiver.url, I2VD_RETRY_BACKOFF_SECONDS="1", I2VD_MAX_RETRIES="2")
    settings = make_settings(dirs)
    queue = make_queue(settings)
    log = EventLog(session_factory(make_engine(settings.database_url)))  # in-process: polling it costs little
    follower = subprocess.Popen([sys.executable, "-m", "daemon.cli", "events", "--follow", "--json"], env=env,
                                stdout=subprocess.PIPE, text=True)
    daemon = run_daemon(env)
    try:
        daemon.wait_ready()
        # 1. A running job, cancelled; its progress streams while it runs.
        drop_pair(dirs["inbox"], "long", steps=150)
        long_id = wait_for(lambda: (job := next(iter(queue.recent()), None)) and job.id, what="long queued")
        wait_for(lambda: len(log.since(types={kinds.JOB_PROGRESS}, job_id=long_id)) >= 2, 120,
                 what="progress events")
        assert cli(env, "cancel", str(long_id)).returncode == 0
        wait_for(lambda: queue.get(long_id).state == JobState.CANCELLED, 60, what="long cancelled")
        # 2. A rejected pair.
        write_image(dirs["inbox"] / "bad.png")
        (dirs["inbox"] / "bad.json").write_text("{not json")
        # 3. A transient failure, retried, then a success: the output folder is a file at first.
        blocker = dirs["outputs"] / "project"
        blocker.write_text("a file where the output folder should be")
        drop_pair(dirs["inbox"] / "project", "shot")
        retried = wait_for(lambda: next(iter(log.since(types={kinds.JOB_RETRY_SCHEDULED})), None), 120,
                           what="retry scheduled").to_json()
        blocker.unlink()
        shot_id = retried["job_id"]
        wait_for(lambda: queue.get(shot_id).state == JobState.SUCCEEDED, 120, what="shot succeeded")
        events = events_json(env)  # what `i2vd events --json | jq` sees
        wait_for(lambda: len(receiver.unique_events()) == len(events), 30, what="every event delivered")
        assert daemon.stop() == 0
    finally:
        follower.send_signal(signal.SIGINT)
        followed = [json.loads(line) for line in follower.communicate(timeout=30)[0].splitlines()]
        receiver.stop()

    assert story(events, long_id) == [kinds.JOB_QUEUED, kinds.JOB_STARTED, kinds.JOB_CANCELLED]  # progress pruned
    assert story(events, shot_id) == [kinds.JOB_QUEUED, kinds.JOB_STARTED, kinds.JOB_RETRY_SCHEDULED,
                                      kinds.JOB_STARTED, kinds.JOB_SUCCEEDED]
    rejected = [e for e in events if e["type"] == kinds.INPUT_REJECTED]
    error_file = json.loads((dirs["inbox"] / "failed" / "bad.error.json").read_text())
    assert len(rejected) == 1 and rejected[0]["job_id"] is None
    assert rejected[0]["data"]["code"] == error_file["code"] == "invalid_json"
    assert sorted(rejected[0]["data"]["files"]) == ["bad.json", "bad.png"]
    assert rejected[0]["data"]["message"] == error_file["error"]
    succeeded = events[-1]
    video = dirs["outputs"] / "project" / succeeded["data"]["video"].rpartition("/")[2]
    assert succeeded["type"] == kinds.JOB_SUCCEEDED and video.is_file()
    assert succeeded["data"]["rung"] == "full" and succeeded["data"]["timings"]["generation_seconds"] > 0
    assert "OSError" in retried["data"]["error"] or "Error" in retried["data"]["error"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)

    # The webhook got the same events, in order, signed; `--follow` saw them as they happened.
    assert receiver.unique_events() == events
    assert all(r.signature_ok(SECRET) for r in receiver.received)
    durable = [e for e in followed if e["type"] != kinds.JOB_PROGRESS]
    assert durable == events
    assert any(e["type"] == kinds.JOB_PROGRESS and e["job_id"] == long_id for e in followed)


def test_a_receiver_down_and_a_killed_daemon_lose_no_event(dirs, run_daemon):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"  # nothing listens yet
    env = webhook_env(dirs, url)
    queue = make_queue(make_settings(dirs))
    drop_pair(dirs["inbox"], "shot")
    daemon = run_daemon(env)
    daemon.wait_ready()
    job = wait_for(lambda: (j := next(iter(queue.recent()), None)) and j.state == JobState.SUCCEEDED and j,
                   what="job succeeded")
    wait_for(lambda: "webhook_failed" in daemon.output, 30, what="a failed delivery")
    daemon.proc.send_signal(signal.SIGKILL)  # between the state changes and their delivery
    daemon.proc.wait()

    receiver = Receiver(port).start()
    # Any daemon on the database delivers: an intake-only one starts in a moment (no model).
    other = run_daemon(webhook_env(dirs, url, I2VD_INTAKE_ONLY="true", I2VD_RETENTION_DAYS="30"))
    try:
        other.wait_ready()
        wait_for(lambda: [e["type"] for e in receiver.unique_events()] == [
            kinds.JOB_QUEUED, kinds.JOB_STARTED, kinds.JOB_SUCCEEDED], 60, interval=0.2,
            what="the three events after the receiver came back")
        assert other.stop() == 0
    finally:
        receiver.stop()
    assert '"event": "pruned"' in other.output and queue.get(job.id) is not None  # at start; the job is new
    assert {e["job_id"] for e in receiver.events()} == {job.id}
    assert all(r.signature_ok(SECRET) for r in receiver.received)


def test_a_worker_woken_after_its_job_was_taken_over_changes_nothing(dirs, tmp_path):
    """A frozen worker (SIGSTOP: a host lost to a partition) loses its lease; an intake-only daemon's
    recovery requeues the job and another worker (here the test, as "bob") takes it. Woken up mid-step,
    the old worker must not write progress, nor fail, cancel, requeue or finish bob's job."""
    cluster = Cluster(tmp_path / "cluster")
    (tmp_path / "cluster").mkdir()
    queue = make_queue(make_settings(dirs))
    log = EventLog(session_factory(make_engine(make_settings(dirs).database_url)))
    try:
        victim = cluster.start(daemon_env(dirs, I2VD_LEASE_SECONDS="3"))
        victim.wait_ready()
        drop_pair(dirs["inbox"], "long", steps=150)
        job = wait_for(lambda: next((j for j in queue.running() if (j.progress_step or 0) >= 2), None), 120,
                       what="the job in mid-denoising")
        victim.proc.send_signal(signal.SIGSTOP)
        rescuer = cluster.start(daemon_env(dirs, I2VD_LEASE_SECONDS="3", I2VD_INTAKE_ONLY="true"))
        rescuer.wait_ready()
        wait_for(lambda: queue.get(job.id).state == JobState.QUEUED, 60, what="recovery requeued the job")
        assert queue.claim("bob", 600).id == job.id
        taken_over = log.latest_id()

        victim.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: any(e["event"] == "job_interrupted" and e["job_id"] == job.id and e["lease_lost"]
                             for e in cluster.events(victim)), 60, what="the woken worker to give up")
        after = queue.get(job.id)
        assert (after.state, after.lease_owner, after.phase, after.progress_step) == (
            JobState.RUNNING, "bob", "loading", None)  # as bob's claim left it
        assert log.since(taken_over) == []  # and no event says otherwise
        assert queue.succeed(job.id, "bob")
    finally:
        cluster.kill_all()
