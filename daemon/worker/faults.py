"""Test-only fault injection: one seam, built from the `fault_*` settings and handed to the worker.

Tests on machines without a GPU use it to make a real CUDA out-of-memory error and to kill the worker
mid-denoise or mid-publish. With no `fault_*` setting every hook does nothing.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from daemon.settings import Settings
from pipeline.params import GenerationParams

CRASH_AT_STEP = 2  # the denoising step at which a `crash_prompt` job kills the worker


@dataclass(frozen=True)
class Faults:
    """Which faults to inject; the default injects none."""

    oom_above: int | None = None  # raise CUDA OOM above width*height*frames
    crash_prompt: str | None = None  # SIGKILL the worker mid-denoise on prompts with this
    crash_publish: str | None = None  # SIGKILL it between placing a video and its metadata

    @classmethod
    def from_settings(cls, settings: Settings) -> Faults:
        return cls(settings.fault_oom_above, settings.fault_crash_prompt, settings.fault_crash_publish)

    def before_generate(self, params: GenerationParams) -> None:
        """A real torch OutOfMemoryError when the try is larger than `oom_above`."""
        if self.oom_above is not None and params.width * params.height * params.num_frames > self.oom_above:
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {params.width}x{params.height}x"
                                         f"{params.num_frames} > {self.oom_above})")

    def at_step(self, prompt: str | None, step: int) -> None:
        if self.crash_prompt and self.crash_prompt in (prompt or "") and step == CRASH_AT_STEP:
            _kill_self()

    def before_commit(self, prompt: str | None) -> Callable[[], None] | None:
        """What to run between the set's renames, if anything."""
        if self.crash_publish and self.crash_publish in (prompt or ""):
            return _kill_self
        return None


NO_FAULTS = Faults()


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
