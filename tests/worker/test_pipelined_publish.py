"""Pipelined publish: while one job's video is encoded and published, the next job generates; every
guarantee of the one-at-a-time worker holds (lease held until published, stop drains, kill -9 loses
nothing)."""

from __future__ import annotations

import signal

import pytest
from support.daemons import daemon_env, make_queue, make_settings, wait_for
from support.files import drop_pair
from daemon.db.tables import JobState
from daemon.files import TEMP_PREFIX


def held_in_publish(dirs, run_daemon, **env):
    """A daemon holding `first` in its publish while `second` generates: (daemon, queue, first, second, release)."""
    release = dirs["state"] / "release-publish"
    drop_pair(dirs["inbox"], "first", priority=5)
    drop_pair(dirs["inbox"], "second", steps=20)
    daemon = run_daemon(daemon_env(dirs, I2VD_FAULT_HOLD_PUBLISH=str(release), I2VD_LEASE_SECONDS="6", **env))
    daemon.wait_ready(timeout=240)
    queue = make_queue(make_settings(dirs))
    first = wait_for(lambda: next((j for j in queue.recent() if j.output_stem == "first"
                                   and j.phase == "encoding_video"), None), timeout=600, what="first job publishing")
    second = wait_for(lambda: next((j for j in queue.recent() if j.output_stem == "second"
                                    and j.phase == "denoising" and (j.progress_step or 0) >= 2), None),
                      timeout=600, what="second job generating while the first publishes")
    return daemon, queue, first, second, release


@pytest.mark.timeout(1500)  # three jobs on two shared cores
def test_the_next_job_generates_while_one_publishes_and_stop_drains_both(dirs, run_daemon):
    daemon, queue, first, second, release = held_in_publish(dirs, run_daemon, I2VD_STOP_GRACE_SECONDS="300")
    assert queue.get(first.id).state == JobState.RUNNING and not list(dirs["outputs"].glob("*.mp4"))
    # The publishing job's lease is still renewed by its heartbeat (6 s lease, renewed every 2 s).
    wait_for(lambda: queue.get(first.id).lease_expires_at > first.lease_expires_at, what="first lease renewed")

    daemon.proc.send_signal(signal.SIGINT)  # stop while one publishes and one generates
    release.touch()
    assert daemon.stop(timeout=600) == 0  # after both are published: the second still generates
    for job_id in (first.id, second.id):
        job = queue.get(job_id)
        assert job.state == JobState.SUCCEEDED, (job.output_stem, job.state)
        assert [a.outcome for a in job.attempts] == ["succeeded"]
    assert sorted(p.name.split("_")[0] for p in dirs["outputs"].glob("*.mp4")) == ["first", "second"]


@pytest.mark.timeout(1500)
def test_kill_9_with_one_job_generating_and_one_publishing_loses_neither(dirs, run_daemon):
    daemon, queue, first, second, _release = held_in_publish(dirs, run_daemon)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()

    restarted = run_daemon(daemon_env(dirs))
    restarted.wait_ready(timeout=240)
    for job_id in (first.id, second.id):
        wait_for(lambda j=job_id: queue.get(j).state == JobState.SUCCEEDED, timeout=900,
                 what=f"job {job_id} after the restart")
    assert restarted.stop() == 0
    for job_id in (first.id, second.id):
        assert [a.outcome for a in queue.get(job_id).attempts] == ["crashed", "succeeded"]
    assert sorted(p.name.split("_")[0] for p in dirs["outputs"].glob("*.mp4")) == ["first", "second"]
    assert not list(dirs["outputs"].rglob(f"{TEMP_PREFIX}*"))
