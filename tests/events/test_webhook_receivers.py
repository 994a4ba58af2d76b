"""Hostile or broken webhook receivers, real ones on 127.0.0.1: they cost the daemon no secrets in its
log, no memory and no more time than `webhook_timeout_seconds` per POST."""

from __future__ import annotations

from sqlalchemy import select

from support.daemons import daemon_env, make_settings, wait_for
from support.webhooks import Receiver
from daemon.db.engine import make_engine, session_factory
from daemon.db.tables import WebhookEndpoint
from daemon.jobs.queue import JobQueue


def registered(sessions) -> bool:
    with sessions() as s:
        return s.scalar(select(WebhookEndpoint.url)) is not None


def test_credentials_and_tokens_of_a_webhook_url_stay_out_of_the_log(run_daemon, tmp_path):
    receiver = Receiver().start()
    url = receiver.url.replace("://", "://hook-user:hook-pass@") + "?token=query-token"
    dirs = {name: tmp_path / name for name in ("inbox", "outputs", "state")}
    for path in dirs.values():
        path.mkdir()
    daemon = run_daemon(daemon_env(dirs, I2VD_INTAKE_ONLY="true", I2VD_LOG_LEVEL="debug",
                                   I2VD_WEBHOOK_URLS=f'["{url}"]', I2VD_WEBHOOK_POLL_SECONDS="0.1"))
    try:
        daemon.wait_ready()
        sessions = session_factory(make_engine(make_settings(dirs).database_url))
        wait_for(lambda: registered(sessions), 30, what="the URL registered")  # earlier events are not its
        JobQueue(sessions).record_rejection("invalid_json", "bad.json is not JSON.", ["bad.png", "bad.json"])
        wait_for(lambda: receiver.events(), 30, what="the event delivered")
        assert daemon.stop() == 0
    finally:
        receiver.stop()
    logged = daemon.output + (dirs["state"] / "i2vd.log").read_text()
    assert "webhooks_started" in logged and f"127.0.0.1:{receiver.port}/hook" in logged
    for secret in ("hook-user", "hook-pass", "query-token"):
        assert secret not in logged
