"""Intake killed (SIGKILL) between any two of its steps: after restart each pair is queued exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from support.files import write_image, write_sidecar
from daemon.db.tables import JobState
from support.intake_harness import IntakeHarness

# Runs intake in a child process and SIGKILLs it right after the chosen step.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    import daemon.intake.ingest as intake_module
    from support.daemons import make_queue, make_settings
    from daemon.intake.ingest import Intake

    step = {step!r}
    dirs = {dirs!r}
    from pathlib import Path
    settings = make_settings({{k: Path(v) for k, v in dirs.items()}}, settle_seconds=0.2)
    queue = make_queue(settings)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_create, real_move, real_mark = queue.create_many, intake_module.move, queue.mark_queued_many
    moves = []

    def create(news):
        result = real_create(news)
        if step == "inserted":
            die()
        return result

    def move(src, dest):
        result = real_move(src, dest)
        moves.append(dest)
        if step == "image_moved" and len(moves) == 1 or step == "both_moved" and len(moves) == 2:
            die()
        return result

    def mark(job_ids):
        result = real_mark(job_ids)
        if step == "marked_queued":
            die()
        return result

    queue.create_many, queue.mark_queued_many, intake_module.move = create, mark, move
    intake = Intake(settings, queue)
    intake.scan()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        intake.tick()
        intake.scan()
        time.sleep(0.05)
    sys.exit("never reached the step")
""")


@pytest.mark.parametrize("step", ["inserted", "image_moved", "both_moved", "marked_queued"])
def test_killed_at_each_step_queues_exactly_once(dirs, step):
    inbox = dirs["inbox"]
    write_image(inbox / "pair.png")
    write_sidecar(inbox / "pair.json")
    child = subprocess.run([sys.executable, "-c", CHILD.format(
        tests=os.path.dirname(os.path.dirname(__file__)), step=step, dirs={k: str(v) for k, v in dirs.items()})],
        capture_output=True, text=True, timeout=60)
    assert child.returncode == -9, child.stderr

    h = IntakeHarness(dirs)  # "restart": recovery, then the start-up scan
    try:
        h.pump(1.0)
        jobs = h.jobs()
        assert len(jobs) == 1 and jobs[0].state == JobState.QUEUED
        assert sorted(os.listdir(inbox)) == ["done", "failed"]
        assert sorted(os.listdir(h.settings.done_dir)) == ["pair.json", "pair.png"]
        assert h.failed_codes() == {}
    finally:
        h.close()
