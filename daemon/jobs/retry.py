"""Retry policy: which failures are retried, and after how long."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.errors import InputRejected, LadderExhausted


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures are retried `max_retries` times, waiting base, 2*base, 4*base... seconds."""

    max_retries: int = 2
    backoff_seconds: float = 30.0

    def decide(self, error: BaseException, failures_so_far: int) -> RetryDecision:
        """`failures_so_far` counts earlier failed attempts of the job, this one excluded."""
        if isinstance(error, (InputRejected, LadderExhausted)):  # the input's fault: same result again
            return RetryDecision(False)
        if failures_so_far >= self.max_retries:
            return RetryDecision(False)
        return RetryDecision(True, self.backoff_seconds * 2**failures_so_far)
