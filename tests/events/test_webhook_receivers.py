"""Hostile or broken webhook receivers, real ones on 127.0.0.1: they cost the daemon no secrets in its
log, no memory and no more time than `webhook_timeout_seconds` per POST."""

from __future__ import annotations

import contextlib
import gzip
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from sqlalchemy import select

from support.daemons import daemon_env, make_settings, wait_for
from support.webhooks import Receiver, settings_for
from daemon.db.engine import make_engine, session_factory, upgrade
from daemon.db.tables import WebhookDelivery, WebhookEndpoint
from daemon.events.webhooks import WebhookSender
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


@pytest.fixture
def sessions(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'i2vd.sqlite3'}")
    upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


@contextlib.contextmanager
def sender_with_an_event(sessions, receiver: Receiver, tmp_path, **settings) -> Iterator[WebhookSender]:
    """A sender to `receiver` with one event to post at its next step."""
    sender = WebhookSender(settings_for(tmp_path, receiver.url, **settings), sessions, receiver.url)
    try:
        sender.step()  # registers the URL
        JobQueue(sessions).record_rejection("invalid_json", "bad.json is not JSON.", ["bad.png", "bad.json"])
        yield sender
    finally:
        sender.stop()


def the_delivery(sessions) -> WebhookDelivery:
    with sessions() as s:
        return s.scalars(select(WebhookDelivery)).one()


INFLATED = 20 * 2**20
BOMB = gzip.compress(bytes(INFLATED))  # about 20 KB on the wire


def gzip_bomb(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(500)
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(BOMB)))
    handler.end_headers()
    handler.wfile.write(BOMB)


def endless_body(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(500)
    handler.send_header("Content-Length", str(INFLATED))
    handler.end_headers()
    with contextlib.suppress(OSError):  # the sender hangs up early
        for _ in range(INFLATED // 2**16):
            handler.wfile.write(b"x" * 2**16)


@pytest.mark.parametrize("answer", [gzip_bomb, endless_body])
def test_a_huge_or_compressed_answer_costs_no_memory(sessions, tmp_path, answer):
    receiver = Receiver().start()
    receiver.answer = answer
    try:
        with sender_with_an_event(sessions, receiver, tmp_path) as sender:
            tracemalloc.start()
            try:
                sender.step()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        receiver.stop()
    delivery = the_delivery(sessions)
    assert receiver.requests == 1 and delivery.last_status == 500 and delivery.state == "pending"
    assert peak < 4 * 2**20  # the most bytes held at once, for an answer of 20 MB
    assert len(delivery.last_error) <= 220


def drip(handler: BaseHTTPRequestHandler) -> None:
    """A complete 200, a byte every quarter second: each read is quick, the whole answer takes 10 s."""
    with contextlib.suppress(OSError):  # the sender hangs up at its deadline
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.25)
    handler.close_connection = True


def test_the_timeout_bounds_the_whole_post_not_each_read(sessions, tmp_path):
    receiver = Receiver().start()
    receiver.answer = drip
    try:
        with sender_with_an_event(sessions, receiver, tmp_path, webhook_timeout_seconds=1) as sender:
            sender.step()
    finally:
        receiver.stop()
    delivery = the_delivery(sessions)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("pending", 1, None)
    assert delivery.last_error == "no answer within 1 s"
