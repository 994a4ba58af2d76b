"""The Gradio WebUI's batch script, unchanged, against `i2vd web` beside a real daemon and the tiny model."""

from __future__ import annotations

import base64
import json
import threading

import pytest
import requests

from support.daemons import daemon_env, wait_for
from daemon.db.tables import JobState
from support.web import TOKEN, WebProcess, png
from support.web import web, web_factory  # noqa: F401 (fixtures)


def gradio_script(host: str, payload: dict, headers: dict | None = None) -> tuple[dict, bytes]:
    """What the WebUI's users run: post the payload, take data[0] as the video's URL, download it."""
    response = requests.post(f"{host}/api/predict", json=payload, headers=headers, timeout=600)
    result = response.json()
    video = requests.get(result["data"][0], headers=headers, timeout=60)
    return result, video.content


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


@pytest.mark.timeout(900)  # tiny SVD at 256 px: minutes on a loaded 2-core VM
def test_the_webuis_batch_script_gets_its_video_unchanged(dirs, run_daemon, tmp_path):
    # The payload fixes a resolution of 256 at least; tiny SVD is the tiny model that renders it soonest.
    env = daemon_env(dirs, I2VD_MODEL="tiny:svd")
    daemon = run_daemon(env)
    daemon.wait_ready(300)
    web = WebProcess(env, tmp_path, "--address", "127.0.0.1:0")
    try:
        host = web.wait_url()
        payload = {"data": [{"name": "input.png", "data": data_url(png((64, 48)))},
                            "waves rolling onto a beach", 256, 2, 8, 10, 3.0],
                   "fn_index": 0, "session_hash": "abc123"}
        result, video = gradio_script(host, payload)
        assert result["is_generating"] is False and result["duration"] > 0 and result["average_duration"] > 0
        assert result["data"][0] == f"{host}/api/jobs/1/video"
        assert video[4:8] == b"ftyp"  # an MP4
        job = requests.get(f"{host}/api/jobs/1", timeout=10).json()
        assert job["state"] == "succeeded" and job["params"]["width"] == 256
        assert job["params"]["num_frames"] == 2 and job["params"]["steps"] == 10
        assert (dirs["inbox"] / "done" / "web" / "input.png").is_file()  # kept like an upload
        kinds = [e["type"] for e in web_events(host)]
        assert kinds[0] == "job.queued" and "job.succeeded" in kinds
    finally:
        web.stop()
    assert daemon.stop() == 0
    assert "Traceback" not in web.output


def web_events(host: str) -> list[dict]:
    with requests.get(f"{host}/api/events?after=0", stream=True, timeout=10) as stream:
        found = []
        for line in stream.iter_lines():
            if line.startswith(b"data:"):
                found.append(json.loads(line[5:]))
                if found[-1]["type"] == "job.succeeded":
                    return found
    return found


def test_bad_calls_get_a_4xx_naming_the_field(web):
    bad = {"not an image": ([data_url(b"not a picture"), "p", 256, 8, 8, 10, 9], "not_an_image", "image"),
           "bad data URL": (["data:image/png;base64,@@@", "p", 256, 8, 8, 10, 9], "not_an_image", "image"),
           "no data URL": ([{"name": "x.png", "data": "/tmp/x.png"}, "p", 256, 8, 8, 10, 9], "not_an_image",
                           "image"),
           "frames": ([data_url(png()), "p", 256, 999, 8, 10, 9], "invalid_sidecar", "num_frames"),
           "resolution": ([data_url(png()), "p", 300, 8, 8, 10, 9], "invalid_sidecar", "resolution"),
           "too few": ([data_url(png()), "p", 256], "invalid_request", "data")}
    for case, (data, code, field) in bad.items():
        answer = requests.post(f"{web.url}/api/predict", json={"data": data}, timeout=30)
        assert 400 <= answer.status_code < 500, case
        assert answer.json()["code"] == code, case
        assert field in [e["field"] for e in answer.json()["field_errors"]], case
    assert web.queue.counts()[JobState.QUEUED] == 0


def test_a_call_that_outlives_predict_timeout_answers_504_with_the_job_which_runs_on(web_factory):
    web = web_factory(predict_timeout_seconds=1, web_token=TOKEN)
    data = [data_url(png()), "a bare data URL", 256, 8, 8, 10, 9, "blurry", 7, "i2vgen-xl"]
    assert requests.post(f"{web.url}/api/predict", json={"data": data}, timeout=30).status_code == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    answer = requests.post(f"{web.url}/api/predict", json={"data": data}, headers=bearer, timeout=30)
    assert answer.status_code == 504 and answer.json()["code"] == "timeout"  # no daemon runs it
    assert f"{web.url}/api/jobs/1" in answer.json()["hint"]
    job = web.queue.get(1)
    assert job.state == JobState.QUEUED and job.model == "i2vgen-xl"
    assert job.params["seed"] == 7 and job.params["negative_prompt"] == "blurry"


def test_a_failed_job_answers_with_its_error_code(web_factory):
    web = web_factory(predict_timeout_seconds=120)

    def worker_fails_it() -> None:  # what a daemon does when generation fails for good
        job = wait_for(lambda: web.queue.claim("gpu:1", 60), timeout=60, what="the predict job")
        web.queue.fail(job.id, "generation_error", "The model failed: CUDA error.", owner="gpu:1")

    thread = threading.Thread(target=worker_fails_it)
    thread.start()
    answer = requests.post(f"{web.url}/api/predict", json={"data": [data_url(png()), "p", 256, 8, 8, 10, 9]},
                           timeout=120)
    thread.join()
    assert answer.status_code == 422 and answer.json()["code"] == "generation_error"
    assert "CUDA error" in answer.json()["error"] and "/api/jobs/1" in answer.json()["hint"]


def test_a_predict_body_beyond_one_image_is_refused_before_it_is_held(web_factory):
    web = web_factory(max_image_bytes=10_000)
    big = {"data": ["data:image/png;base64," + "A" * 400_000, "p", 256, 8, 8, 10, 9]}
    answer = requests.post(f"{web.url}/api/predict", json=big, timeout=30)
    assert answer.status_code == 413 and answer.json()["code"] == "image_too_large"
    assert "The request is larger than" in answer.json()["error"]
    for body in (b"not json", b"[1, 2]", b"\xff\xfe"):
        answer = requests.post(f"{web.url}/api/predict", data=body, timeout=30)
        assert answer.status_code == 422 and answer.json()["code"] == "invalid_request"
