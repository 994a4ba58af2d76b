"""The whole path through a real `i2vd run` subprocess with the tiny model."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from support.daemons import daemon_env, make_queue, make_settings, wait_for

from support.files import drop_pair, probe, write_image
from daemon.db.tables import JobState


def test_pair_becomes_mp4_and_bad_inputs_land_in_failed(dirs, run_daemon):
    inbox, outputs = dirs["inbox"], dirs["outputs"]
    # Present before start: picked up by the start-up scan.
    drop_pair(inbox, "sunset", prompt="a red sunset over the sea", num_frames=12, fps=10, seed=7,
              negative_prompt="blurry")
    daemon = run_daemon(daemon_env(dirs))
    daemon.wait_ready()

    video = wait_for(lambda: next(iter(outputs.glob("sunset_*.mp4")), None), what="sunset MP4")
    assert re.fullmatch(r"sunset_\d{8}_\d{6}\.mp4", video.name)
    frames, fps, size = probe(video)
    assert (frames, fps, size) == (12, 10.0, (32, 32))

    metadata = json.loads(video.with_suffix(".json").read_text())
    assert metadata["params"] == {
        "version": 3, "prompt": "a red sunset over the sea", "negative_prompt": "blurry", "width": 32, "height": 32,
        "num_frames": 12, "fps": 10, "steps": 10, "guidance_scale": 9.0, "seed": 7,
        "interpolate": 1, "keep_aspect": False,
    }
    assert metadata["inputs"]["image"] == "sunset.png" and metadata["inputs"]["sidecar"] == "sunset.json"
    assert metadata["model"]["id"] == "tiny" and metadata["model"]["smoke_test"] is True
    assert {"torch", "diffusers", "transformers", "i2vd"} <= metadata["versions"].keys()
    assert metadata["timings"]["generation_seconds"] > 0
    assert not (inbox / "sunset.png").exists() and not (inbox / "sunset.json").exists()
    assert (inbox / "done" / "sunset.png").exists() and (inbox / "done" / "sunset.json").exists()

    # A malformed sidecar and an undecodable image, then a good pair: the daemon keeps serving.
    write_image(inbox / "broken.png").write_bytes(b"this is not a png")
    (inbox / "broken.json").write_text('{"prompt": "x"}')
    write_image(inbox / "badjson.png")
    (inbox / "badjson.json").write_text('{"prompt": "unterminated')
    drop_pair(inbox, "after", seed=3)

    wait_for(lambda: list(outputs.glob("after_*.mp4")), what="MP4 after the bad inputs")
    failed = inbox / "failed"
    broken = json.loads((failed / "broken.error.json").read_text())
    assert broken["code"] == "not_an_image" and "broken.png" in broken["error"]
    assert (failed / "broken.png").exists() and (failed / "broken.json").exists()
    badjson = json.loads((failed / "badjson.error.json").read_text())
    assert badjson["code"] == "invalid_json" and "line 1" in badjson["error"]

    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output

    queue = make_queue(make_settings(dirs))
    jobs = queue.recent(10)
    assert sorted(j.state for j in jobs) == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    sunset = next(j for j in jobs if j.output_stem == "sunset")
    assert sunset.output_path == str(video) and [a.outcome for a in sunset.attempts] == ["succeeded"]

    log_lines = [json.loads(line) for line in (dirs["state"] / "i2vd.log").read_text().splitlines()]
    events = {(line["event"], line.get("job_id")) for line in log_lines}
    for event in ("job_queued", "job_started", "job_succeeded"):
        assert (event, sunset.id) in events
    assert any(line["event"] == "intake_rejected" and line["error_code"] == "not_an_image" for line in log_lines)


def test_submit_status_and_jobs_show(dirs, run_daemon, tmp_path):
    env = daemon_env(dirs)
    image = write_image(tmp_path / "my photo é.jpg", fmt="JPEG")
    cli = [sys.executable, "-m", "daemon.cli"]
    bad = subprocess.run([*cli, "submit", str(image), "--prompt", "x", "--num-frames", "99"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--num-frames" in bad.stderr
    assert not list(dirs["inbox"].iterdir())

    ok = subprocess.run([*cli, "submit", str(image), "--prompt", "a walk in the park", "--width", "32",
                         "--height", "32", "--num-frames", "8", "--steps", "10", "--seed", "5"],
                        env=env, capture_output=True, text=True, check=True)
    assert "submitted" in ok.stdout
    assert sorted(p.name for p in dirs["inbox"].iterdir()) == ["my photo é.jpg", "my photo é.json"]

    daemon = run_daemon(env)
    daemon.wait_ready()
    video = wait_for(lambda: next(iter(dirs["outputs"].glob("my photo é_*.mp4")), None), what="MP4")
    assert probe(video)[0] == 8
    assert daemon.stop() == 0

    status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, check=True)
    assert "succeeded: 1" in status.stdout and "my photo é" in status.stdout
    show = subprocess.run([*cli, "jobs", "show", "1", "--json"], env=env, capture_output=True, text=True,
                          check=True)
    job = json.loads(show.stdout)
    assert job["state"] == "succeeded" and job["params"]["seed"] == 5
    assert [a["outcome"] for a in job["attempts"]] == ["succeeded"]


def test_unreachable_model_fails_with_one_clear_line(dirs, tmp_path):
    env = daemon_env(dirs, I2VD_MODEL="ali-vilab/i2vgen-xl", HF_HUB_OFFLINE="1",
                     HF_HOME=str(tmp_path / "empty-hf-home"))
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "run"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("i2vd: could not load model 'ali-vilab/i2vgen-xl'")
    assert "I2VD_MODEL" in last

    missing_dir = subprocess.run([sys.executable, "-m", "daemon.cli", "run"], capture_output=True, text=True,
                                 env=daemon_env(dirs, I2VD_MODEL=str(tmp_path / "no-such-model")), timeout=120)
    assert missing_dir.returncode == 2
    assert "no model_index.json" in missing_dir.stderr.strip().splitlines()[-1]


def test_real_model_on_cpu_warns_and_serves(dirs, run_daemon):
    """A model given as a directory (not the `tiny` smoke test) on a CPU-only machine: warn, then run."""
    model_dir = dirs["state"] / "models" / "tiny-i2vgen-xl"
    daemon = run_daemon(daemon_env(dirs, I2VD_MODEL=str(model_dir), I2VD_DEVICE="auto"))
    daemon.wait_ready()
    drop_pair(dirs["inbox"], "cpu")
    video = wait_for(lambda: next(iter(dirs["outputs"].glob("cpu_*.mp4")), None), what="MP4 on CPU")
    assert daemon.stop() == 0
    warning = next(json.loads(line) for line in (dirs["state"] / "i2vd.log").read_text().splitlines()
                   if '"cpu_generation_slow"' in line)
    assert warning["level"] == "warning" and "CPU" in warning["detail"]
    metadata = json.loads(video.with_suffix(".json").read_text())
    assert metadata["model"] == {"name": "i2vgen-xl", "id": str(model_dir), "backend": "i2vgen-xl",
                                 "pipeline_class": "I2VGenXLPipeline", "revision": None, "smoke_test": False,
                                 "device": "cpu", "dtype": "float32"}
