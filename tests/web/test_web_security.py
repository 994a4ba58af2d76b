"""Who may do what on the web page: loopback unless a token is set, the token, CSRF, and paths."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
import requests

from support.daemons import make_settings
from daemon.errors import ConfigError
from daemon.db.tables import JobState
from daemon.web.server import make_server
from support.web import finished_job, post_job
from support.web import TOKEN, web, web_factory  # noqa: F401 (fixtures)

SECRET = "TOP-SECRET-NOT-FOR-THE-WEB"


def test_a_non_loopback_address_without_a_token_is_refused_in_one_line(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("I2VD_")},
           "I2VD_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "web", "--address", "0.0.0.0:0"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "i2vd: web_address 0.0.0.0 is reachable from other machines, and web_token is not set: set "
        "I2VD_WEB_TOKEN (16 or more characters) or bind to 127.0.0.1"]

    dirs = {name: tmp_path / name for name in ("inbox", "outputs", "state")}
    with pytest.raises(ConfigError):
        make_server(make_settings(dirs, web_address="[::]:0"))
    server, sock = make_server(make_settings(dirs, web_address="0.0.0.0:0", web_token=TOKEN))
    sock.close()  # with a token it would serve


def test_with_a_token_the_api_needs_it_and_the_page_needs_the_login(web_factory):
    web = web_factory(web_token=TOKEN)
    denied = requests.get(f"{web.url}/api/jobs", timeout=10)
    assert denied.status_code == 401 and denied.json()["code"] == "unauthorized"
    assert denied.headers["www-authenticate"] == "Bearer"
    wrong = requests.get(f"{web.url}/api/jobs", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert post_job(web).status_code == 401 and web.queue.counts()[JobState.QUEUED] == 0
    assert requests.get(f"{web.url}/api/events", timeout=10).status_code == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{web.url}/api/jobs", headers=bearer, timeout=10).json()["total"] == 0
    assert post_job(web, headers=bearer).status_code == 201

    page = requests.get(f"{web.url}/", allow_redirects=False, timeout=10)
    assert page.status_code == 303 and page.headers["location"] == "/login"
    browser = requests.Session()
    failed = browser.post(f"{web.url}/login", data={"token": "guess"}, allow_redirects=False, timeout=10)
    assert failed.status_code == 401 and "not right" in failed.text and not browser.cookies
    ok = browser.post(f"{web.url}/login", data={"token": TOKEN}, allow_redirects=False, timeout=10)
    cookie = ok.headers["set-cookie"]
    assert ok.status_code == 303 and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert TOKEN not in cookie  # the browser holds a value derived from the token, not the token
    assert "waves on a beach" in browser.get(f"{web.url}/", timeout=10).text
    assert browser.get(f"{web.url}/api/jobs", timeout=10).json()["total"] == 1


def test_a_cross_site_form_post_is_refused(web):
    job_id = post_job(web).json()["id"]
    origin = web.url
    evil = [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "null"}, {"Sec-Fetch-Site": "same-site", "Origin": origin}]
    for headers in evil:
        r = requests.post(f"{web.url}/jobs/{job_id}/cancel", headers=headers, allow_redirects=False, timeout=10)
        assert r.status_code == 403, headers
        assert "cross_site_request" in r.text
        api = requests.post(f"{web.url}/api/jobs/{job_id}/cancel", headers=headers, timeout=10)
        assert api.status_code == 403 and api.json()["code"] == "cross_site_request"
    upload = post_job(web, headers={"Origin": "http://evil.example"})
    assert upload.status_code == 403
    assert web.queue.get(job_id).state == JobState.QUEUED and web.queue.counts()[JobState.QUEUED] == 1

    same = requests.post(f"{web.url}/jobs/{job_id}/cancel", data={"next": "//evil.example/"},
                         headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"}, allow_redirects=False,
                         timeout=10)
    assert same.status_code == 303 and same.headers["location"] == f"/jobs/{job_id}"  # never off-site
    assert web.queue.get(job_id).state == JobState.CANCELLED
    # Behind a TLS reverse proxy the Origin differs from what this server sees; the browser's own
    # Sec-Fetch-Site still tells a same-origin form from a foreign one.
    behind_proxy = requests.post(f"{web.url}/jobs/{job_id}/retry", allow_redirects=False, timeout=10,
                                 headers={"Origin": "https://i2vd.example", "Sec-Fetch-Site": "same-origin"})
    assert behind_proxy.status_code == 303


def test_a_rebound_host_name_is_refused_on_loopback(web):
    r = requests.get(f"{web.url}/api/jobs", headers={"Host": "evil.example"}, timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "bad_host"
    assert requests.get(f"{web.url}/api/jobs", headers={"Host": "localhost:7860"}, timeout=10).status_code == 200


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (no client-side normalisation of '..' or '%2F')."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", parts.netloc)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_no_path_in_a_url_reaches_a_file(web, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (web.settings.outputs_dir / "secret.txt").write_text(SECRET)
    job = finished_job(web, poster="/" + str(secret).lstrip("/"))  # metadata naming a file elsewhere
    abs_secret = str(secret)
    paths = [
        f"/static/../../../../{abs_secret}", "/static/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/static/..%2F..%2F..%2Fsecret.txt", f"/static/{abs_secret}", f"/static//{abs_secret}",
        f"/static/%2F{abs_secret.lstrip('/').replace('/', '%2F')}",
        f"/api/jobs/..%2F..%2Fsecret.txt/video", f"/api/jobs/{job.id}/video/../../secret.txt",
        f"/api/jobs/{job.id}%2F..%2F..%2Fsecret.txt/video", f"/api/jobs/%2F{abs_secret.lstrip('/')}/video",
        f"/api/jobs/{job.id}/poster", f"/api/jobs/{job.id}/..%2f..%2fsecret.txt",
        f"/jobs/..%2F..%2Fsecret.txt", f"/{abs_secret}", f"//{abs_secret}", "/results?q=../../secret.txt",
        "/api/jobs/1/video?path=/etc/passwd", "/static/../../../../etc/passwd",
    ]
    for path in paths:
        status, body = raw_get(web.url, path)
        assert SECRET.encode() not in body and b"root:x:" not in body, path
    assert raw_get(web.url, f"/api/jobs/{job.id}/poster")[0] == 404  # an absolute name in metadata counts for nothing


def test_security_headers_on_every_kind_of_response(web):
    job = finished_job(web)
    for path in ("/", "/results", f"/jobs/{job.id}", "/api/jobs", f"/api/jobs/{job.id}/video",
                 "/static/app.js", "/api/jobs/999", "/login"):
        headers = requests.get(f"{web.url}{path}", timeout=10).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert headers["x-content-type-options"] == "nosniff", path
    page = requests.get(f"{web.url}/", timeout=10).text
    assert "<script>" not in page and "onclick" not in page and "style=" not in page  # nothing inline


def test_an_oversized_request_is_refused_before_it_is_read(web_factory):
    web = web_factory(max_image_bytes=1000)
    r = requests.post(f"{web.url}/api/jobs", files={"image": ("x.png", b"0" * 50_000)}, data={"prompt": "x"},
                      timeout=30)
    assert r.status_code == 413 and r.json()["code"] == "image_too_large"


def test_a_login_is_a_session_that_logout_ends_and_that_expires(web_factory):
    web = web_factory(web_token=TOKEN, web_session_hours=1)
    browser = requests.Session()
    ok = browser.post(f"{web.url}/login", data={"token": TOKEN}, allow_redirects=False, timeout=10)
    assert "Max-Age=3600" in ok.headers["set-cookie"]
    cookie = browser.cookies.get("i2vd_session")
    assert browser.get(f"{web.url}/api/jobs", timeout=10).status_code == 200
    assert browser.post(f"{web.url}/logout", allow_redirects=False, timeout=10).status_code == 303
    replayed = requests.get(f"{web.url}/api/jobs", cookies={"i2vd_session": cookie}, timeout=10)
    assert replayed.status_code == 401  # the copied cookie died with the logout
    other = requests.Session()
    other.post(f"{web.url}/login", data={"token": TOKEN}, timeout=10)
    assert other.cookies.get("i2vd_session") not in (None, cookie)  # every login is a new session


@pytest.mark.parametrize("token, message", [(" " * 16, "must not be blank"),
                                            (f" {TOKEN}", "must not begin or end with spaces"),
                                            ("short-token", "must be at least 16 characters long")])
def test_a_blank_padded_or_short_token_is_refused_at_start_up_in_one_line(tmp_path, token, message):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("I2VD_")},
           "I2VD_STATE_DIR": str(tmp_path / "state"), "I2VD_WEB_TOKEN": token}
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "web", "--address", "127.0.0.1:0"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"i2vd: invalid settings: web_token: Value error, {message}" + (
            " (a bearer header could never match it)" if "spaces" in message else "")]
    assert TOKEN not in result.stderr
