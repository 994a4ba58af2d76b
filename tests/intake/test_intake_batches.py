"""A big drop is queued in batches: every pair once, under its own name, the batch no one's fault."""

from __future__ import annotations

import os

from structlog.testing import capture_logs

from support.files import write_image, write_sidecar
from daemon.db.tables import JobState
from daemon.intake.ingest import BATCH_SIZE
from support.intake_harness import harness  # noqa: F401 (fixture)


def test_a_drop_larger_than_a_batch_queues_each_pair_once_under_its_own_name(harness, tmp_path):
    h = harness()
    write_image(h.settings.done_dir / "x.png")  # an earlier x: the new one becomes x-1 ...
    write_sidecar(h.settings.done_dir / "x.json")
    staging = tmp_path / "staging"
    names = ["x", "x-1", *(f"p{i:03d}" for i in range(BATCH_SIZE))]  # ... while x-1 itself arrives too
    for name in names:
        write_image(staging / f"{name}.png", size=(32, 32))
        write_sidecar(staging / f"{name}.json")
    with capture_logs() as logs:
        for name in names:  # renamed into place, as a copy tool finishes: all ready at once
            for suffix in (".png", ".json"):
                os.rename(staging / f"{name}{suffix}", h.inbox / f"{name}{suffix}")
        jobs = h.pump_until(lambda: (j := h.jobs(JobState.QUEUED)) and len(j) == len(names) and j, timeout=60)
    assert [e for e in logs if e["event"] == "intake_error"] == []
    assert not h.failed_codes() and sorted(os.listdir(h.inbox)) == ["done", "failed"]
    done = os.listdir(h.settings.done_dir)
    assert len(done) == 2 * (len(names) + 1)
    assert len({j.image_path for j in jobs}) == len(names)
    assert sum(e["event"] == "job_queued" for e in logs) == len(names)
