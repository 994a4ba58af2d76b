"""Two daemons on one inbox, outputs folder and database (both engines): every pair is taken once,
and neither removes the other's files."""

from __future__ import annotations

import threading
import time

import pytest

from support.files import drop_pair
from daemon.intake.ingest import idempotency_key
from daemon.db.tables import JobState
from daemon.jobs.outputs import sweep_temporaries
from daemon.jobs.queue import NewJob
from support.intake_harness import IntakeHarness


@pytest.fixture
def two_daemons(dirs, database_url):
    harnesses = [IntakeHarness(dirs, observer="polling", database_url=database_url) for _ in range(2)]
    yield harnesses
    for h in harnesses:
        h.close()


def run_together(*actions) -> None:
    """Start the actions at the same moment, each in a thread, and wait for all."""
    start = threading.Barrier(len(actions))
    errors: list[BaseException] = []

    def run(action):
        start.wait()
        try:
            action()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_each_pair_is_taken_once_by_one_of_two_daemons(two_daemons, dirs, monkeypatch):
    a, b = two_daemons
    monkeypatch.setattr("daemon.intake.ingest.BATCH_SIZE", 4)  # several batches: the daemons interleave
    for i in range(40):
        drop_pair(dirs["inbox"], f"p{i:02}")

    def pump_until_all_taken(h: IntakeHarness) -> None:
        deadline = time.monotonic() + 30
        while len(h.jobs(JobState.QUEUED)) < 40 and time.monotonic() < deadline:
            h.intake.scan()
            h.pump(0.05)

    run_together(lambda: pump_until_all_taken(a), lambda: pump_until_all_taken(b))
    jobs = a.jobs()
    assert len(jobs) == 40 and {j.state for j in jobs} == {JobState.QUEUED}
    assert sorted(j.output_stem for j in jobs) == [f"p{i:02}" for i in range(40)]
    assert a.intake.stats.queued + b.intake.stats.queued == 40
    assert a.intake.stats.queued and b.intake.stats.queued, "one daemon took everything; no race was run"
    done = sorted(p.name for p in a.settings.done_dir.iterdir())
    assert done == sorted(f"p{i:02}{ext}" for i in range(40) for ext in (".png", ".json"))  # no -1 copies
    assert not a.failed_codes() and not list(a.settings.failed_dir.iterdir())
    assert sorted(p.name for p in dirs["inbox"].iterdir()) == ["done", "failed"]


def test_a_pair_another_daemon_is_taking_is_left_to_it(two_daemons, dirs):
    a, b = two_daemons
    image, sidecar = drop_pair(dirs["inbox"], "x")
    # Daemon a has just won the insert and is about to move the files when b sees them settle.
    job, created = a.queue.create(NewJob(
        idempotency_key=idempotency_key(dirs["inbox"], [image, sidecar]), params={"seed": 1}, priority=0,
        output_stem="x", output_subdir="", source_image=str(image), source_sidecar=str(sidecar),
        image_path=str(a.settings.done_dir / "x.png"), sidecar_path=str(a.settings.done_dir / "x.json")))
    assert created
    b.pump(1.5)
    assert image.exists() and sidecar.exists(), "b moved files that a is taking"
    assert b.jobs(JobState.INTAKE) and not b.intake.stats.queued
    a.intake.complete(job)
    assert a.queue.get(job.id).state == JobState.QUEUED
    assert sorted(p.name for p in a.settings.done_dir.iterdir()) == ["x.json", "x.png"]


def test_an_interrupted_intake_is_finished_once_when_two_daemons_recover_it(two_daemons, dirs):
    a, b = two_daemons
    inbox, done = dirs["inbox"], a.settings.done_dir
    for i in range(20):  # a daemon crashed after recording these and before moving their files
        image, sidecar = drop_pair(inbox, f"c{i:02}")
        a.queue.create(NewJob(
            idempotency_key=f"crashed-{i}", params={"seed": i}, priority=0, output_stem=image.stem,
            output_subdir="", source_image=str(image), source_sidecar=str(sidecar),
            image_path=str(done / image.name), sidecar_path=str(done / sidecar.name)))

    run_together(a.intake.recover, b.intake.recover)
    jobs = a.jobs()
    assert len(jobs) == 20 and {j.state for j in jobs} == {JobState.QUEUED}
    assert a.intake.stats.queued + b.intake.stats.queued == 20
    assert len(list(done.iterdir())) == 40
    assert sorted(p.name for p in inbox.iterdir()) == ["done", "failed"]


def test_a_starting_daemon_does_not_sweep_a_video_another_daemon_is_encoding(tmp_path):
    from daemon.files import temp_path

    crashed = temp_path(tmp_path, "job7")  # left by a worker that died
    started: list = []

    def running_jobs() -> set[int]:
        # Right after this read, another daemon's worker starts encoding job 8.
        started.append(temp_path(tmp_path, "job8"))
        return set()

    assert sweep_temporaries(tmp_path, running_jobs) == [crashed]
    assert started[0].exists()
