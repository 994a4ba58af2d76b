"""Generation: one warm pipeline, one video per call, through the backend that serves it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import PIL.Image
import torch

from pipeline.backends import backend_for_class, get_backend
from pipeline.backends.base import MemoryOptions, ProgressCallback, VideoBackend
from pipeline.errors import NonFiniteOutput
from pipeline.runtime import Placement, dtype_name
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
        """Frames as uint8 (num_frames, height, width, 3). `on_progress` may raise to stop.

        NonFiniteOutput, naming the dtype, when the model's numbers broke down (NaN/Inf, constant frames).
        """
        report = on_progress or (lambda _p: None)
        if self.placement.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.placement.device)
        # Half the chunk, not 1: SVD's temporal decoder blends frames within a chunk, so 1 flickers.
        chunk = max(1, self.decode_chunk_size // 2) if memory.vae_slicing else self.decode_chunk_size
        memory = replace(memory, decode_chunk_size=chunk)
        try:
            return self.backend.generate(self.pipe, image, params, report, memory)
        except NonFiniteOutput as exc:
            dtype = dtype_name(self.placement.dtype)
            hint = "; a float32 run (I2VD_DTYPE=float32) tells a dtype problem from broken weights" \
                if dtype != "float32" else "; in float32 this points at the weights themselves"
            raise NonFiniteOutput(f"{exc} with the model in {dtype} on {self.placement.device}{hint}") from None
