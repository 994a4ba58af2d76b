"""Generation: one warm pipeline, one video per call, through the backend that serves it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import PIL.Image
import torch

from pipeline.backends import backend_for_class, get_backend
from pipeline.backends.base import MemoryOptions, ProgressCallback, VideoBackend
from pipeline.runtime import Placement
from pipeline.params import GenerationParams


class VideoGenerator:
    """A loaded pipeline kept warm between jobs, and the backend that knows how to call it."""

    def __init__(self, pipe, placement: Placement, *, backend: VideoBackend | None = None,
                 decode_chunk_size: int = 8) -> None:
        self.pipe = pipe
        self.placement = placement
        self.backend = backend or get_backend(backend_for_class(type(pipe).__name__))
        self.decode_chunk_size = decode_chunk_size

    @torch.inference_mode()
    def generate(
        self,
        image: PIL.Image.Image,
        params: GenerationParams,
        on_progress: ProgressCallback | None = None,
        memory: MemoryOptions = MemoryOptions(),
    ) -> np.ndarray:
        """Frames as uint8 (num_frames, height, width, 3). `on_progress` may raise to stop."""
        report = on_progress or (lambda _p: None)
        if self.placement.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.placement.device)
        memory = replace(memory, decode_chunk_size=1 if memory.vae_slicing else self.decode_chunk_size)
        return self.backend.generate(self.pipe, image, params, report, memory)
