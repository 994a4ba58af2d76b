"""How an attempt that did not succeed ends: failed (classified: retried or not), interrupted, cancelled."""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass

from daemon.errors import InputRejected, LadderExhausted
from daemon.jobs.codes import ErrorCode
from daemon.jobs.queue import JobQueue
from daemon.jobs.retry import RetryPolicy
from daemon.logs import get_logger
from pipeline.errors import PipelineError
from pipeline.oom import peak_memory_bytes

log = get_logger("i2vd.worker")

# Torch's words for a tensor of the wrong shape or dtype: the same inputs fail the same way every time.
_SHAPE_ERRORS = re.compile(r"shape '\[.*\]' is invalid for input of size|size mismatch|must match the size of "
                           r"tensor|shapes cannot be multiplied|expected .*input.* to have .*channels|"
                           r"sizes of tensors must match|the size of tensor a \(\d+\) must match", re.IGNORECASE)
_DTYPE_ERRORS = re.compile(r"expected (scalar type|.*dtype)|should be the same|input type .* and weight type|"
                           r"not implemented for '(half|bfloat16|float|double|long|int)'|same dtype", re.IGNORECASE)


@dataclass(frozen=True)
class Failure:
    """What a failed attempt means for its job: the error code it fails with, and whether to try again."""

    code: str
    retryable: bool


def classify(exc: BaseException) -> Failure:
    """Decided on the first attempt: an error no retry can change fails the job at once."""
    if isinstance(exc, InputRejected):
        return Failure(exc.code, False)
    if isinstance(exc, LadderExhausted):
        return Failure(ErrorCode.OUT_OF_MEMORY, False)
    if isinstance(exc, PipelineError):
        return Failure(exc.code, exc.retryable)
    if isinstance(exc, RuntimeError) and _SHAPE_ERRORS.search(str(exc)):
        return Failure(ErrorCode.UNSUPPORTED_SHAPE, False)
    if isinstance(exc, (RuntimeError, TypeError)) and _DTYPE_ERRORS.search(str(exc)):
        return Failure(ErrorCode.DTYPE_MISMATCH, False)
    return Failure(ErrorCode.GENERATION_ERROR, True)


class Outcomes:
    """Records the end of an attempt that did not succeed, and what becomes of its job."""

    def __init__(self, queue: JobQueue, owner: str, retry_policy: RetryPolicy) -> None:
        self.queue, self.owner, self.retry_policy = queue, owner, retry_policy

    def failed(self, job_id: int, attempt, exc: Exception) -> None:
        failure = classify(exc)
        message = f"{type(exc).__name__}: {exc}"
        if attempt is not None:
            self.queue.finish_attempt(attempt.id, "failed", error_type=type(exc).__name__,
                                      error_message=str(exc), error_traceback=traceback.format_exc(),
                                      peak_gpu_memory_bytes=peak_memory_bytes())
        if failure.retryable:
            job = self.queue.get(job_id)
            earlier = len([a for a in (job.attempts if job else [])
                           if a.outcome == "failed" and (attempt is None or a.id != attempt.id)])
            decision = self.retry_policy.decide(exc, earlier)
            if decision.retry:
                self.queue.schedule_retry(job_id, self.owner, decision.delay_seconds, message)
                log.warning("job_retry_scheduled", job_id=job_id, error=message,
                            delay_seconds=decision.delay_seconds)
                return
        self.queue.fail(job_id, failure.code, message, owner=self.owner)
        log.error("job_failed", job_id=job_id, error_code=failure.code, error=message,
                  retryable=failure.retryable)

    def interrupted(self, job_id: int, attempt, *, cancelled: bool, lease_lost: bool) -> None:
        if cancelled:
            self.queue.finish_attempt(attempt.id, "cancelled", error_message="cancelled by request")
            self.queue.mark_cancelled(job_id, self.owner)
            log.info("job_cancelled", job_id=job_id)
            return
        self.queue.finish_attempt(attempt.id, "interrupted", error_type="LeaseLost" if lease_lost else
                                  "GenerationInterrupted",
                                  error_message="lease lost" if lease_lost else "daemon stopping")
        self.queue.requeue(job_id, self.owner, reason="lease_lost" if lease_lost else "daemon_stopping")
        log.info("job_interrupted", job_id=job_id, lease_lost=lease_lost)
