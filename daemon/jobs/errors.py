"""What the job queue refuses, as one small tree; the CLI and the web each map it in one place."""

from __future__ import annotations

from daemon.errors import I2vdError


class QueueError(I2vdError):
    """The job queue refused the request."""


class JobNotFound(QueueError):
    """There is no such job."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class NotRetryable(QueueError):
    """Only failed or cancelled jobs are retried."""


class ModelNotServed(NotRetryable):
    """The job's model is not served here (the same words as intake's rejection of a sidecar's model)."""

    def __init__(self, model: str, served: str) -> None:
        super().__init__(f"{model!r} is not served here; served models: {served}")
        self.model = model


class KeyConflict(QueueError):
    """A job with this idempotency key conflicted with the insert but is gone again; try later."""
