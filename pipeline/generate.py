"""Generation: one warm pipeline, one video per call, progress reported per denoising step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from pipeline.loader import Placement
from pipeline.oom import MemoryOptions, raise_injected_oom
from pipeline.params import GenerationParams


@dataclass(frozen=True)
class Progress:
    phase: str  # encoding_prompt, denoising, decoding
    step: int | None = None
    total: int | None = None


ProgressCallback = Callable[[Progress], None]


def encode_prompt(pipe, text: str, device: torch.device) -> torch.Tensor:
    """CLIP text embeddings as I2VGen-XL was trained on them: the penultimate layer, then the final norm.

    This is the pipeline's own default (clip_skip=1). Its code reaches the norm through
    `text_encoder.text_model`, which transformers >= 5.6 removed, so i2vd computes the embeddings
    itself and hands them to the pipeline; the weights and the maths stay upstream's.
    """
    tokens = pipe.tokenizer(
        [text], padding="max_length", max_length=pipe.tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    )
    hidden = pipe.text_encoder(tokens.input_ids.to(device), output_hidden_states=True).hidden_states[-2]
    final_layer_norm = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm
    return final_layer_norm(hidden)


class VideoGenerator:
    """A loaded I2VGen-XL pipeline kept warm between jobs."""

    def __init__(self, pipe, placement: Placement, *, inject_oom_above: int | None = None,
                 decode_chunk_size: int = 8) -> None:
        self.pipe = pipe
        self.placement = placement
        self.inject_oom_above = inject_oom_above  # tests: OOM above width*height*frames
        self.decode_chunk_size = decode_chunk_size
        self._offloaded = False

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
        device = self.placement.device
        self._use_memory_options(memory)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        raise_injected_oom(params, self.inject_oom_above)

        # 1. Encode prompts
        report(Progress("encoding_prompt"))
        prompt_embeds = encode_prompt(self.pipe, params.prompt, device)
        negative_embeds = encode_prompt(self.pipe, params.negative_prompt or "", device)

        # 2. Denoise, counting scheduler steps (the pipeline has no step callback)
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        with _global_rng_seeded(params.seed, device), \
                _counting_steps(self.pipe.scheduler, params.steps, report):
            result = self.pipe(
                image=image,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                height=params.height,
                width=params.width,
                num_frames=params.num_frames,
                target_fps=params.fps,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance_scale,
                generator=generator,
                decode_chunk_size=1 if memory.vae_slicing else self.decode_chunk_size,
                output_type="np",
            )

        # 3. To 8-bit frames
        frames = np.asarray(result.frames[0])
        return (frames * 255).round().clip(0, 255).astype(np.uint8)


    def _use_memory_options(self, memory: MemoryOptions) -> None:
        vae = self.pipe.vae
        if memory.vae_slicing:
            vae.enable_slicing()
            vae.enable_tiling()
        else:
            vae.disable_slicing()
            vae.disable_tiling()
        # Offloading moves sub-models between CPU and GPU; it only means something on CUDA.
        wanted = memory.cpu_offload and self.placement.device.type == "cuda"
        if wanted and not self._offloaded:
            self.pipe.enable_model_cpu_offload(device=self.placement.device)
        elif self._offloaded and not wanted:
            self.pipe.remove_all_hooks()
            self.pipe.to(self.placement.device)
        self._offloaded = wanted


@contextlib.contextmanager
def _global_rng_seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators too, in a fork that leaves the process's own state alone.

    The pipeline samples the image latents from the VAE without passing `generator`, so that draw
    comes from the global generator: without this, the same seed gave a different video depending
    on what the process had run before.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class _counting_steps:
    """Wrap `scheduler.step` on the instance to report each finished denoising step."""

    def __init__(self, scheduler, total: int, report: ProgressCallback) -> None:
        self.scheduler, self.total, self.report = scheduler, total, report

    def __enter__(self):
        original = self.scheduler.step
        done = 0

        def step(*args, **kwargs):
            nonlocal done
            out = original(*args, **kwargs)
            done += 1
            self.report(Progress("denoising", done, self.total))
            if done == self.total:
                self.report(Progress("decoding"))
            return out

        self.scheduler.step = step
        self.report(Progress("denoising", 0, self.total))
        return self

    def __exit__(self, *exc) -> None:
        del self.scheduler.step  # back to the class's method
