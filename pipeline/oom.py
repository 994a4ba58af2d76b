"""CUDA out-of-memory: recognise it in all its forms, free memory, and walk a downgrade ladder."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from pipeline.params import GenerationParams

_OOM_MESSAGES = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cudnn_status_not_enough_workspace",
    "cuda error: out of memory",
    "failed to allocate memory",
)

RESOLUTION_STEPS = (1024, 768, 512, 256)
MIN_FRAMES = 8
RUNGS = ("vae_slicing", "cpu_offload", "fewer_frames", "lower_resolution")
"""Cheapest loss first: memory-saving modes cost only time; fewer frames and pixels cost output."""


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
class MemoryOptions:
    """How the pipeline trades speed for memory; no effect on the picture."""

    vae_slicing: bool = False  # decode one frame at a time, VAE tiling on
    cpu_offload: bool = False  # keep only the running sub-model on the GPU


@dataclass(frozen=True)
class Rung:
    name: str  # "full" for the first try
    params: GenerationParams
    memory: MemoryOptions


class OomLadder:
    """The sequence of tries for one job: as asked, then each configured rung in turn."""

    def __init__(self, rungs: tuple[str, ...] = RUNGS) -> None:
        unknown = set(rungs) - set(RUNGS)
        if unknown:
            raise ValueError(f"unknown OOM ladder rungs {sorted(unknown)}; known: {', '.join(RUNGS)}")
        self.rungs = rungs

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
            elif name == "fewer_frames":
                while params.num_frames > MIN_FRAMES:
                    params = replace(params, num_frames=max(MIN_FRAMES, params.num_frames // 2))
                    yield Rung(name, params, memory)
            elif name == "lower_resolution":
                while (smaller := _smaller(params)) is not None:
                    params = smaller
                    yield Rung(name, params, memory)


def _smaller(params: GenerationParams) -> GenerationParams | None:
    """The next resolution down (1024 -> 768 -> 512 -> 256 on the long side), same aspect ratio."""
    long_side = max(params.width, params.height)
    target = next((r for r in RESOLUTION_STEPS if r < long_side), None)
    if target is None:
        return None
    scale = target / long_side
    width = max(8, round(params.width * scale / 8) * 8)
    height = max(8, round(params.height * scale / 8) * 8)
    return replace(params, width=width, height=height)


def raise_injected_oom(params: GenerationParams, above: int | None) -> None:
    """Fault injection for tests on CPU: a real OutOfMemoryError above width*height*frames."""
    if above is not None and params.width * params.height * params.num_frames > above:
        raise torch.OutOfMemoryError(
            f"CUDA out of memory (injected: {params.width}x{params.height}x{params.num_frames} > {above})"
        )
