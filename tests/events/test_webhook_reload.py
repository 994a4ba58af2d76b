"""Webhook settings follow `systemctl reload` (SIGHUP) like the other live settings: URLs come and go,
the secret and the event filter change, without a restart."""

from __future__ import annotations

import json
import signal

from sqlalchemy import select

from support.daemons import daemon_env, make_settings, wait_for
from support.webhooks import Receiver
from daemon.db.engine import make_engine, session_factory
from daemon.db.tables import WebhookEndpoint
from daemon.jobs.queue import JobQueue, NewJob


def registered(sessions, url: str) -> bool:
    with sessions() as s:
        return s.scalar(select(WebhookEndpoint.url).where(WebhookEndpoint.url == url)) is not None


def test_sighup_applies_webhook_urls_secret_and_events(run_daemon, tmp_path):
    first, second = Receiver().start(), Receiver().start()
    dirs = {name: tmp_path / name for name in ("inbox", "outputs", "state")}
    for path in dirs.values():
        path.mkdir()
    config = tmp_path / "i2vd.toml"
    config.write_text("webhook_poll_seconds = 0.1\n")  # no webhooks at start
    daemon = run_daemon(daemon_env(dirs, I2VD_CONFIG=str(config), I2VD_INTAKE_ONLY="true"))
    sessions = session_factory(make_engine(make_settings(dirs).database_url))
    queue = JobQueue(sessions)

    def reload(**values: object) -> None:
        config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
        reloads = daemon.output.count("settings_reloaded")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: daemon.output.count("settings_reloaded") > reloads, 30, what="settings_reloaded")

    try:
        daemon.wait_ready()
        reload(webhook_poll_seconds=0.1, webhook_urls=[first.url], webhook_secret="first-secret")
        wait_for(lambda: registered(sessions, first.url), 30, what="the first URL registered")
        queue.record_rejection("invalid_json", "one", ["one.png"])
        wait_for(lambda: first.events(), 30, what="the first receiver's event")

        reload(webhook_poll_seconds=0.1, webhook_urls=[second.url], webhook_secret="second-secret",
               webhook_events=["input.*"])
        wait_for(lambda: registered(sessions, second.url), 30, what="the second URL registered")
        job, _ = queue.create(NewJob(idempotency_key="k", params={}, priority=0, output_stem="beach",
                                     output_subdir="", source_image="/in/b.png", source_sidecar="/in/b.json",
                                     image_path="/done/b.png", sidecar_path="/done/b.json"))
        queue.mark_queued(job.id)  # job.queued: filtered out now
        queue.record_rejection("invalid_json", "two", ["two.png"])
        wait_for(lambda: second.events(), 30, what="the second receiver's event")
        assert daemon.stop() == 0
    finally:
        first.stop()
        second.stop()
    assert [e["data"]["message"] for e in first.events()] == ["one"]
    assert [e["data"]["message"] for e in second.events()] == ["two"]
    assert first.received[0].signature_ok("first-secret")
    assert second.received[0].signature_ok("second-secret")
    assert '"event": "restart_required"' not in daemon.output
