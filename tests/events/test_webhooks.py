"""Webhook delivery to a real HTTP receiver on 127.0.0.1: signed, in order, retried, shared by daemons."""

from __future__ import annotations


from support.cluster import Cluster
from support.daemons import daemon_env, wait_for
from daemon import metrics
from daemon.db.engine import make_engine, session_factory, upgrade
from daemon.events import kinds
from daemon.events.outbox import EventLog
from daemon.events.webhooks import WebhookSender, backoff_seconds, sign
from daemon.db.tables import WebhookDelivery
from daemon.jobs.queue import JobQueue, NewJob
from support.webhooks import SECRET, Receiver, free_port, settings_for

def some_events(queue: JobQueue) -> None:
    job, _ = queue.create(NewJob(idempotency_key="k", params={"seed": 1}, priority=0, output_stem="beach",
                                 output_subdir="", source_image="/in/beach.png", source_sidecar="/in/beach.json",
                                 image_path="/done/beach.png", sidecar_path="/done/beach.json"))
    queue.mark_queued(job.id)
    queue.cancel(job.id)
    queue.record_rejection("invalid_json", "bad.json is not JSON.", ["bad.png", "bad.json"])


def deliveries(sessions) -> list[WebhookDelivery]:
    with sessions() as s:
        return list(s.query(WebhookDelivery).order_by(WebhookDelivery.event_id))


def test_signed_events_arrive_in_order_after_the_receiver_recovers(sessions, tmp_path):
    receiver = Receiver().start()
    queue, log = JobQueue(sessions), EventLog(sessions)
    queue.record_rejection("too_early", "before the webhook was configured", ["old.png"])
    sender = WebhookSender(settings_for(tmp_path, receiver.url), sessions, receiver.url)
    delivered_before = metrics.webhook_deliveries.labels("delivered")._value.get()
    try:
        sender.step()  # registers the URL: events from now on
        some_events(queue)
        receiver.status = 503
        sender.step()
        first, *rest = deliveries(sessions)
        assert (first.attempts, first.last_status, first.state) == (1, 503, "pending")
        assert [d.attempts for d in rest] == [0, 0]  # held back with the first, not each timed out
        assert receiver.received == []

        receiver.status = 200
        wait_for(lambda: sender.step() is not None and len(receiver.received) == 3, 10, interval=0.05,
                 what="three deliveries")
    finally:
        sender.stop()
        receiver.stop()
    expected = [e.to_json() for e in log.since() if e.type != kinds.INPUT_REJECTED or e.payload["code"] != "too_early"]
    assert receiver.events() == expected
    assert [e["type"] for e in expected] == [kinds.JOB_QUEUED, kinds.JOB_CANCELLED, kinds.INPUT_REJECTED]
    for got in receiver.received:
        assert got.signature_ok(SECRET) and not got.signature_ok("wrong secret")
        assert got.headers["Idempotency-Key"] == got.headers["X-I2VD-Event-Id"] == str(got.event["id"])
        assert got.headers["X-I2VD-Event"] == got.event["type"]
        assert got.headers["Content-Type"] == "application/json"
    assert receiver.received[0].headers["X-I2VD-Delivery-Attempt"] == "2"
    assert {d.state for d in deliveries(sessions)} == {"delivered"}
    assert metrics.webhook_deliveries.labels("delivered")._value.get() == delivered_before + 3


def test_events_created_while_the_receiver_is_down_wait_behind_it_in_order(sessions, tmp_path):
    receiver = Receiver().start()
    receiver.status = 503
    queue = JobQueue(sessions)
    # The first failure holds the URL back 3 to 6 s: far longer than the steps below take.
    settings = settings_for(tmp_path, receiver.url, webhook_backoff_seconds=6, webhook_backoff_max_seconds=6)
    sender = WebhookSender(settings, sessions, receiver.url)
    try:
        sender.step()  # registers the URL
        queue.record_rejection("invalid_json", "before", ["a.png"])
        sender.step()  # tried once: down
        for i in range(3):
            queue.record_rejection("invalid_json", f"during {i}", [f"b{i}.png"])
        sender.step()
        assert receiver.requests == 1  # the outage's events wait too, rather than each being tried
        assert [d.attempts for d in deliveries(sessions)] == [1, 0, 0, 0]

        receiver.status = 200
        wait_for(lambda: sender.step() is not None and len(receiver.received) == 4, 30, interval=0.1,
                 what="four deliveries")
    finally:
        sender.stop()
        receiver.stop()
    assert [e["data"]["message"] for e in receiver.events()] == ["before", "during 0", "during 1", "during 2"]
    assert receiver.requests == 5


def test_only_chosen_types_are_sent_and_a_dead_receiver_is_given_up(sessions, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens
    settings = settings_for(tmp_path, url, webhook_events=["job.*"], webhook_give_up_hours=0.5 / 3600)
    sender = WebhookSender(settings, sessions, url)
    try:
        sender.step()
        some_events(JobQueue(sessions))
        wait_for(lambda: sender.step() is not None and {d.state for d in deliveries(sessions)} == {"failed"}, 10,
                 interval=0.05, what="deliveries given up")
    finally:
        sender.stop()
    rows = deliveries(sessions)
    assert len(rows) == 2  # job.queued and job.cancelled; input.rejected is filtered out
    assert all(r.attempts >= 1 and "ConnectError" in r.last_error for r in rows)


def test_signature_and_backoff():
    assert sign("key", "1700000000", b'{"id":1}') == \
        "sha256=" + __import__("hmac").new(b"key", b'1700000000.{"id":1}', "sha256").hexdigest()
    delays = [backoff_seconds(n, 2.0, 60.0) for n in range(1, 10)]
    assert 1.0 <= delays[0] <= 2.0 and 4.0 <= delays[2] <= 8.0 and all(30.0 <= d <= 60.0 for d in delays[5:])


def test_two_daemons_deliver_each_event_once(database_url, tmp_path):
    """Intake-only daemons (no model, quick to start) on one database, both delivering to one receiver."""
    receiver = Receiver().start()
    engine = make_engine(database_url)
    upgrade(engine)
    queue = JobQueue(session_factory(engine))
    envs = []
    for name, bad in (("a", '"ftp://nas/hook", '), ("b", "")):  # a bad URL is logged and skipped, never fatal
        own = {key: tmp_path / name / key for key in ("inbox", "outputs", "state")}
        for path in own.values():
            path.mkdir(parents=True)
        envs.append(daemon_env(own, I2VD_DATABASE_URL=database_url, I2VD_INTAKE_ONLY="true",
                               I2VD_WEBHOOK_URLS=f'[{bad}"{receiver.url}"]', I2VD_WEBHOOK_SECRET=SECRET,
                               I2VD_WEBHOOK_POLL_SECONDS="0.1"))
    cluster = Cluster(tmp_path)  # each daemon with its own log
    daemons = [cluster.start(env) for env in envs]
    try:
        for daemon in daemons:
            daemon.wait_ready()
        wait_for(lambda: all("webhooks_started" in d.output for d in daemons), 30, what="webhooks started")
        assert "webhook_url_invalid" in daemons[0].output and "ftp" in daemons[0].output
        for i in range(30):
            queue.record_rejection("invalid_json", f"pair {i}", [f"p{i}.png", f"p{i}.json"])
        wait_for(lambda: len(receiver.unique_events()) == 30, 60, what="30 events delivered")
        for daemon in daemons:
            assert daemon.stop() == 0
    finally:
        cluster.kill_all()
        receiver.stop()
        engine.dispose()
    messages = [e["data"]["message"] for e in receiver.events()]
    assert messages == [f"pair {i}" for i in range(30)]  # each once, in order
    assert all(r.signature_ok(SECRET) for r in receiver.received)


def test_doctor_reports_bad_and_unreachable_urls(tmp_path):
    from daemon.service.doctor import check_webhooks

    receiver = Receiver().start()
    dead = f"http://127.0.0.1:{free_port()}/hook"
    try:
        findings = check_webhooks(settings_for(tmp_path, receiver.url, webhook_secret=None,
                                               webhook_urls=["ftp://nas/hook", dead, receiver.url]))
    finally:
        receiver.stop()
    assert [f.level for f in findings] == ["warn", "warn", "ok", "warn"]
    assert "not http or https" in findings[0].message
    assert "cannot connect" in findings[1].message and "retried" in findings[1].message
    assert "unsigned" in findings[3].message
