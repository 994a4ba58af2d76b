"""CUDA out-of-memory: recognise it in all its forms, free memory, and walk a downgrade ladder."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from pipeline.backends.base import BackendRules, MemoryOptions
from pipeline.params import LADDER_RUNGS, GenerationParams

_OOM_MESSAGES = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cudnn_status_not_enough_workspace",
    "cuda error: out of memory",
    "failed to allocate memory",
)

RESOLUTION_STEPS = (1024, 768, 512, 256)
"""lower_resolution steps the long side down these while the backend allows the size."""


def is_oom(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError and RuntimeErrors that are allocation failures."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def free_memory() -> None:
    """Release what a failed attempt left behind, so the next rung starts from a clean device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes() -> int | None:
    """Peak CUDA memory since the last reset, or None without CUDA."""
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


@dataclass(frozen=True)
class Rung:
    name: str  # "full" for the first try
    params: GenerationParams
    memory: MemoryOptions


class OomLadder:
    """The sequence of tries for one job: as asked, then each rung that is configured and applies.

    Which rungs apply, which frame counts and which sizes are valid come from the backend's rules.
    """

    def __init__(self, rules: BackendRules, rungs: tuple[str, ...] = LADDER_RUNGS) -> None:
        unknown = set(rungs) - set(LADDER_RUNGS)
        if unknown:
            raise ValueError(f"unknown OOM ladder rungs {sorted(unknown)}; known: {', '.join(LADDER_RUNGS)}")
        self.rules = rules
        self.rungs = tuple(r for r in rungs if r in rules.ladder_rungs)

    def walk(self, params: GenerationParams) -> Iterator[Rung]:
        """Yield the first try and every downgrade after it; each keeps the savings before it."""
        memory = MemoryOptions()
        yield Rung("full", params, memory)
        for name in self.rungs:
            if name == "vae_slicing":
                memory = replace(memory, vae_slicing=True)
                yield Rung(name, params, memory)
            elif name == "cpu_offload":
                memory = replace(memory, cpu_offload=True)
                yield Rung(name, params, memory)
            elif name == "sequential_offload":
                memory = replace(memory, sequential_offload=True)
                yield Rung(name, params, memory)
            elif name == "fewer_frames":
                while (fewer := self._fewer_frames(params)) is not None:
                    params = fewer
                    yield Rung(name, params, memory)
            elif name == "lower_resolution":
                while (smaller := self._smaller(params)) is not None:
                    params = smaller
                    yield Rung(name, params, memory)

    def _fewer_frames(self, params: GenerationParams) -> GenerationParams | None:
        """About half the frames, the nearest count the backend accepts at or below that."""
        frames = self.rules.frames
        half = frames.floor(max(params.num_frames // 2, frames.minimum))
        if half is None or half >= params.num_frames:
            return None
        return replace(params, num_frames=half)

    def _smaller(self, params: GenerationParams) -> GenerationParams | None:
        """The next resolution down on the long side, same aspect ratio, sizes the backend accepts."""
        multiple, min_size = self.rules.size_multiple, self.rules.min_size
        long_side = max(params.width, params.height)
        target = next((r for r in RESOLUTION_STEPS if r < long_side), None)
        if target is None:
            return None
        scale = target / long_side
        width = max(multiple, round(params.width * scale / multiple) * multiple)
        height = max(multiple, round(params.height * scale / multiple) * multiple)
        if min(width, height) < min_size:  # the ladder ends here
            return None
        return replace(params, width=width, height=height)

