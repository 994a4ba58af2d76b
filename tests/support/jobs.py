"""Jobs put straight into a real database, for tests of what reads or supervises them."""

from __future__ import annotations

import ctypes
import uuid
from pathlib import Path

from daemon.db.tables import Job
from daemon.jobs.queue import JobQueue, NewJob

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def queued_job(queue: JobQueue, name: str = "beach", image_path: Path | str = "/nonexistent/beach.png",
               model: str | None = None, **params: object) -> Job:
    """A queued job as intake would leave it (the image path need not exist)."""
    job, created = queue.create(NewJob(
        idempotency_key=uuid.uuid4().hex, priority=0, output_stem=name, output_subdir="",
        params={"prompt": "waves on a beach", "negative_prompt": None, "width": 32, "height": 32,
                "num_frames": 8, "fps": 8, "steps": 10, "guidance_scale": 9.0, "seed": 7, **params},
        source_image=f"{name}.png", source_sidecar=f"{name}.json", image_path=str(image_path),
        sidecar_path=None, model=model))
    assert created and queue.mark_queued(job.id)
    return queue.get(job.id)


def without_root_file_access() -> None:
    """preexec_fn: root ignores file permissions; drop that power so a subprocess sees what any other
    user would (its capabilities after exec come from the bounding set)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
