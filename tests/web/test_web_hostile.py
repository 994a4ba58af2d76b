"""Hostile and unlucky input: every route answers it with a 4xx in JSON (or the error page), never a 5xx."""

from __future__ import annotations

import itertools
import re
import sqlite3
import threading
import time

import pytest
import requests

from daemon.db.tables import JobState
from daemon.web.app import ROUTERS
from daemon.web.security import SECURITY_HEADERS
from support.daemons import daemon_env
from support.web import WebProcess, finished_job, png, post_job
from support.web import web, web_factory  # noqa: F401 (fixtures)

HOSTILE_IDS = ["18446744073709551616", "9223372036854775808", "-1", "0", "1e3", "²", "%00", "..%2F..", "%C3%A9",
               "9" * 5000]
HOSTILE_VALUES = ["--5", "²", "9" * 5000, "\x00", "\u202e", "é" * 300, "../../etc/passwd", "1e999", "nan", " ",
                  "-9223372036854775809"]
HOSTILE_HEADERS = [{"Last-Event-ID": "é".encode().decode("latin-1")}, {"Last-Event-ID": "9" * 5000},
                   {"Idempotency-Key": "\xe9" * 300}, {"Authorization": "Bearer \xe9"},
                   {"Cookie": "i2vd_session=\xe9; x"}, {"Origin": "null"}, {"Content-Type": "multipart/form-data"},
                   {"Content-Type": "multipart/form-data; boundary=x"}, {"Content-Type": "application/json"}]


def routes() -> list[tuple[str, str, list[str]]]:
    """(method, path template, query parameter names) of every route the application includes."""
    return [(method, route.path, [p.name for p in route.dependant.query_params])
            for router in ROUTERS for route in router.routes for method in route.methods]


def assert_answered(response: requests.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    assert response.headers.get("x-content-type-options") == "nosniff", what
    kind = response.headers.get("content-type", "")
    if response.status_code >= 400:
        assert kind.startswith(("application/json", "text/html")), what


def send(web, method: str, path: str, **kwargs) -> requests.Response:
    response = requests.request(method, f"{web.url}{path}", timeout=30, stream=True, allow_redirects=False, **kwargs)
    response.close() if "event-stream" in response.headers.get("content-type", "") else response.content
    return response


def test_every_route_answers_hostile_paths_queries_headers_and_forms_without_a_5xx(web):
    job = finished_job(web)
    post_job(web)
    assert len(routes()) > 20
    for method, template, queries in routes():
        real = template.replace("{job_id}", str(job.id))
        cases = [template.replace("{job_id}", bad) for bad in HOSTILE_IDS] if "{job_id}" in template else []
        for path in cases:
            assert_answered(send(web, method, path), f"{method} {path}")
        for name, value in itertools.product(queries, HOSTILE_VALUES):
            assert_answered(send(web, method, real, params={name: value}), f"{method} {real}?{name}={value[:20]!r}")
        for headers in HOSTILE_HEADERS:
            assert_answered(send(web, method, real, headers=headers), f"{method} {real} {headers}")
        if method == "POST":
            for field, value in itertools.product(("prompt", "priority", "seed", "output_name", "num_frames",
                                                   "guidance_scale", "next", "token"), HOSTILE_VALUES):
                form = {"prompt": "waves", field: value}
                assert_answered(send(web, method, real, data=form, files={"image": ("x.png", png())}),
                                f"{method} {real} {field}={value[:20]!r}")
            assert_answered(send(web, method, real, data=[("prompt", "a"), ("prompt", "b")]), f"{real} twice")
            assert_answered(send(web, method, real, data=b"\xff\xfe{", headers={"Content-Type": "application/json"}),
                            f"{real} bad JSON")


def test_the_listed_500s_are_4xx_naming_what_is_wrong(web):
    job_id = post_job(web).json()["id"]
    for path in ("/api/jobs/18446744073709551616", "/api/jobs/9223372036854775808/video", "/jobs/99999999999999999999"):
        assert 400 <= requests.get(f"{web.url}{path}", timeout=10).status_code < 500, path
    for value in ("--5", "²", "9" * 5000):
        r = requests.post(f"{web.url}/api/jobs/{job_id}/priority", data={"priority": value}, timeout=10)
        assert r.status_code == 422 and r.json()["code"] == "invalid_priority", value
    seed = post_job(web, fields={"seed": "9" * 5000})
    assert seed.status_code == 422 and [e["field"] for e in seed.json()["field_errors"]] == ["seed"]
    long_name = post_job(web, name="é" * 200 + ".png")  # 400 bytes: more than a file name may hold
    assert long_name.status_code == 201
    with requests.get(f"{web.url}/api/events", headers={"Last-Event-ID": "\xb2"}, stream=True, timeout=10) as r:
        assert r.status_code == 200


def test_a_field_given_twice_and_invisible_format_characters_are_refused_by_name(web):
    twice = requests.post(f"{web.url}/api/jobs", files={"image": ("x.png", png())},
                          data=[("prompt", "a"), ("prompt", "b")], timeout=10)
    assert twice.status_code == 422 and twice.json()["field_errors"][0]["field"] == "prompt"
    assert "given twice" in twice.json()["error"]
    page = requests.post(f"{web.url}/submit", files={"image": ("x.png", png())},
                         data=[("prompt", "a"), ("prompt", "b")], timeout=10)
    assert page.status_code == 422 and "given twice" in page.text
    spoof = post_job(web, fields={"output_name": "x\u202egnp.exe"})
    assert spoof.status_code == 422 and spoof.json()["field_errors"][0]["field"] == "output_name"
    assert web.queue.counts()[JobState.QUEUED] == 0


def test_event_types_are_globs_and_an_unknown_type_is_an_error(web):
    post_job(web)
    with requests.get(f"{web.url}/api/events?after=0&types=job.*", stream=True, timeout=10) as r:
        lines = r.iter_lines()
        assert any(b'"type": "job.queued"' in line for line in itertools.islice(lines, 6))
    bogus = requests.get(f"{web.url}/api/events?types=job.queued,bogus", timeout=10)
    assert bogus.status_code == 422 and bogus.json()["code"] == "unknown_event_type"
    assert "bogus" in bogus.json()["error"]


def test_every_error_is_json_with_the_security_headers(web):
    for path in ("/api/jobs/abc", "/api/nothing", "/api/jobs?state=bogus"):
        r = requests.get(f"{web.url}{path}", timeout=10)
        assert 400 <= r.status_code < 500 and r.json()["code"], path
        for name, value in SECURITY_HEADERS.items():
            assert r.headers[name] == value, (path, name)


@pytest.mark.parametrize("path", ["/api/openapi.json", "/static/app.js", "/login"])
def test_the_host_check_covers_the_schema_static_files_and_login(web, path):
    r = requests.get(f"{web.url}{path}", headers={"Host": "evil.example"}, timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "bad_host"
    assert requests.get(f"{web.url}{path}", timeout=10).status_code == 200


def test_the_schema_describes_the_upload_and_the_bearer_token(web):
    schema = requests.get(f"{web.url}/api/openapi.json", timeout=10).json()
    body = schema["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["image"]["format"] == "binary" and "prompt" in body["properties"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/api/jobs"]["post"]["security"] == [{"HTTPBearer": []}]


def test_the_origin_check_compares_the_scheme_too(web):
    job_id = post_job(web).json()["id"]
    https = web.url.replace("http://", "https://")
    r = requests.post(f"{web.url}/api/jobs/{job_id}/cancel", headers={"Origin": https}, timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "cross_site_request"
    assert requests.post(f"{web.url}/api/jobs/{job_id}/cancel", headers={"Origin": web.url}, timeout=10).ok


def test_a_reused_idempotency_key_with_another_body_is_a_conflict(web):
    key = {"Idempotency-Key": "k-1"}
    first = post_job(web, headers=key)
    assert first.status_code == 201
    again = post_job(web, headers=key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other_prompt = post_job(web, headers=key, fields={"prompt": "another prompt"})
    assert other_prompt.status_code == 409 and other_prompt.json()["code"] == "idempotency_key_reused"
    other_image = post_job(web, headers=key, data=png(color=(1, 2, 3)))
    assert other_image.status_code == 409
    assert web.queue.counts()[JobState.QUEUED] == 1


def peak_rss_mb(pid: int) -> float:
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_a_huge_picture_is_checked_by_its_header_not_decoded_in_the_web(tmp_path):
    dirs = {name: tmp_path / name for name in ("inbox", "outputs", "state")}
    web = WebProcess(daemon_env(dirs), tmp_path, "--address", "127.0.0.1:0")
    try:
        url = web.wait_url()
        fields = {"prompt": "p", "width": "32", "height": "32", "num_frames": "8"}
        warm = requests.post(f"{url}/api/jobs", files={"image": ("small.png", png())}, data=fields, timeout=60)
        assert warm.status_code == 201
        before = peak_rss_mb(web.proc.pid)
        huge = png((6000, 6000))  # 108 MB of pixels in a few hundred KB
        r = requests.post(f"{url}/api/jobs", files={"image": ("huge.png", huge)}, data=fields, timeout=120)
        assert r.status_code == 201
        assert peak_rss_mb(web.proc.pid) - before < 60  # a decode would have taken 108 MB at least
    finally:
        web.stop()


def test_the_form_waits_for_another_writers_lock_like_the_api(web):
    locked = threading.Event()

    def other_writer() -> None:  # e.g. a daemon's intake holding SQLite's write lock for a moment
        conn = sqlite3.connect(web.settings.state_dir / "i2vd.sqlite3", isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(2)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    locked.wait(10)
    fields = {"prompt": "waves", "width": "32", "height": "32", "num_frames": "8"}
    form = requests.post(f"{web.url}/submit", files={"image": ("x.png", png())}, data=fields, timeout=60)
    api = requests.post(f"{web.url}/api/jobs", files={"image": ("y.png", png())}, data=fields, timeout=60)
    thread.join()
    assert form.status_code == 200 and "job #1" in form.text
    assert api.status_code == 201
