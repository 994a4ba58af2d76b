"""`i2vd run` as systemd sees it: the notify protocol, SIGHUP reload, journald lines, metrics."""

from __future__ import annotations

import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.daemons import daemon_env, wait_for
from support.files import drop_pair, probe, write_image
from support.notify import NotifyListener

JOB_TIMEOUT = 240  # seconds; the tiny model takes seconds per step on a busy shared CPU


@pytest.fixture
def listener():
    sock = NotifyListener()
    yield sock
    sock.close()


def _events(output: str, prefix: str = "") -> list[dict]:
    return [json.loads(line[len(prefix):]) for line in output.splitlines() if line.startswith(prefix + "{")]


def test_systemd_sees_ready_watchdog_status_reload_and_stopping(dirs, run_daemon, listener):
    env = daemon_env(dirs, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="1000000",
                     INVOCATION_ID=uuid.uuid4().hex)
    daemon = run_daemon(env)

    ready = listener.wait(lambda m: m.get("READY") == "1", what="READY=1")
    ready_mono, ready_wall, ready_fields = listener.messages[ready]
    assert ready_fields["STATUS"] == "Idle; 0 queued"
    # Start-up kept the start timeout extended and said what it was doing.
    before = [fields for _, _, fields in listener.messages[:ready]]
    assert any("EXTEND_TIMEOUT_USEC" in m for m in before)
    assert any(m.get("STATUS", "").startswith("Starting: loading model tiny") for m in before)

    # Under systemd (INVOCATION_ID) every event is one JSON line on stdout, prefixed with its priority.
    wait_for(lambda: "daemon_ready" in daemon.output, what="daemon_ready line")
    events = {e["event"]: e for e in _events(daemon.output, "<6>")}
    assert {"daemon_starting", "model_loaded", "daemon_ready"} <= events.keys()
    assert _events(daemon.output, "<4>")[0]["event"] == "smoke_test_model"
    # READY=1 only once migrations ran and the model was loaded.
    assert datetime.fromisoformat(events["model_loaded"]["timestamp"]).timestamp() <= ready_wall

    # WATCHDOG=1 at half of WATCHDOG_USEC, from the main loop.
    time.sleep(3)
    pings = [t for t, _, m in listener.messages if m.get("WATCHDOG") == "1" and t >= ready_mono]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(pings) >= 5, pings
    assert 0.4 <= statistics.median(gaps) <= 0.6 and max(gaps) < 1.0, gaps

    # STATUS= follows the running job step by step, then goes back to idle.
    mark = len(listener.messages)
    drop_pair(dirs["inbox"], "harbour")
    listener.wait(lambda m: re.fullmatch(r"Job #1 harbour: denoising step \d+/10; 0 queued", m.get("STATUS", "")),
                  after=mark, what="STATUS with the job's step")
    wait_for(lambda: list(dirs["outputs"].glob("harbour_*.mp4")), timeout=JOB_TIMEOUT, what="MP4")
    listener.wait(lambda m: m.get("STATUS") == "Idle; 0 queued", after=mark, what="idle STATUS")

    # SIGHUP: RELOADING=1 (with the monotonic time systemd asks for), then READY=1 when done.
    mark = len(listener.messages)
    daemon.proc.send_signal(signal.SIGHUP)
    reloading = listener.wait(lambda m: m.get("RELOADING") == "1", after=mark, what="RELOADING=1")
    assert int(listener.messages[reloading][2]["MONOTONIC_USEC"]) > 0
    listener.wait(lambda m: m.get("READY") == "1", after=reloading, what="READY=1 after reload")

    mark = len(listener.messages)
    assert daemon.stop(signal.SIGTERM) == 0
    stopping = listener.wait(lambda m: m.get("STOPPING") == "1", after=mark, what="STOPPING=1")
    assert listener.messages[stopping][2]["STATUS"].startswith("Stopping")
    assert "Traceback" not in daemon.output


def test_sighup_changes_live_settings_and_names_the_rest(dirs, run_daemon, tmp_path):
    config = tmp_path / "i2vd.toml"
    config.write_text('log_level = "info"\n')
    daemon = run_daemon(daemon_env(dirs, I2VD_CONFIG=str(config), I2VD_METRICS_ENABLED="false"))
    daemon.wait_ready()
    log_file = dirs["state"] / "i2vd.log"
    assert "metrics_serving" not in daemon.output  # metrics off by setting

    def logged(event: str) -> list[dict]:
        return [e for e in _events(log_file.read_text()) if e["event"] == event]

    drop_pair(dirs["inbox"], "before")
    wait_for(lambda: list(dirs["outputs"].glob("before_*.mp4")), timeout=JOB_TIMEOUT, what="first MP4")
    assert not logged("inbox_file_seen")  # a debug event: hidden at info

    config.write_text('log_level = "debug"\ndefault_fps = 12\ndtype = "bfloat16"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    reloaded = wait_for(lambda: logged("settings_reloaded"), what="settings_reloaded")[0]
    assert reloaded["changed"] == {"log_level": "debug", "default_fps": 12}
    assert reloaded["restart_required"] == ["dtype"]

    # The new defaults apply to the next job, on the model that stayed loaded.
    write_image(dirs["inbox"] / "after.png")
    (dirs["inbox"] / "after.json").write_text(json.dumps(
        {"prompt": "a harbour", "width": 32, "height": 32, "num_frames": 8, "steps": 10}))
    video = wait_for(lambda: next(iter(dirs["outputs"].glob("after_*.mp4")), None), timeout=JOB_TIMEOUT, what="second MP4")
    assert probe(video)[1] == 12.0
    model = json.loads(video.with_suffix(".json").read_text())["model"]
    assert (model["id"], model["dtype"]) == ("tiny", "float32")  # dtype waits for a restart
    assert logged("restart_required")[0]["settings"] == ["dtype"]
    assert {e["file"] for e in logged("inbox_file_seen")} >= {"after.png", "after.json"}
    assert len(logged("model_loaded")) == 1

    # A broken file changes nothing and stops nothing.
    config.write_text('log_level = "warning"\ndefault_fps = ]\n')
    daemon.proc.send_signal(signal.SIGHUP)
    failed = wait_for(lambda: logged("reload_failed"), what="reload_failed")[0]
    assert "line 2" in failed["error"]
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    assert len(logged("settings_reloaded")) == 1


def test_metrics_endpoint_after_jobs(dirs, run_daemon):
    daemon = run_daemon(daemon_env(dirs))
    daemon.wait_ready()
    url = next(e["url"] for e in _events(daemon.output) if e["event"] == "metrics_serving")
    assert url.startswith("http://127.0.0.1:")  # localhost by default

    drop_pair(dirs["inbox"], "quay")
    write_image(dirs["inbox"] / "broken.png").write_bytes(b"not a png")
    (dirs["inbox"] / "broken.json").write_text('{"prompt": "x"}')
    wait_for(lambda: list(dirs["outputs"].glob("quay_*.mp4")), timeout=JOB_TIMEOUT, what="MP4")
    wait_for(lambda: (dirs["inbox"] / "failed" / "broken.error.json").exists(), what="rejection")

    def scrape() -> dict[tuple[str, tuple], float]:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    samples = wait_for(lambda: (s := scrape()).get(("i2vd_jobs", (("state", "succeeded"),))) == 1 and s,
                       what="succeeded job in the metrics")
    assert samples[("i2vd_jobs", (("state", "queued"),))] == 0
    assert samples[("i2vd_queue_depth", ())] == 0
    assert samples[("i2vd_job_duration_seconds_count", (("outcome", "succeeded"),))] == 1
    assert samples[("i2vd_job_duration_seconds_sum", (("outcome", "succeeded"),))] > 0
    assert samples[("i2vd_job_duration_seconds_count", (("outcome", "failed"),))] == 0
    assert samples[("i2vd_denoising_steps_total", ())] == 10
    assert samples[("i2vd_denoising_steps_per_second", ())] > 0
    assert samples[("i2vd_intake_rejections_total", (("code", "not_an_image"),))] == 1
    assert samples[("i2vd_oom_downgrades_total", ())] == 0
    info = next(labels for (name, labels), _ in samples.items() if name == "i2vd_info")
    assert dict(info)["model"] == "tiny" and dict(info)["device"] == "cpu"
    assert not any(name.startswith("i2vd_gpu_") for name, _ in samples)  # no CUDA here
    assert daemon.stop() == 0


def test_taken_metrics_port_fails_fast_with_one_line(dirs):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run([sys.executable, "-m", "daemon.cli", "run"], capture_output=True, text=True,
                                env=daemon_env(dirs, I2VD_METRICS_ADDRESS=address), timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"i2vd: cannot serve metrics on {address}") and "I2VD_METRICS_ENABLED" in last
    assert "model_loading" not in result.stderr  # before the slow part
