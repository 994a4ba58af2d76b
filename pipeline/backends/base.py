"""The backend seam: what every image-to-video backend declares (rules) and does (load, tiny, generate).

Torch-free at import: the intake-only daemon validates sidecars against `BackendRules` and must never
load the model stack. The helpers at the bottom import torch/diffusers inside the function.
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.errors import ModelUnavailable, NonFiniteOutput
from pipeline.params import LADDER_RUNGS, PRESET_NAMES

if TYPE_CHECKING:
    import numpy
    import PIL.Image

    from pipeline.framing import Framing
    from pipeline.runtime import Placement
    from pipeline.params import GenerationParams



@dataclass(frozen=True)
class FrameRule:
    """Valid num_frames: offset + k*multiple, with minimum <= n <= maximum."""

    multiple: int  # 1 (any), 4 (Wan: 4k+1), 8 (LTX: 8k+1), ...
    offset: int  # 0 or 1
    minimum: int
    maximum: int

    def valid(self, n: int) -> bool:
        return self.minimum <= n <= self.maximum and (n - self.offset) % self.multiple == 0

    def floor(self, n: int) -> int | None:
        """The largest valid count <= n, or None when there is none (for the fewer_frames rung)."""
        n = min(n, self.maximum)
        n -= (n - self.offset) % self.multiple
        return n if n >= self.minimum else None

    def describe(self) -> str:
        """For error messages: 'between 8 and 32', 'of the form 4k+1 between 5 and 121'."""
        span = f"between {self.minimum} and {self.maximum}"
        if self.multiple == 1:
            return span
        form = f"{self.multiple}k+{self.offset}" if self.offset else f"a multiple of {self.multiple}"
        return f"{form}, {span}" if self.offset else f"{form} {span}"


@dataclass(frozen=True)
class Preset:
    """A backend's native settings for one of preview/standard/high/max."""

    width: int
    height: int
    num_frames: int
    steps: int
    fps: int
    guidance_scale: float


@dataclass(frozen=True)
class BackendRules:
    """Pure data: what a sidecar may ask of this backend."""

    name: str  # "i2vgen-xl", "svd", "wan", "ltx", "cogvideox"
    pipeline_classes: tuple[str, ...]  # model_index.json "_class_name" values this backend serves
    default_model: str  # real hub id (never a tiny model)
    prompt_required: bool
    size_multiple: int  # width/height multiple
    min_size: int
    max_size: int
    frames: FrameRule
    steps_range: tuple[int, int]
    guidance_range: tuple[float, float]
    fps_range: tuple[int, int]
    presets: Mapping[str, Preset]  # keys preview, standard, high, max
    ladder_rungs: tuple[str, ...]  # subset/order of LADDER_RUNGS that apply
    licence: str  # of the default weights, for README
    # Additive fields (defaults keep every backend file valid):
    hub_prefixes: tuple[str, ...] = field(default=())
    """Hub ids starting with one of these (case-insensitive) are this backend's, e.g. "Wan-AI/"."""
    default_dtype: str = "float16"
    """The dtype on CUDA when none is set: the one the default weights were trained and published in."""
    image_capable_when: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """Pipeline classes served only when model_index.json holds these values: text-only checkpoints
    share the class name (Wan2.1-T2V and Wan2.2-TI2V-5B are both WanPipeline)."""

    def refusal(self, index: Mapping[str, object]) -> str | None:
        """Why this backend cannot serve a checkpoint with this model_index.json, or None."""
        class_name = index.get("_class_name")
        if class_name not in self.pipeline_classes:
            return f"{self.name} serves {', '.join(self.pipeline_classes)}, not {class_name}"
        missing = {k: v for k, v in self.image_capable_when.get(class_name, {}).items() if index.get(k) != v}
        if missing:
            wanted = ", ".join(f"{k}: {json.dumps(v)}" for k, v in missing.items())
            return (f"a text-only {class_name} checkpoint (its model_index.json lacks {wanted}); "
                    f"{self.name} serves image-to-video ones such as {self.default_model}")
        return None
    keeps_image_aspect: bool = False
    """The authors keep the image's aspect ratio: a preset's size is a pixel budget (pipeline.framing)."""

    def __post_init__(self) -> None:
        unknown = set(self.ladder_rungs) - set(LADDER_RUNGS)
        if unknown:
            raise ValueError(f"{self.name}: unknown ladder rungs {sorted(unknown)}")
        if set(self.presets) != set(PRESET_NAMES):
            raise ValueError(f"{self.name}: presets must be preview, standard, high and max")


@dataclass(frozen=True)
class Progress:
    phase: str  # encoding_prompt, denoising, decoding
    step: int | None = None
    total: int | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class MemoryOptions:
    """How the pipeline trades speed for memory; no effect on the picture."""

    vae_slicing: bool = False  # decode one frame (slice) at a time, VAE tiling on where the VAE has it
    cpu_offload: bool = False  # model CPU offload: only the running sub-model on the GPU
    sequential_offload: bool = False  # sequential CPU offload: layer by layer, slowest, least memory
    decode_chunk_size: int = 8  # frames decoded at once, for pipelines that take it (halved with vae_slicing)


class VideoBackend(Protocol):
    rules: BackendRules

    def load(self, model: str, placement: Placement) -> Any:
        """A diffusers pipeline from a hub id or local folder (from_pretrained), on placement."""

    def build_tiny(self) -> Any:
        """A tiny random pipeline, built offline (smoke tests)."""

    def framing(self, pipe, source: tuple[int, int], params: GenerationParams) -> Framing:
        """The video size and image crop `generate` uses for an image of `source` size (for metadata too)."""

    def generate(self, pipe, image: PIL.Image.Image, params: GenerationParams,
                 report: ProgressCallback, memory: MemoryOptions) -> numpy.ndarray:
        """uint8 frames (N, H, W, 3) framed as `framing` says. Reports progress; `report` may raise
        GenerationInterrupted."""


# -- helpers the backends call (torch is imported inside) ------------------------------------------


def looks_like_path(model: str) -> bool:
    """A local folder rather than a hub id."""
    return model.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(model))


_devices: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipe -> device it was loaded on
_applied: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipe -> offload mode in effect


def from_pretrained(pipeline_class, model: str, placement: Placement, *, try_fp16_variant: bool = True,
                    component_dtypes: Mapping[str, Any] | None = None):
    """`pipeline_class.from_pretrained` on a hub id or local folder, with one clear error line.

    `component_dtypes` loads the named components in their own dtype (Wan's float32 VAE), the rest in
    the placement's."""
    import torch

    from pipeline.runtime import quiet_libraries

    quiet_libraries()
    if looks_like_path(model):
        path = Path(model).expanduser()
        if not (path / "model_index.json").is_file():
            raise ModelUnavailable(
                f"model directory {path} has no model_index.json; point the model setting at a diffusers "
                f"{pipeline_class.__name__} folder (e.g. one made by `huggingface-cli download <hub id>`)"
            )
    fp16 = try_fp16_variant and placement.dtype in (torch.float16, torch.bfloat16)
    attempts = [{"variant": "fp16"}, {}] if fp16 else [{}]
    dtype = {**component_dtypes, "default": placement.dtype} if component_dtypes else placement.dtype
    last_error: Exception | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices about the pipelines themselves
        for extra in attempts:
            try:
                pipe = pipeline_class.from_pretrained(model, torch_dtype=dtype, **extra)
                break
            except Exception as exc:  # hub, filesystem and config errors all mean "not loadable"
                last_error = exc
        else:
            text = str(last_error).strip()
            reason = text.splitlines()[0] if text else type(last_error).__name__
            raise ModelUnavailable(
                f"could not load model {model!r} ({type(last_error).__name__}: {reason[:300]}). "
                "Tried the local Hugging Face cache and the hub. Fix: download it where the hub is "
                "reachable and set I2VD_MODEL (or I2VD_MODELS) to that local directory, or use "
                "I2VD_MODEL=tiny:<backend> for an offline smoke-test model"
            ) from None
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(placement.device)
    _devices[pipe] = placement.device
    return pipe


def apply_memory_options(pipe, memory: MemoryOptions) -> None:
    """VAE slicing/tiling and CPU offload as `memory` asks, undoing what the last call set and this one not.

    Offloading moves sub-models between CPU and GPU; it only means something on CUDA.
    """
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        for feature in ("slicing", "tiling"):
            # Every diffusers VAE has the switches; those without the feature (SVD's temporal decoder)
            # raise NotImplementedError from them: only the `use_*` attribute says it is there.
            if hasattr(vae, f"use_{feature}"):
                getattr(vae, f"{'enable' if memory.vae_slicing else 'disable'}_{feature}")()
    device = _devices.setdefault(pipe, pipe.device)
    on_cuda = getattr(device, "type", str(device)) == "cuda"
    wanted = ("sequential" if memory.sequential_offload else "model" if memory.cpu_offload else None) \
        if on_cuda else None
    current = _applied.get(pipe)
    if wanted == current:
        return
    if current is not None:
        pipe.remove_all_hooks()
        pipe.to(device)
    if wanted == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif wanted == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    _applied[pipe] = wanted


def seeded_generator(seed: int):
    """A CPU torch.Generator: the same seed gives the same video on any device."""
    import torch

    return torch.Generator(device="cpu").manual_seed(seed)


def step_callback(report: ProgressCallback, total: int):
    """A `callback_on_step_end` that reports each finished step, then decoding after the last.

    Whatever `report` raises (GenerationInterrupted) propagates out of the pipeline call.
    """

    def on_step_end(_pipe, index: int, _timestep, callback_kwargs: dict) -> dict:
        check_finite(callback_kwargs.get("latents"), f"latents after denoising step {index + 1}")
        report(Progress("denoising", index + 1, total))
        if index + 1 == total:
            report(Progress("decoding"))
        return callback_kwargs

    return on_step_end


def check_finite(latents, what: str) -> None:
    """NonFiniteOutput when a latents tensor holds NaN or Inf: one reduction, so a step pays almost nothing."""
    import torch

    if isinstance(latents, torch.Tensor) and not bool(torch.isfinite(latents).all()):
        raise NonFiniteOutput(f"NaN/Inf in the {what}")


def to_uint8(frames) -> numpy.ndarray:
    """Pipeline output frames in [0, 1] (output_type="np", batch of one) as uint8 (N, H, W, 3).

    NaN would become black and a constant stack a blank video, both published as a success:
    NonFiniteOutput instead.
    """
    import numpy as np

    array = np.asarray(frames)
    if array.ndim == 5:
        array = array[0]
    if not np.isfinite(array).all():
        raise NonFiniteOutput("NaN/Inf in the decoded frames")
    if array.size and array.min() == array.max():
        raise NonFiniteOutput(f"every decoded pixel is {float(array.flat[0]):.3g} (a constant frame stack)")
    return (array * 255).round().clip(0, 255).astype(np.uint8)


def generate_with_text(pipe, image, framing: Framing, params: GenerationParams, report: ProgressCallback,
                       memory: MemoryOptions, *, default_negative_prompt: str = "", **extra) -> numpy.ndarray:
    """The call the text-and-image pipelines share (Wan, LTX-Video, CogVideoX); `extra` is each one's own.
    `default_negative_prompt` is the authors', for jobs without one."""
    apply_memory_options(pipe, memory)
    report(Progress("encoding_prompt"))
    width, height = framing.size
    result = pipe(
        image=framing.apply(image),
        prompt=params.prompt,
        negative_prompt=params.negative_prompt or default_negative_prompt,
        height=height,
        width=width,
        num_frames=params.num_frames,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale,
        generator=seeded_generator(params.seed),
        output_type="np",
        callback_on_step_end=step_callback(report, params.steps),
        **extra,
    )
    return to_uint8(result.frames)
