"""The worker's edges: an input gone from done/ before its job ran; the poison cap's default and words."""

from __future__ import annotations

from datetime import timedelta

from support.daemons import daemon_env, make_queue, make_settings, wait_for
from daemon.db.tables import JobState, utcnow
from daemon.jobs.recovery import recover_jobs
from support.jobs import queued_job


def test_an_image_gone_from_done_fails_its_job_and_says_what_to_do(dirs, run_daemon):
    queue = make_queue(make_settings(dirs))
    gone = dirs["inbox"] / "done" / "beach.png"  # someone tidied done/ while the job waited
    job = queued_job(queue, "beach", image_path=gone)
    daemon = run_daemon(daemon_env(dirs))
    daemon.wait_ready()
    wait_for(lambda: queue.get(job.id).state == JobState.FAILED, timeout=60, what="the job to fail")
    assert daemon.proc.poll() is None  # the daemon carries on
    assert daemon.stop() == 0
    failed = queue.get(job.id)
    assert failed.error_code == "input_missing"
    assert str(gone) in failed.error_message and "is gone from done/" in failed.error_message
    assert [a.outcome for a in failed.attempts] == []  # nothing was generated
    assert not list(dirs["outputs"].iterdir())


def _lost_job(queue, crashed_before: int) -> int:
    """A running job whose worker vanished, after `crashed_before` earlier crashed attempts."""
    job = queued_job(queue)
    for _ in range(crashed_before):
        attempt = queue.start_attempt(job.id, "gone:1", job.params)
        queue.finish_attempt(attempt.id, "crashed", error_type="WorkerLost")
    assert queue.claim("gone:2", lease_seconds=60).id == job.id
    queue.start_attempt(job.id, "gone:2", job.params)
    assert queue.heartbeat(job.id, "gone:2", lease_seconds=-1)  # the lease ran out
    return job.id


def test_the_default_poison_cap_is_three_crashes_and_names_i2vd_retry(tmp_path):
    settings = make_settings({name: tmp_path / name for name in ("inbox", "outputs", "state")})
    queue = make_queue(settings)
    second_crash, third_crash = _lost_job(queue, 1), _lost_job(queue, 2)
    assert queue.get(third_crash).lease_expires_at < utcnow() + timedelta(seconds=1)
    assert sorted(recover_jobs(queue, settings.max_crash_attempts)) == [second_crash, third_crash]
    assert queue.get(second_crash).state == JobState.QUEUED  # two crashes: run once more
    poison = queue.get(third_crash)
    assert poison.state == JobState.FAILED and poison.error_code == "poison_job"
    assert "crashed 3 times" in poison.error_message
    assert f"`i2vd retry {third_crash}`" in poison.error_message
