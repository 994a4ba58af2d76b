"""Knowing when not to retry: errors no retry can change fail the job on its first attempt, with a clear
code; what a retry can fix is retried."""

from __future__ import annotations

import pytest
import torch

from support.daemons import daemon_env, make_queue, make_settings, wait_for
from support.files import drop_pair
from daemon.db.tables import JobState
from daemon.errors import InputRejected, LadderExhausted
from daemon.worker.outcome import classify
from pipeline.backends.cogvideox import UnsupportedShape
from pipeline.errors import EncodeError, NonFiniteOutput


def raised(action) -> Exception:
    with pytest.raises(Exception) as info:
        action()
    return info.value


def test_torch_shape_and_dtype_errors_are_not_retried():
    shape = raised(lambda: torch.zeros(128).view(1, 1, 40, -1))  # the tiny Wan's error at 1280x704
    assert classify(shape).code == "unsupported_shape" and not classify(shape).retryable
    mismatch = raised(lambda: torch.zeros(2, 3) @ torch.zeros(4, 5))
    assert classify(mismatch).code == "unsupported_shape" and not classify(mismatch).retryable
    dtype = raised(lambda: torch.nn.Linear(2, 2)(torch.zeros(1, 2, dtype=torch.float64)))
    assert classify(dtype).code == "dtype_mismatch" and not classify(dtype).retryable


def test_the_pipeline_errors_say_themselves_and_the_rest_is_retried():
    assert (classify(NonFiniteOutput()).code, classify(NonFiniteOutput()).retryable) == ("nonfinite_output", False)
    assert (classify(UnsupportedShape()).code, classify(UnsupportedShape()).retryable) == ("unsupported_shape", False)
    assert (classify(EncodeError()).code, classify(EncodeError()).retryable) == ("encode_error", True)
    assert (classify(LadderExhausted()).code, classify(LadderExhausted()).retryable) == ("out_of_memory", False)
    assert classify(InputRejected("input_missing", "gone")).code == "input_missing"
    assert classify(OSError("disk full")).retryable and classify(OSError("x")).code == "generation_error"
    assert classify(RuntimeError("CUDA error: an illegal memory access")).retryable


def test_a_shape_the_model_cannot_make_fails_on_the_first_attempt(dirs, run_daemon):
    """The tiny CogVideoX, like 5b-I2V, makes only 32x32 with 9 frames: 64x32 fails at once, not thrice."""
    env = daemon_env(dirs, I2VD_MODEL="tiny:cogvideox", I2VD_RETRY_BACKOFF_SECONDS="0")
    drop_pair(dirs["inbox"], "wide", width=64, height=32, num_frames=9, steps=10)
    daemon = run_daemon(env)
    daemon.wait_ready()
    queue = make_queue(make_settings(dirs, model="tiny:cogvideox"))
    job = wait_for(lambda: (j := queue.recent(1)) and j[0].state == JobState.FAILED and j[0], what="failed job")
    assert daemon.stop() == 0
    assert job.error_code == "unsupported_shape"
    assert "only 32x32 with 9 frames" in job.error_message
    assert [a.outcome for a in job.attempts] == ["failed"]  # no retry
    assert "job_retry_scheduled" not in daemon.output
