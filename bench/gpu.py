"""GPU: each backend's full-size model with random weights, through the daemon's own generation code.

The model is built from ali-vilab/i2vgen-xl's configs, written out below (nothing is downloaded, and
the speed of these kernels does not depend on the weights): the I2VGenXLUNet (1.42 B parameters),
the SD 2.1 VAE, the OpenCLIP ViT-H/14 text and vision towers. Each job goes through
`pipeline.generate.VideoGenerator.generate`, exactly as the worker runs it. Reported per run:
seconds per job; seconds per denoising step (CUDA events at the first and last scheduler step, no
extra syncs); what lies outside the loop (encoders, VAE encode and decode, frames to uint8); peak
VRAM; the model's FLOPs per job (torch.utils.flop_counter, counted once per shape: FLOPs do not
depend on dtype or kernels); and model FLOPs utilisation against a bf16 matmul timed in the same
run. `--variants` makes one change at a time to the daemon's current GPU set-up and prints each
change's prediction beside its result.

The other backends (svd, wan, ltx, cogvideox) are built from their default models' configs in
bench/full_models.py and measured the same way, with the accelerations diffusers offers as variants
(attention backends, regional compilation, FirstBlockCache, VAE tiling); MFU is also given for the
denoiser alone (FLOPs per step over seconds per step), the figure the issue's >= 50 % goal is about.

    .venv/bin/python -m bench.gpu                   # CUDA: standard preset and 1280x704, fp16 and bf16
    .venv/bin/python -m bench.gpu --variants        # CUDA: one change at a time, standard preset
    .venv/bin/python -m bench.gpu --toy --variants  # anywhere: the tiny model, a smoke test (CPU default)
    .venv/bin/python -m bench.gpu --backend ltx     # CUDA: LTX-Video's default job (0.9.8 13B distilled), bf16 and fp16
    .venv/bin/python -m bench.gpu --backend wan --variants --steps 4   # fewer steps: same s/step and MFU
    .venv/bin/python -m bench.gpu --flops           # anywhere: FLOPs per default job of every backend
    make gpu-bench                                  # CUDA: every backend's default job, appended to RESULTS.md

`--all` (what `make gpu-bench` runs) is the one command for a lent GPU, within 10 minutes on one H100:
each backend's default job (its standard preset at its default weights; LTX-Video's is the distilled
768x512x121 job) at full size in the backend's default dtype, timed over `--steps` (4) denoising steps,
then projected to the preset's steps (s/step is steady); FLOPs come from the configs on the meta device.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from bench.harness import footer, header
from pipeline.backends import DEFAULT_BACKEND, RULES
from pipeline.generate import VideoGenerator
from pipeline.runtime import Placement, quiet_libraries
from pipeline.params import GenerationParams

# ali-vilab/i2vgen-xl, the diffusers-format configs of its components (defaults left out).
UNET = dict(
    in_channels=4, out_channels=4, sample_size=32, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, attention_head_dim=64,
    num_attention_heads=64,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, act_fn="silu",
    block_out_channels=(128, 256, 512, 512), sample_size=768, scaling_factor=0.18125, force_upcast=True,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
TEXT_ENCODER = dict(  # OpenCLIP ViT-H/14 text tower
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, hidden_act="gelu",
    projection_dim=1024, max_position_embeddings=77, vocab_size=49408, layer_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
IMAGE_ENCODER = dict(  # OpenCLIP ViT-H/14 vision tower
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, hidden_act="gelu",
    projection_dim=1024, image_size=224, patch_size=14, num_channels=3, layer_norm_eps=1e-5,
)
SCHEDULER = dict(
    beta_start=0.0001, beta_end=0.02, beta_schedule="squaredcos_cap_v2", clip_sample=False,
    num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
    set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading",
)

TARGET_SECONDS = 4.5  # standard preset on one H100
ALL_STEPS = 4  # --all: denoising steps timed per job (3 step intervals), projected to the preset's
DEFAULT_DTYPES = {  # issue 17: the dtype each backend's authors publish (pipeline.loader's `auto` on CUDA)
    "i2vgen-xl": torch.float16, "svd": torch.float16,
    "wan": torch.bfloat16, "ltx": torch.bfloat16, "cogvideox": torch.bfloat16,
}
H100_BF16_PEAK = 989e12  # FLOP/s, H100 SXM dense bf16 tensor cores (datasheet), for --flops without a GPU
ANCHOR = "the seed's anchor: 51 s and 13.8 GB on an RTX 4090; arithmetic floor on an H100 about 2.7 s"


@dataclass(frozen=True)
class Shape:
    name: str
    width: int
    height: int
    num_frames: int
    steps: int
    guidance: float = 9.0
    fps: int = 8


STANDARD = Shape("standard", 512, 512, 16, 50)
NATIVE = Shape("1280x704", 1280, 704, 16, 50)
TOY = Shape("toy", 16, 16, 4, 2)


@dataclass(frozen=True)
class Setup:
    """How the pipeline runs; the defaults are what the daemon does on a GPU today."""

    dtype: torch.dtype = torch.float16
    attention: str = "sdpa"  # diffusers' SDPA processor, PyTorch picks the kernel; or classic, sdpa-<backend>
    split_guidance: bool = False  # two batch-1 UNet calls per step instead of one batch-2 call
    channels_last: bool = False
    cudnn_benchmark: bool = False  # let cuDNN time its convolution algorithms for each shape
    fused_qkv: bool = False  # one projection matmul for query, key and value in the UNet's attention
    compile: str | None = None  # torch.compile mode for the UNet
    decode_chunk: int = 8
    cpu_timesteps: bool = False  # scheduler timesteps kept on the CPU: no host sync in each step
    cuda_only: bool = False
    # diffusers' own accelerations for the transformer backends:
    attention_backend: str | None = None  # diffusers' attention dispatcher: flash, _native_cudnn, sage, ...
    regional_compile: bool = False  # torch.compile each repeated block once (fast warm-up), not the whole model
    first_block_cache: float | None = None  # FirstBlockCache threshold: skip the other blocks when step 1 barely moved
    vae_tiling: bool = False


@dataclass(frozen=True)
class Variant:
    name: str
    setup: Setup
    prediction: str  # written before the first measurement; see bench/RESULTS.md


BASELINE = Variant("baseline", Setup(), "the daemon today")
VARIANTS = (
    Variant("fp32", Setup(dtype=torch.float32), "4-8x slower: no tensor cores for fp32 matmuls"),
    Variant("bf16", Setup(dtype=torch.bfloat16), "within 3 % of fp16: same tensor-core rate"),
    Variant("attention-classic", Setup(attention="classic"), "+30-60 %: scores materialised"),
    Variant("sdpa-flash", Setup(attention="sdpa-flash", cuda_only=True), "within 3 %: already picked"),
    Variant("sdpa-efficient", Setup(attention="sdpa-efficient", cuda_only=True), "+5-15 %"),
    Variant("sdpa-cudnn", Setup(attention="sdpa-cudnn", cuda_only=True), "0 to -10 % on Hopper"),
    Variant("guidance-split", Setup(split_guidance=True), "+5-15 %: half-size GEMMs, twice the launches"),
    Variant("channels-last", Setup(channels_last=True), "0 to -10 %: NHWC convs, but transposes"),
    Variant("cudnn-benchmark", Setup(cudnn_benchmark=True, cuda_only=True), "0 to -5 %: convs are ~half"),
    Variant("fused-qkv", Setup(fused_qkv=True), "-1 to -3 %: fewer, larger GEMMs"),
    Variant("cpu-timesteps", Setup(cpu_timesteps=True), "-1 to -5 %: 2 host syncs less per step"),
    Variant("decode-chunk-1", Setup(decode_chunk=1), "+2-5 % per job: 16 small VAE decodes"),
    Variant("decode-chunk-16", Setup(decode_chunk=16), "-1 % per job, more peak VRAM"),
    Variant("compile", Setup(compile="default", cuda_only=True), "-10 to -25 % per step; minutes of warm-up"),
    Variant("compile-cudagraphs", Setup(compile="reduce-overhead", cuda_only=True),
            "a further -5 % if launch-bound"),
)

# For the transformer backends, on top of bf16 (their recommended dtype). Predictions written before
# any measurement (no GPU has been lent yet).
BACKEND_BASELINE = Setup(dtype=torch.bfloat16)
BACKEND_VARIANTS = (
    Variant("fp16", replace(BACKEND_BASELINE, dtype=torch.float16), "within 3 % of bf16"),
    Variant("attention-cudnn", replace(BACKEND_BASELINE, attention_backend="_native_cudnn", cuda_only=True),
            "-5 to -15 % on Hopper at long sequences"),
    Variant("attention-flash", replace(BACKEND_BASELINE, attention_backend="_native_flash", cuda_only=True),
            "within 5 %: SDPA already picks flash"),
    Variant("regional-compile", replace(BACKEND_BASELINE, regional_compile=True, cuda_only=True),
            "-5 to -15 % per step, warm-up under a minute"),
    Variant("first-block-cache", replace(BACKEND_BASELINE, first_block_cache=0.05),
            "-20 to -40 % per job; changes the output"),
    Variant("vae-tiling", replace(BACKEND_BASELINE, vae_tiling=True), "+0-10 % per job, far less decode VRAM"),
)


# -- the model --------------------------------------------------------------------------------


def full_models(device: torch.device) -> dict[str, torch.nn.Module]:
    """The four full-size networks with random weights, made directly on `device` (may be "meta")."""
    from diffusers import AutoencoderKL
    from diffusers.models.unets import I2VGenXLUNet
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    with torch.device(device):
        return dict(unet=I2VGenXLUNet(**UNET), vae=AutoencoderKL(**VAE),
                    text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)),
                    image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**IMAGE_ENCODER)))


def build_full(device: torch.device, dtype: torch.dtype):
    """The full-size I2VGen-XL pipeline with random weights."""
    from diffusers import DDIMScheduler, I2VGenXLPipeline
    from transformers import CLIPImageProcessor

    from pipeline.tiny import build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    pipe = I2VGenXLPipeline(**full_models(device), tokenizer=tokenizer, feature_extractor=CLIPImageProcessor(),
                            scheduler=DDIMScheduler(**SCHEDULER))
    return pipe.to(device=device, dtype=dtype)


def flops_by_part(models: dict[str, torch.nn.Module], shape: Shape) -> dict[str, int]:
    """Each network's FLOPs in one job of `shape`, from empty inputs of the shapes the pipeline feeds.

    On the "meta" device nothing is computed (attention counts as its matmuls), so the full-size
    model is counted on any machine; the GPU run counts the real pipeline and should agree.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    unet, vae, text, image = (models[k] for k in ("unet", "vae", "text_encoder", "image_encoder"))
    device = next(unet.parameters()).device
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = (shape.num_frames, shape.height // scale, shape.width // scale)
    empty = lambda *size: torch.zeros(*size, device=device)  # noqa: E731

    def count(call) -> int:
        # The counter knows no CPU attention kernel: on the CPU, attention runs as plain matmuls.
        kernels = sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()
        with FlopCounterMode(display=False) as counter, kernels, torch.inference_mode():
            call()
        return counter.get_total_flops()

    tokens = text.config.max_position_embeddings
    return {
        "unet step (guidance batch of 2)": count(lambda: unet(
            empty(2, 4, *latents), torch.tensor(999, device=device),
            encoder_hidden_states=empty(2, tokens, unet.config.cross_attention_dim), fps=empty(2),
            image_latents=empty(2, 4, *latents), image_embeddings=empty(2, 1, image.config.projection_dim),
            return_dict=False)),
        "vae decode (all frames)": count(lambda: vae.decode(empty(shape.num_frames, 4, *latents[1:]))),
        "vae encode (the image)": count(lambda: vae.encode(empty(1, 3, shape.height, shape.width))),
        "text encoder (prompt, negative)": count(lambda: text(torch.zeros(2, tokens, dtype=torch.long,
                                                                              device=device))),
        "image encoder": count(lambda: image(empty(1, 3, image.config.image_size, image.config.image_size))),
    }


def config_flops(backend: str, shape: Shape) -> tuple[int, int]:
    """(FLOPs outside the loop, FLOPs per denoising step) of a full-size job, counted on the meta device."""
    if backend == DEFAULT_BACKEND:
        parts = flops_by_part(full_models(torch.device("meta")), shape)
        step = parts["unet step (guidance batch of 2)"]
    else:
        from bench.full_models import FULL, Job

        full = FULL[backend]
        parts = full.flops(full.models(torch.device("meta")), Job(**asdict(shape)))
        step = next(iter(parts.values()))  # the denoiser step comes first
    return sum(parts.values()) - step, step


def build_toy(device: torch.device, dtype: torch.dtype, backend: str = "i2vgen-xl"):
    from pipeline.tiny import build_tiny_pipeline

    return build_tiny_pipeline(backend).to(device=device, dtype=dtype)


def build_pipeline(backend: str, toy: bool, device: torch.device, dtype: torch.dtype):
    """The pipeline a run measures: tiny (toy) or full-size with random weights."""
    if toy:
        return build_toy(device, dtype, backend)
    if backend == DEFAULT_BACKEND:
        return build_full(device, dtype)
    from bench.full_models import FULL

    return FULL[backend].pipeline(device, dtype)


def block_cache(backend: str) -> bool:
    """Whether the backend's denoiser takes diffusers' FirstBlockCache (SVD's UNet does not)."""
    from bench.full_models import FULL

    return backend in FULL and FULL[backend].block_cache


def denoiser_of(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def toy_shapes(backend: str) -> list[Shape]:
    """The smallest valid job of each backend, 2 steps: a smoke test of the measuring code."""
    if backend == DEFAULT_BACKEND:
        return [TOY]
    rules = RULES[backend]
    # 9 frames or fewer: valid for every frame rule, and the one shape the tiny CogVideoX accepts.
    return [Shape("toy", 32, 32, rules.frames.floor(9), 2, guidance=rules.presets["standard"].guidance_scale,
                  fps=rules.presets["standard"].fps)]


def full_shapes(backend: str) -> list[Shape]:
    if backend == DEFAULT_BACKEND:
        return [STANDARD, NATIVE]
    from bench.full_models import FULL

    return [Shape(**asdict(job)) for job in FULL[backend].jobs]


def prepare(pipe, setup: Setup) -> None:
    """Apply `setup` to a fresh pipeline."""
    pipe.set_progress_bar_config(disable=True)
    torch.backends.cudnn.benchmark = setup.cudnn_benchmark  # process-wide: set for every run
    denoiser = denoiser_of(pipe)
    if setup.attention_backend:
        denoiser.set_attention_backend(setup.attention_backend)
    if setup.vae_tiling:
        pipe.vae.enable_tiling()
    if setup.first_block_cache is not None:
        from diffusers.hooks import FirstBlockCacheConfig

        denoiser.enable_cache(FirstBlockCacheConfig(threshold=setup.first_block_cache))
    if setup.regional_compile:
        _compile_regions(denoiser)
    if setup.fused_qkv:
        pipe.unet.fuse_qkv_projections()
    if setup.attention == "classic":
        from diffusers.models.attention_processor import AttnProcessor

        pipe.unet.set_attn_processor(AttnProcessor())
        pipe.vae.set_attn_processor(AttnProcessor())
    if setup.channels_last:
        for module in (*pipe.unet.modules(), *pipe.vae.modules()):
            if isinstance(module, torch.nn.Conv2d):
                module.to(memory_format=torch.channels_last)
            elif isinstance(module, torch.nn.Conv3d):  # the UNet's temporal convolutions
                module.to(memory_format=torch.channels_last_3d)
    if setup.split_guidance:
        _split_guidance(pipe.unet)
    if setup.cpu_timesteps:
        set_timesteps = pipe.scheduler.set_timesteps
        pipe.scheduler.set_timesteps = lambda steps, device=None, **kw: set_timesteps(steps, device="cpu", **kw)
    if setup.compile:
        pipe.unet.compile(mode=setup.compile)


def _compile_regions(denoiser) -> None:
    """torch.compile each block of the denoiser's main stack: one compilation, reused by every block."""
    if getattr(denoiser, "_repeated_blocks", None):
        denoiser.compile_repeated_blocks(fullgraph=True)
        return
    stacks = [m for m in denoiser.children() if isinstance(m, torch.nn.ModuleList)]
    for block in max(stacks, key=len):  # e.g. CogVideoX's transformer_blocks, which declares none
        block.compile(fullgraph=True)


def _split_guidance(unet) -> None:
    """Run the unconditional and the conditional half of each step as two separate UNet calls."""
    batched = unet.forward

    def half(value, i):
        return value[i:i + 1] if torch.is_tensor(value) and value.ndim and value.shape[0] == 2 else value

    def forward(sample, timestep, **kwargs):
        if sample.shape[0] != 2:
            return batched(sample, timestep, **kwargs)
        outs = [batched(sample[i:i + 1], timestep, **{k: half(v, i) for k, v in kwargs.items()})[0]
                for i in range(2)]
        return (torch.cat(outs),)

    unet.forward = forward


def attention_kernels(setup: Setup, device: torch.device):
    """The SDPA backend to force, if any (a context manager around each job)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
                "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}
    if setup.attention in backends:
        return sdpa_kernel(backends[setup.attention])
    return contextlib.nullcontext()


# -- measuring --------------------------------------------------------------------------------


class Marks:
    """Points in time on the device's own clock: CUDA events (no sync to record), else perf_counter."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.points: dict[str, object] = {}

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.points[name] = event
        else:
            self.points[name] = time.perf_counter()

    def seconds(self, start: str, end: str) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return self.points[start].elapsed_time(self.points[end]) / 1000
        return self.points[end] - self.points[start]


@dataclass(frozen=True)
class Timing:
    seconds: float  # the whole job, as the worker sees it
    step_seconds: float
    outside_loop: float  # job minus the denoising steps
    peak_vram: int | None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_job(generator: VideoGenerator, image, params: GenerationParams, kernels: contextlib.AbstractContextManager
            ) -> Timing:
    device = generator.placement.device
    marks = Marks(device)

    def on_progress(progress):
        if progress.phase == "denoising" and progress.step in (1, progress.total):
            marks.mark(f"step{progress.step}")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    started = time.perf_counter()
    with kernels, np.errstate(invalid="ignore"):  # random weights may give NaN frames; no matter
        generator.generate(image, params, on_progress)
    synchronize(device)
    seconds = time.perf_counter() - started
    step = marks.seconds("step1", f"step{params.steps}") / (params.steps - 1)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return Timing(seconds, step, seconds - step * params.steps, peak)


def count_flops(generator: VideoGenerator, image, params: GenerationParams) -> tuple[int, int]:
    """(FLOPs outside the loop, FLOPs per denoising step), from jobs of 1 and 2 steps."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # The counter knows the CUDA attention kernels, not the CPU one: on the CPU attention runs as
    # plain matmuls (which it counts) while counting.
    on_cpu = generator.placement.device.type == "cpu"
    totals = []
    for steps in (1, 2):
        kernels = sdpa_kernel(SDPBackend.MATH) if on_cpu else contextlib.nullcontext()
        with FlopCounterMode(display=False) as counter, kernels, np.errstate(invalid="ignore"):
            generator.generate(image, replace(params, steps=steps))
        totals.append(counter.get_total_flops())
    per_step = totals[1] - totals[0]
    return totals[0] - per_step, per_step


def count_syncs(generator: VideoGenerator, image, params: GenerationParams, kernels) -> tuple[int, float]:
    """(host syncs in a 2-step job, syncs per extra step), from torch's sync debug mode (CUDA only).

    `kernels` makes the attention-kernel context for each job.
    """
    counts = []
    for steps in (2, 4):
        with warnings.catch_warnings(record=True) as caught, kernels(), np.errstate(invalid="ignore"):
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                generator.generate(image, replace(params, steps=steps))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    return counts[0], (counts[1] - counts[0]) / 2


def matmul_rate(device: torch.device, n: int, repeats: int) -> float:
    """FLOP/s of a square bf16 matmul on `device`: the reference for utilisation."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):  # the best of three: clocks ramp up, and other work may be running
        marks = Marks(device)
        marks.mark("start")
        for _ in range(repeats):
            a @ b
        marks.mark("end")
        best = max(best, 2 * n**3 * repeats / marks.seconds("start", "end"))
    return best


@dataclass
class Result:
    label: str
    shape: Shape
    dtype: torch.dtype
    timing: Timing | None = None
    warmup_seconds: float = 0.0
    flops: int | None = None
    step_flops: int | None = None  # the denoiser's, per step
    error: str | None = None
    syncs: tuple[int, float] | None = None
    prediction: str = ""

    def mfu(self, rate: float) -> float | None:
        return None if self.flops is None or self.timing is None else self.flops / self.timing.seconds / rate

    def step_mfu(self, rate: float) -> float | None:
        """Utilisation in the denoising loop alone."""
        if self.step_flops is None or self.timing is None:
            return None
        return self.step_flops / self.timing.step_seconds / rate


class Bench:
    def __init__(self, device: torch.device, toy: bool, repeats: int, backend: str = "i2vgen-xl",
                 flops_from_configs: bool = False) -> None:
        self.device, self.toy, self.repeats, self.backend = device, toy, repeats, backend
        self.flops_from_configs = flops_from_configs  # count on the meta device, not two jobs on the GPU
        self.image = PIL.Image.fromarray(
            np.random.default_rng(0).integers(0, 255, (704, 1280, 3), dtype=np.uint8))
        self.flops: dict[str, tuple[int, int]] = {}  # per shape: (outside the loop, per step)

    def params(self, shape: Shape) -> GenerationParams:
        return GenerationParams(prompt="a lighthouse on a cliff, waves crashing, golden hour",
                                negative_prompt="blurry, distorted", width=shape.width, height=shape.height,
                                num_frames=shape.num_frames, fps=shape.fps, steps=shape.steps,
                                guidance_scale=shape.guidance, seed=0)

    def run(self, label: str, shape: Shape, setup: Setup, *, syncs: bool = False) -> Result:
        result = Result(label, shape, setup.dtype)
        try:
            self._measure(result, shape, setup, syncs)
        except Exception as exc:  # one variant failing (a kernel not available, OOM) must not stop the rest
            first_line = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            result.error = f"{type(exc).__name__}: {first_line}"
        gc.collect()  # the pipeline is gone with _measure's frame; give its memory back before the next
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return result

    def _measure(self, result: Result, shape: Shape, setup: Setup, syncs: bool) -> None:
        pipe = build_pipeline(self.backend, self.toy, self.device, setup.dtype)
        prepare(pipe, setup)
        generator = VideoGenerator(pipe, Placement(self.device, setup.dtype), decode_chunk_size=setup.decode_chunk)
        params = self.params(shape)
        kernels = lambda: attention_kernels(setup, self.device)  # noqa: E731  (a fresh context per job)
        if shape.name not in self.flops and self.flops_from_configs and not self.toy:
            self.flops[shape.name] = config_flops(self.backend, shape)
        elif shape.name not in self.flops and not (setup.compile or setup.regional_compile):
            self.flops[shape.name] = count_flops(generator, self.image, params)
        started = time.perf_counter()
        run_job(generator, self.image, replace(params, steps=2), kernels())
        result.warmup_seconds = time.perf_counter() - started  # autotuning, allocator, compilation
        runs = [run_job(generator, self.image, params, kernels()) for _ in range(self.repeats)]
        result.timing = min(runs, key=lambda t: t.seconds)
        if syncs and self.device.type == "cuda":
            result.syncs = count_syncs(generator, self.image, params, kernels)
        if shape.name in self.flops:
            outside, per_step = self.flops[shape.name]
            result.flops = outside + per_step * shape.steps
            result.step_flops = per_step


# -- reporting --------------------------------------------------------------------------------


def device_line(device: torch.device) -> str:
    if device.type != "cuda":
        return f"device   CPU ({torch.get_num_threads()} threads): a smoke test at toy size, not a GPU figure"
    props = torch.cuda.get_device_properties(device)
    return (f"device   {props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}, "
            f"{props.multi_processor_count} SMs; CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")


def print_table(results: list[Result], rate: float, baseline: Result | None = None) -> None:
    print(f"{'run':<26}{'dtype':<10}{'s/job':>8}{'s/step':>9}{'outside':>9}{'VRAM GB':>9}{'TFLOP':>8}"
          f"{'MFU':>7}{'step MFU':>9}{'warm-up':>9}  {'vs base':>8}  prediction")
    for r in results:
        dtype = str(r.dtype).removeprefix("torch.")
        if r.timing is None:
            print(f"{r.label:<26}{dtype:<10}  failed: {r.error}")
            continue
        t = r.timing
        vram = f"{t.peak_vram / 1e9:.1f}" if t.peak_vram is not None else "-"
        flops = f"{r.flops / 1e12:.1f}" if r.flops is not None else "-"
        mfu = f"{100 * r.mfu(rate):.0f}%" if r.mfu(rate) is not None else "-"
        step_mfu = f"{100 * r.step_mfu(rate):.0f}%" if r.step_mfu(rate) is not None else "-"
        versus = f"{100 * (t.seconds / baseline.timing.seconds - 1):+.0f}%" if baseline and baseline.timing else ""
        print(f"{r.label:<26}{dtype:<10}{t.seconds:>8.2f}{t.step_seconds:>9.3f}{t.outside_loop:>9.2f}{vram:>9}"
              f"{flops:>8}{mfu:>7}{step_mfu:>9}{r.warmup_seconds:>8.1f}s  {versus:>8}  {r.prediction}")
        if r.syncs:
            print(f"{'':<26}host syncs: {r.syncs[0]} in a 2-step job, {r.syncs[1]:g} per step")


def print_flops(toy: bool, backends: list[str]) -> int:
    """--flops: the arithmetic per job and its floor at the H100's bf16 peak, for each backend."""
    header("GPU bench: FLOPs per job from the model configs (meta device, nothing computed)", "bench.gpu")
    totals = {}
    for backend in backends:
        if backend == DEFAULT_BACKEND:
            totals.update(_i2vgen_flops(toy))
        elif toy:
            totals.update(_toy_flops(backend))
        else:
            totals.update(_backend_flops(backend))
    first = next(iter(totals))
    footer(f"{first}: {totals[first] / 1e12:.1f} TFLOP per job, arithmetic floor "
           f"{totals[first] / H100_BF16_PEAK:.2f} s at the H100's dense bf16 peak")
    return 0


def _print_job(label: str, shape: Shape, parts: dict[str, int], step_part: str) -> int:
    step = parts[step_part]
    total = step * shape.steps + sum(parts.values()) - step
    print(f"{label} ({shape.width}x{shape.height}, {shape.num_frames} frames, {shape.steps} steps, "
          f"guidance {shape.guidance:g}): {total / 1e12:.1f} TFLOP per job, floor {total / H100_BF16_PEAK:.2f} s "
          f"at {H100_BF16_PEAK / 1e12:.0f} TFLOP/s; denoising {100 * step * shape.steps / total:.0f} %")
    for name, flops in parts.items():
        print(f"         {name:<44}{flops / 1e12:>10.3f} TFLOP")
    return total


def _params_line(label: str, models: dict[str, torch.nn.Module]) -> None:
    print(f"params   {label}: " + ", ".join(f"{name} {sum(p.numel() for p in m.parameters()) / 1e9:.3f} B"
                                        for name, m in models.items()))


def _i2vgen_flops(toy: bool) -> dict[str, int]:
    if toy:
        from pipeline.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline()
        models = {k: getattr(pipe, k) for k in ("unet", "vae", "text_encoder", "image_encoder")}
    else:
        models = full_models(torch.device("meta"))
    _params_line(DEFAULT_BACKEND, models)
    totals = {}
    for shape in [TOY] if toy else [STANDARD, NATIVE]:
        parts = flops_by_part(models, shape)
        totals[shape.name] = _print_job(shape.name, shape, parts, "unet step (guidance batch of 2)")
    return totals


def _backend_flops(backend: str) -> dict[str, int]:
    """A backend's default jobs, counted on its full-size networks on the meta device."""
    from bench.full_models import FULL

    full = FULL[backend]
    models = full.models(torch.device("meta"))
    _params_line(backend, models)
    totals = {}
    for shape in full_shapes(backend):
        job = next(j for j in full.jobs if j.name == shape.name)
        parts = full.flops(models, job)
        totals[f"{backend} {shape.name}"] = _print_job(f"{backend} {shape.name}", shape, parts, next(iter(parts)))
    return totals


def _toy_flops(backend: str) -> dict[str, int]:
    """The tiny model's job counted through the real pipeline (1 and 2 steps): the toy check of the counting."""
    bench = Bench(torch.device("cpu"), toy=True, repeats=1, backend=backend)
    shape = toy_shapes(backend)[0]
    pipe = build_pipeline(backend, True, bench.device, torch.float32)
    prepare(pipe, Setup(dtype=torch.float32))
    generator = VideoGenerator(pipe, Placement(bench.device, torch.float32))
    outside, per_step = count_flops(generator, bench.image, bench.params(shape))
    parts = {"denoiser step": per_step, "outside the loop": outside}
    return {f"{backend} toy": _print_job(f"{backend} toy", shape, parts, "denoiser step")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", action="store_true", help="the tiny model at toy size (default without CUDA)")
    parser.add_argument("--variants", action="store_true", help="one change at a time, standard preset")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="variants to run (names as printed)")
    parser.add_argument("--repeats", type=int, default=2, help="timed jobs per run; the fastest counts")
    parser.add_argument("--flops", action="store_true",
                        help="only count FLOPs per job from the configs, on the meta device (no GPU needed)")
    parser.add_argument("--backend", nargs="+", choices=list(RULES), metavar="NAME",
                        help=f"backends to measure ({', '.join(RULES)}); default {DEFAULT_BACKEND}, "
                             "or all of them with --flops")
    parser.add_argument("--steps", type=int, help="denoising steps per job instead of the preset's (>= 2): "
                                                  "s/step and step MFU do not depend on it")
    parser.add_argument("--all", action="store_true", help="every backend's default job, its default dtype, "
                        f"timed over --steps ({ALL_STEPS}) steps and projected to the preset's (make gpu-bench)")
    parser.add_argument("--record", type=Path, metavar="RESULTS_MD",
                        help="with --all: append the output to this file (bench/RESULTS.md)")
    args = parser.parse_args(argv)
    quiet_libraries()
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    if args.flops:
        return print_flops(args.toy, args.backend or [DEFAULT_BACKEND, *(b for b in RULES if b != DEFAULT_BACKEND)])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    toy = args.toy or not cuda
    if args.all:
        return record(args.record, "`make gpu-bench`", lambda: _measure_all(args, device, cuda, toy))
    backends = args.backend or [DEFAULT_BACKEND]
    if backends == [DEFAULT_BACKEND]:
        return _measure_i2vgen(args, device, cuda, toy)
    return _measure_backends(args, backends, device, cuda, toy)


def _measure_backends(args, backends: list[str], device: torch.device, cuda: bool, toy: bool) -> int:
    """svd, wan, ltx, cogvideox: each job at bf16 and fp16, or --variants on the standard preset."""
    header(f"GPU: full-size {', '.join(backends)} (random weights) through VideoGenerator" if not toy
           else f"GPU bench, toy smoke test (tiny {', '.join(backends)})", "bench.gpu")
    print(device_line(device))
    rate = matmul_rate(device, 8192 if cuda else 512, 100 if cuda else 5)
    print(f"matmul   bf16 {8192 if cuda else 512}^3: {rate / 1e12:.1f} TFLOP/s (the reference for MFU)", flush=True)
    all_results: list[Result] = []
    for backend in backends:
        bench = Bench(device, toy, args.repeats, backend)
        shapes = toy_shapes(backend) if toy else full_shapes(backend)
        if args.steps:
            shapes = [replace(s, steps=args.steps) for s in shapes]
        base_setup = BACKEND_BASELINE if cuda else replace(BACKEND_BASELINE, dtype=torch.float32)
        print(f"## {backend}", flush=True)
        if args.variants:
            base = bench.run(f"{backend} baseline", shapes[0], base_setup)
            results = [base]
            for variant in BACKEND_VARIANTS:
                if (variant.setup.cuda_only and not cuda) or (args.only and variant.name not in args.only):
                    continue
                if variant.setup.first_block_cache is not None and not block_cache(backend):
                    print(f"{backend} {variant.name}: skipped, its denoiser has no FirstBlockCache (CacheMixin)")
                    continue
                setup = variant.setup if cuda else replace(variant.setup, dtype=torch.float32)
                result = bench.run(f"{backend} {variant.name}", shapes[0], setup)
                result.prediction = variant.prediction
                results.append(result)
                print_table([result], rate, base)
            print_table(results, rate, base)
        else:
            dtypes = [torch.bfloat16, torch.float16] if cuda else [torch.float32]
            results = [bench.run(f"{backend} {shape.name}", shape, replace(base_setup, dtype=dtype))
                       for shape in shapes for dtype in dtypes]
            print_table(results, rate)
        all_results += results
    done = sum(r.timing is not None for r in all_results)
    first = all_results[0]
    summary = (f"{first.label} {str(first.dtype).removeprefix('torch.')}: {first.timing.seconds:.2f} s per job"
               + (f", step MFU {100 * first.step_mfu(rate):.0f} %" if first.step_mfu(rate) is not None else "")
               if first.timing else f"{first.label} FAILED: {first.error}")
    footer(f"{'toy smoke test' if toy else 'backends'}: {done} of {len(all_results)} runs completed on "
           f"{device.type}; {summary}")
    return 0 if done == len(all_results) else 1


def _measure_all(args, device: torch.device, cuda: bool, toy: bool) -> int:
    """Every backend's default job in its default dtype, timed over a few steps, projected to the preset's."""
    backends = args.backend or [DEFAULT_BACKEND, *(b for b in RULES if b != DEFAULT_BACKEND)]
    header("GPU: every backend's default job at full size (random weights) through VideoGenerator" if not toy
           else "GPU bench --all, toy smoke test (tiny models)", "bench.gpu")
    print(device_line(device))
    rate = matmul_rate(device, 8192 if cuda else 512, 100 if cuda else 5)
    print(f"matmul   bf16 {8192 if cuda else 512}^3: {rate / 1e12:.1f} TFLOP/s (the reference for MFU)", flush=True)
    steps = args.steps or ALL_STEPS
    rows: list[tuple[Result, Shape]] = []
    for backend in backends:
        preset = (toy_shapes if toy else full_shapes)(backend)[0]
        dtype = DEFAULT_DTYPES[backend] if cuda else torch.float32
        bench = Bench(device, toy, args.repeats, backend, flops_from_configs=not toy)
        result = bench.run(f"{backend} {preset.name}", replace(preset, steps=max(2, min(steps, preset.steps))),
                           replace(BACKEND_BASELINE, dtype=dtype))
        print_table([result], rate)
        rows.append((result, preset))
    print(f"\nprojected to each preset's steps (outside the loop + steps x s/step); goals on one H100: "
          f"i2vgen-xl standard <= {TARGET_SECONDS} s, ltx distilled <= 2 s, step MFU >= 50 %")
    print(f"{'job':<24}{'dtype':<10}{'steps':>6}{'s/job':>9}{'s/step':>9}{'VRAM GB':>9}{'MFU':>7}{'step MFU':>9}")
    for result, preset in rows:
        if result.timing is None:
            print(f"{result.label:<24}{str(result.dtype).removeprefix('torch.'):<10}  failed: {result.error}")
            continue
        t = result.timing
        seconds = t.outside_loop + t.step_seconds * preset.steps
        outside, per_step = (None, None) if result.step_flops is None else (
            result.flops - result.step_flops * result.shape.steps, result.step_flops)
        mfu = "-" if per_step is None else f"{100 * (outside + per_step * preset.steps) / seconds / rate:.0f}%"
        step_mfu = "-" if per_step is None else f"{100 * per_step / t.step_seconds / rate:.0f}%"
        vram = f"{t.peak_vram / 1e9:.1f}" if t.peak_vram is not None else "-"
        print(f"{result.label:<24}{str(result.dtype).removeprefix('torch.'):<10}{preset.steps:>6}{seconds:>9.2f}"
              f"{t.step_seconds:>9.3f}{vram:>9}{mfu:>7}{step_mfu:>9}")
    done = sum(r.timing is not None for r, _ in rows)
    footer(f"{'toy smoke test' if toy else 'gpu-bench'}: {done} of {len(rows)} default jobs completed on "
           f"{device.type}")
    return 0 if done == len(rows) else 1


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, terminal) -> None:
        self.terminal, self.copy = terminal, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.terminal.write(text)

    def flush(self) -> None:
        self.terminal.flush()


def record(path: Path | None, title: str, run) -> int:
    """Run, and append what it printed to `path` (RESULTS.md) as one fenced block under `title` and the date."""
    if path is None:
        return run()
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        code = run()
    with path.open("a", encoding="utf-8") as results:
        results.write(f"\n### {title}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
                      f"```\n{tee.copy.getvalue().rstrip()}\n```\n")
    return code


def _measure_i2vgen(args, device: torch.device, cuda: bool, toy: bool) -> int:
    header("GPU: full-size I2VGen-XL (random weights) through VideoGenerator"
           if not toy else "GPU bench, toy smoke test (tiny model)", "bench.gpu")
    print(device_line(device))
    rate = matmul_rate(device, 8192 if cuda else 512, 100 if cuda else 5)
    print(f"matmul   bf16 {8192 if cuda else 512}^3: {rate / 1e12:.1f} TFLOP/s (the reference for MFU)", flush=True)

    bench = Bench(device, toy, args.repeats)
    standard = TOY if toy else STANDARD
    if args.variants:
        chosen = [v for v in VARIANTS if (cuda or not v.setup.cuda_only) and (not args.only or v.name in args.only)]
        base_setup = replace(BASELINE.setup, dtype=torch.float16 if cuda else torch.float32)
        base = bench.run(BASELINE.name, standard, base_setup, syncs=True)
        results = [base]
        for variant in chosen:
            setup = variant.setup if cuda or variant.setup.dtype != torch.float16 else replace(
                variant.setup, dtype=torch.float32)
            result = bench.run(variant.name, standard, setup, syncs=variant.setup.cpu_timesteps)
            result.prediction = variant.prediction
            results.append(result)
            print_table([result], rate, base)  # as it goes: a long run still leaves figures behind
        print()
        print_table(results, rate, base)
    else:
        shapes = [TOY] if toy else [STANDARD, NATIVE]
        dtypes = [torch.float16, torch.bfloat16] if cuda else [torch.float32, torch.bfloat16]
        results = [bench.run(shape.name, shape, replace(Setup(), dtype=dtype)) for dtype in dtypes
                   for shape in shapes]
        print_table(results, rate)
        base = results[0]

    for name, (outside, per_step) in bench.flops.items():
        print(f"FLOPs    {name}: {per_step / 1e12:.2f} TFLOP per step, {outside / 1e12:.2f} outside the loop; "
              f"floor at the matmul rate {(outside + per_step * standard.steps) / rate:.2f} s per job")
    if toy:
        done = sum(r.timing is not None for r in results)
        footer(f"toy smoke test: {done} of {len(results)} runs completed on {device.type}, baseline "
               f"{base.timing.seconds:.3f} s per job" if base.timing else f"toy smoke test FAILED: {base.error}")
        return 0 if done == len(results) else 1
    print(ANCHOR)
    t = base.timing
    footer(f"standard preset, {str(base.dtype).removeprefix('torch.')}: {t.seconds:.2f} s per job, "
           f"{t.step_seconds:.3f} s per step, peak {t.peak_vram / 1e9:.1f} GB, MFU {100 * base.mfu(rate):.0f} % "
           f"({'meets' if t.seconds <= TARGET_SECONDS else 'misses'} the target <= {TARGET_SECONDS} s on one H100)"
           if t else f"standard preset FAILED: {base.error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
