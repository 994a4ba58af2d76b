"""The event types: every change a user cares about, named `subject.verb`."""

from __future__ import annotations

from fnmatch import fnmatchcase

INPUT_REJECTED = "input.rejected"  # a dropped pair went to failed/: code, message, files
JOB_QUEUED = "job.queued"  # a job can be claimed (new, a retry of an older one, or back after its worker stopped)
JOB_STARTED = "job.started"  # an attempt began (the OOM ladder's next rung is another attempt)
JOB_PROGRESS = "job.progress"  # about once a second while running; deleted when the job ends
JOB_RETRY_SCHEDULED = "job.retry_scheduled"  # a transient failure; queued again after a delay
JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELLED = "job.cancelled"

EVENT_TYPES = (INPUT_REJECTED, JOB_QUEUED, JOB_STARTED, JOB_PROGRESS, JOB_RETRY_SCHEDULED, JOB_SUCCEEDED,
               JOB_FAILED, JOB_CANCELLED)
# What a webhook gets when no filter is set: progress would mean a POST a second per running job.
DEFAULT_WEBHOOK_TYPES = tuple(t for t in EVENT_TYPES if t != JOB_PROGRESS)


def matching_types(patterns: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The event types that any of `patterns` (names or globs like `job.*`) selects; all but progress if none."""
    if not patterns:
        return DEFAULT_WEBHOOK_TYPES
    return tuple(t for t in EVENT_TYPES if any(fnmatchcase(t, p) for p in patterns))
