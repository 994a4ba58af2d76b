"""The crash-safe worker through real `i2vd run` subprocesses with the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from support.daemons import daemon_env, make_queue, make_settings, wait_for

from support.files import drop_pair, probe
from daemon.files import TEMP_PREFIX
from daemon.db.tables import JobState

LONG = {"steps": 150}  # ~20 s on a CPU core: long enough to act while it runs


def queue_for(dirs):
    return make_queue(make_settings(dirs))


def wait_state(queue, job_id, state, timeout=240.0):
    return wait_for(lambda: (j := queue.get(job_id)) and j.state == state and j, timeout,
                    what=f"job {job_id} {state.value}")


def wait_denoising(queue, job_id, step=3, timeout=240.0):
    wait_for(lambda: (j := queue.get(job_id)) and j.phase == "denoising" and (j.progress_step or 0) >= step,
             timeout, what=f"job {job_id} denoising step {step}")


def start_running(run_daemon, dirs, env, name, **fields):
    """A daemon whose first job is `name`, returned once that job is a few steps into denoising."""
    drop_pair(dirs["inbox"], name, **fields)
    daemon = run_daemon(env)
    daemon.wait_ready()
    queue = queue_for(dirs)
    wait_for(lambda: queue.recent(), what=f"{name} queued")
    job_id = queue.recent()[0].id
    wait_denoising(queue, job_id)
    return daemon, queue, job_id


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], env=env, capture_output=True, text=True)


def test_oom_downgrade_then_exhausted_ladder(dirs, run_daemon):
    env = daemon_env(dirs, I2VD_FAULT_OOM_ABOVE=str(32 * 32 * 8))
    drop_pair(dirs["inbox"], "big", num_frames=16)
    drop_pair(dirs["inbox"], "hopeless", num_frames=8, width=40, height=40)
    daemon = run_daemon(env)
    daemon.wait_ready()
    queue = queue_for(dirs)
    video = wait_for(lambda: next(iter(dirs["outputs"].glob("big_*.mp4")), None), what="downgraded MP4")
    assert probe(video)[0] == 8
    metadata = json.loads(video.with_suffix(".json").read_text())
    assert metadata["downgrade"]["rung"] == "fewer_frames"
    assert metadata["downgrade"]["from"]["num_frames"] == 16 and metadata["downgrade"]["to"]["num_frames"] == 8
    assert [(a["rung"], a["outcome"]) for a in metadata["attempts"]] == [
        ("full", "oom"), ("vae_slicing", "oom"), ("cpu_offload", "oom"), ("sequential_offload", "oom"),
        ("fewer_frames", "succeeded")]
    assert metadata["attempts"][0]["params"]["num_frames"] == 16

    hopeless = wait_for(lambda: next((j for j in queue.recent() if j.output_stem == "hopeless"
                                      and j.state == JobState.FAILED), None), what="exhausted ladder")
    assert hopeless.error_code == "out_of_memory"
    assert "vae_slicing, cpu_offload, sequential_offload" in hopeless.error_message
    assert "smaller" in hopeless.error_message
    # 8 frames, 40 px: no lower rung
    assert [a.rung for a in hopeless.attempts] == ["full", "vae_slicing", "cpu_offload", "sequential_offload"]
    assert {a.outcome for a in hopeless.attempts} == {"oom"}
    assert daemon.stop() == 0


def test_kill_9_mid_denoise_then_restart_completes_once(dirs, run_daemon):
    env = daemon_env(dirs)
    daemon, queue, job_id = start_running(run_daemon, dirs, env, "survivor", steps=30)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    assert queue.get(job_id).state == JobState.RUNNING  # what the crash left behind

    restarted = run_daemon(env)
    restarted.wait_ready()
    job = wait_state(queue, job_id, JobState.SUCCEEDED)
    assert restarted.stop() == 0
    assert [a.outcome for a in job.attempts] == ["crashed", "succeeded"]
    assert len(list(dirs["outputs"].glob("*.mp4"))) == 1
    assert not list(dirs["outputs"].rglob(f"{TEMP_PREFIX}*"))
    assert queue.counts()[JobState.RUNNING] == 0


def test_poison_job_is_failed_after_the_crash_cap(dirs, run_daemon):
    env = daemon_env(dirs, I2VD_FAULT_CRASH_PROMPT="CRASH-ME", I2VD_MAX_CRASH_ATTEMPTS="2")
    drop_pair(dirs["inbox"], "poison", prompt="please CRASH-ME now", priority=5)
    drop_pair(dirs["inbox"], "healthy")
    queue = queue_for(dirs)
    for _ in range(2):  # each start: the poison job runs first and kills the worker
        daemon = run_daemon(env)
        assert daemon.proc.wait(120) == -signal.SIGKILL
    daemon = run_daemon(env)
    daemon.wait_ready()
    wait_for(lambda: list(dirs["outputs"].glob("healthy_*.mp4")), what="healthy job after the poison job")
    assert daemon.stop() == 0
    poison = next(j for j in queue.recent() if j.output_stem == "poison")
    assert poison.state == JobState.FAILED and poison.error_code == "poison_job"
    assert "crashed 2 times" in poison.error_message
    assert [a.outcome for a in poison.attempts] == ["crashed", "crashed"]
    assert not list(dirs["outputs"].glob("poison_*"))


def test_cancel_queued_and_running_then_retry(dirs, run_daemon):
    env = daemon_env(dirs)
    daemon, queue, long_id = start_running(run_daemon, dirs, env, "long", **LONG)
    status = cli(env, "status").stdout
    assert f"running #{long_id} long: denoising [" in status and "/150 ETA " in status
    drop_pair(dirs["inbox"], "waiting")
    waiting = wait_for(lambda: next((j for j in queue.recent() if j.output_stem == "waiting"), None),
                       what="second job queued")

    out = cli(env, "cancel", str(waiting.id))
    assert out.returncode == 0 and "cancelled" in out.stdout
    assert queue.get(waiting.id).state == JobState.CANCELLED
    out = cli(env, "cancel", str(long_id))
    assert out.returncode == 0 and "next denoising step" in out.stdout
    job = wait_state(queue, long_id, JobState.CANCELLED, timeout=60)
    assert [a.outcome for a in job.attempts] == ["cancelled"]
    assert (job.progress_step or 0) < 150

    out = cli(env, "retry", str(waiting.id))
    assert out.returncode == 0, out.stderr
    retried = next(j for j in queue.recent() if j.retried_from_id == waiting.id)
    wait_state(queue, retried.id, JobState.SUCCEEDED)
    assert queue.get(waiting.id).state == JobState.CANCELLED  # history stays true
    assert cli(env, "retry", str(retried.id)).returncode == 1  # succeeded jobs are not retried
    assert "retry of #%d" % waiting.id in cli(env, "jobs", "list").stdout
    assert daemon.stop() == 0
    assert len(list(dirs["outputs"].glob("*.mp4"))) == 1


def test_transient_failure_is_retried_with_backoff(dirs, run_daemon):
    env = daemon_env(dirs, I2VD_RETRY_BACKOFF_SECONDS="2", I2VD_MAX_RETRIES="2")
    blocker = dirs["outputs"] / "project"
    blocker.write_text("a file where the output folder should be")  # writing the video fails
    daemon = run_daemon(env)
    daemon.wait_ready()
    drop_pair(dirs["inbox"] / "project", "shot")
    queue = queue_for(dirs)
    job = wait_for(lambda: next((j for j in queue.recent() if j.attempts and j.state == JobState.QUEUED
                                 and j.run_after), None), what="retry scheduled")
    assert job.attempts[0].outcome == "failed"
    blocker.unlink()
    job = wait_state(queue, job.id, JobState.SUCCEEDED)
    assert [a.outcome for a in job.attempts] == ["failed", "succeeded"]
    assert daemon.stop() == 0


def test_sigterm_returns_within_grace_and_requeues(dirs, run_daemon):
    env = daemon_env(dirs, I2VD_STOP_GRACE_SECONDS="1")
    daemon, queue, job_id = start_running(run_daemon, dirs, env, "slowpoke", **LONG)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    # grace (1 s), plus the step in progress and the shutdown; far less than the ~150 steps left
    assert time.monotonic() - started < 1 + 10
    assert "Traceback" not in daemon.output
    job = queue.get(job_id)
    assert job.state == JobState.QUEUED
    assert [a.outcome for a in job.attempts] == ["interrupted"]
    assert not os.listdir(dirs["outputs"]) or not list(dirs["outputs"].rglob("*.mp4"))
