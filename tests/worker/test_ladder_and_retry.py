"""Pure logic of the OOM ladder, OOM recognition and the retry policy."""

from __future__ import annotations

import torch

from daemon.errors import InputRejected, LadderExhausted
from daemon.jobs.retry import RetryPolicy
from pipeline.backends import RULES
from pipeline.oom import OomLadder, is_oom
from pipeline.params import GenerationParams


def params(width=1024, height=1024, frames=32) -> GenerationParams:
    return GenerationParams(prompt="p", width=width, height=height, num_frames=frames, fps=8, steps=10,
                            guidance_scale=9.0, seed=1)


def test_ladder_walks_cheapest_loss_first():
    rungs = list(OomLadder(RULES["i2vgen-xl"]).walk(params()))
    assert [r.name for r in rungs] == ["full", "vae_slicing", "cpu_offload", "sequential_offload",
                                       "fewer_frames", "fewer_frames",
                                       "lower_resolution", "lower_resolution", "lower_resolution"]
    assert [r.params.num_frames for r in rungs] == [32, 32, 32, 32, 16, 8, 8, 8, 8]
    assert [r.params.width for r in rungs][-4:] == [1024, 768, 512, 256]
    assert rungs[0].memory.vae_slicing is False and rungs[1].memory.vae_slicing is True
    assert rungs[2].memory.cpu_offload and rungs[3].memory.sequential_offload
    assert rungs[-1].memory.vae_slicing and rungs[-1].memory.cpu_offload  # savings are kept


def test_ladder_keeps_aspect_ratio_and_is_configurable():
    rungs = list(OomLadder(RULES["i2vgen-xl"], ("lower_resolution",)).walk(params(width=1280, height=704, frames=16)))
    assert [r.params.width for r in rungs] == [1280, 1024, 768, 512, 256]
    for r in rungs:
        assert r.params.height % 8 == 0 and abs(r.params.width / r.params.height - 1280 / 704) < 0.06
    assert [r.name for r in OomLadder(RULES["i2vgen-xl"], ()).walk(params())] == ["full"]


def test_oom_in_all_its_forms():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"))
    assert is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))  # only runtime errors from torch count


def test_retry_policy():
    policy = RetryPolicy(max_retries=2, backoff_seconds=10)
    assert policy.decide(OSError("disk full"), 0).delay_seconds == 10
    assert policy.decide(OSError("disk full"), 1).delay_seconds == 20
    assert not policy.decide(OSError("disk full"), 2).retry
    assert not policy.decide(InputRejected("input_missing", "gone"), 0).retry
    assert not policy.decide(LadderExhausted("no memory"), 0).retry
