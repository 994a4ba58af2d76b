"""Test-only fault injection: one seam, built from the `fault_*` settings and handed to the worker.

Tests on machines without a GPU use it to make a real CUDA out-of-memory error and to kill the worker
mid-denoise or mid-publish, or to hold a publish. With no `fault_*` setting every hook does nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon.settings import Settings
from pipeline.params import GenerationParams

CRASH_AT_STEP = 2  # the denoising step at which a `crash_prompt` job kills the worker
HOLD_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Faults:
    """Which faults to inject; the default injects none."""

    oom_above: int | None = None  # raise CUDA OOM above width*height*frames
    crash_prompt: str | None = None  # SIGKILL the worker mid-denoise on prompts with this
    crash_publish: str | None = None  # SIGKILL it between placing a video and its metadata
    hold_publish: Path | None = None  # hold every publish until this file exists

    @classmethod
    def from_settings(cls, settings: Settings) -> Faults:
        return cls(settings.fault_oom_above, settings.fault_crash_prompt, settings.fault_crash_publish,
                   settings.fault_hold_publish)

    def before_generate(self, params: GenerationParams) -> None:
        """A real torch OutOfMemoryError when the try is larger than `oom_above`."""
        if self.oom_above is not None and params.width * params.height * params.num_frames > self.oom_above:
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {params.width}x{params.height}x"
                                         f"{params.num_frames} > {self.oom_above})")

    def at_step(self, prompt: str | None, step: int | None) -> None:
        if self.crash_prompt and self.crash_prompt in (prompt or "") and step == CRASH_AT_STEP:
            _kill_self()

    def before_publish(self) -> None:
        """Wait for `hold_publish` to exist: a test's moment with one job publishing, the next generating."""
        while self.hold_publish is not None and not self.hold_publish.exists():
            time.sleep(HOLD_POLL_SECONDS)

    def before_commit(self, prompt: str | None) -> Callable[[], None] | None:
        """What to run between the set's renames, if anything."""
        if self.crash_publish and self.crash_publish in (prompt or ""):
            return _kill_self
        return None


NO_FAULTS = Faults()


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
