"""Full-size SVD, Wan, LTX-Video and CogVideoX with random weights, from their default models' configs.

Each backend's default model is rebuilt from the configs of its diffusers conversion (defaults left
out), so its FLOPs can be counted on the "meta" device anywhere and its speed measured on a GPU
without downloading weights (kernels do not care what the weights are). What each default job feeds
the networks follows the pipeline's __call__: guidance batch, text length, what the VAE encodes.

    FULL["wan"].models(torch.device("meta"))      # the networks, no memory
    FULL["wan"].flops(models, FULL["wan"].jobs[0])  # {part: FLOPs} for one job
    FULL["wan"].pipeline(torch.device("cuda"), torch.bfloat16)  # built and cast one model at a time
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# T5 v1.1 XXL encoder (LTX-Video, CogVideoX) and umT5-XXL (Wan): same shapes, different vocabularies.
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1)
UMT5_XXL = {**T5_XXL, "vocab_size": 256384}
CLIP_VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                  hidden_act="gelu", projection_dim=1024, image_size=224, patch_size=14, num_channels=3,
                  layer_norm_eps=1e-5)

SVD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
               layers_per_block=2, latent_channels=4, in_channels=3, out_channels=3)
WAN22_5B = dict(attention_head_dim=128, cross_attn_norm=True, eps=1e-6, ffn_dim=14336, freq_dim=256,
                in_channels=48, num_attention_heads=24, num_layers=30, out_channels=48, patch_size=(1, 2, 2),
                qk_norm="rms_norm_across_heads", text_dim=4096)
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                 scale_factor_temporal=4, scale_factor_spatial=16, patch_size=2, dim_mult=[1, 2, 4, 4],
                 num_res_blocks=2, temperal_downsample=[False, True, True], latents_mean=[0.0] * 48,
                 latents_std=[1.0] * 48)
# LTX-Video 0.9.7/0.9.8 13B (the daemon's default is 0.9.8 13B distilled): the 2B layout at width 4096 and
# 48 blocks (Lightricks' ltxv-13b configs; diffusers' convert_ltx_to_diffusers.py for 0.9.7).
LTX_13B = dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
               attention_head_dim=128, cross_attention_dim=4096, num_layers=48, activation_fn="gelu-approximate",
               qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096,
               attention_bias=True, attention_out_bias=True)
# The scheduler those checkpoints ship: static shift, no `mu` (LTXConditionPipeline passes its own sigmas and
# no mu, so use_dynamic_shifting=True raised "mu must be passed" on every LTX run).
LTX_SCHEDULER = dict(use_dynamic_shifting=False, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                     max_image_seq_len=4096, shift_terminal=0.1, num_train_timesteps=1000)
LTX_095_VAE = dict(  # 0.9.5 on (0.9.7 and 0.9.8 keep it)
    in_channels=3, out_channels=3, latent_channels=128, block_out_channels=(128, 256, 512, 1024, 2048),
    down_block_types=("LTXVideo095DownBlock3D",) * 4, decoder_block_out_channels=(256, 512, 1024),
    layers_per_block=(4, 6, 6, 2, 2), decoder_layers_per_block=(5, 5, 5, 5),
    spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(False, False, False, False),
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"), upsample_residual=(True, True, True),
    upsample_factor=(2, 2, 2), timestep_conditioning=True, patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6,
    scaling_factor=1.0, encoder_causal=True, decoder_causal=False, spatial_compression_ratio=32,
    temporal_compression_ratio=8,
)
COGVIDEOX_5B_I2V = dict(in_channels=32, num_layers=42, num_attention_heads=48, use_rotary_positional_embeddings=True,
                        use_learned_positional_embeddings=True, patch_size=2, patch_bias=True, sample_height=60,
                        sample_width=90, sample_frames=49)
COGVIDEOX_VAE = dict(scaling_factor=0.7)


@dataclass(frozen=True)
class Job:
    """One job's shape; `guidance` > 1 means classifier-free guidance (two denoiser passes per step)."""

    name: str
    width: int
    height: int
    num_frames: int
    steps: int
    guidance: float
    fps: int


@dataclass(frozen=True)
class FullModel:
    backend: str
    jobs: tuple[Job, ...]  # the default job (the standard preset) first
    models: Callable[[torch.device], dict[str, torch.nn.Module]]
    flops: Callable[[dict[str, torch.nn.Module], Job], dict[str, int]]
    pipeline: Callable[[torch.device, torch.dtype], object]
    denoiser: str  # the key of the denoiser in models()
    block_cache: bool = True  # the denoiser has diffusers' CacheMixin (FirstBlockCache); SVD's UNet has not


def count(call, device: torch.device) -> int:
    """FLOPs of `call()` (matmuls, convolutions, attention), nothing computed on the meta device."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # The counter knows no CPU attention kernel: on the CPU, attention runs as plain matmuls.
    kernels = sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()
    with FlopCounterMode(display=False) as counter, kernels, torch.inference_mode():
        call()
    return counter.get_total_flops()


def _device(models: dict[str, torch.nn.Module]) -> torch.device:
    return next(next(iter(models.values())).parameters()).device


def _empty(device, *size, dtype=torch.float32):
    return torch.zeros(*size, device=device, dtype=dtype)


def _text(models, key: str, batch: int, tokens: int) -> int:
    device = _device(models)
    ids = torch.zeros(batch, tokens, dtype=torch.long, device=device)
    return count(lambda: models[key](ids), device)


# -- SVD --------------------------------------------------------------------------------------------


def svd_models(device: torch.device, dtype: torch.dtype | None = None) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    # The UNet's defaults are SVD's (num_frames 25 is xt's).
    return _build(device, dtype, unet=UNetSpatioTemporalConditionModel,
                  vae=lambda: AutoencoderKLTemporalDecoder(**SVD_VAE),
                  image_encoder=lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_H)))


def svd_flops(models, job: Job) -> dict[str, int]:
    unet, vae, image = models["unet"], models["vae"], models["image_encoder"]
    device = _device(models)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w, f = job.height // scale, job.width // scale, job.num_frames
    batch = 2 if job.guidance > 1 else 1  # the pipeline batches the unconditional half
    return {
        f"denoiser step (batch {batch})": count(lambda: unet(
            _empty(device, batch, f, 8, h, w), torch.tensor(1.0, device=device),
            encoder_hidden_states=_empty(device, batch, 1, 1024), added_time_ids=_empty(device, batch, 3),
            return_dict=False), device),
        "vae decode (all frames)": count(lambda: vae.decode(_empty(device, f, 4, h, w), num_frames=f), device),
        "vae encode (the image)": count(lambda: vae.encode(_empty(device, 1, 3, job.height, job.width)), device),
        "image encoder": count(lambda: image(_empty(device, 1, 3, 224, 224)), device),
    }


def svd_pipeline(device: torch.device, dtype: torch.dtype):
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessorPil

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    pipe = StableVideoDiffusionPipeline(**svd_models(device, dtype), scheduler=scheduler,
                                        feature_extractor=CLIPImageProcessorPil())
    return pipe


# -- Wan 2.2 TI2V-5B ----------------------------------------------------------------------------------


def wan_models(device: torch.device, dtype: torch.dtype | None = None) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    return _build(device, dtype, transformer=lambda: WanTransformer3DModel(**WAN22_5B),
                  vae=lambda: AutoencoderKLWan(**WAN22_VAE),
                  text_encoder=lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL)),
                  keep_float32=("vae",))  # as Backend.load loads it


def wan_flops(models, job: Job) -> dict[str, int]:
    transformer, vae = models["transformer"], models["vae"]
    device = _device(models)
    t, h, w = (job.num_frames - 1) // 4 + 1, job.height // 16, job.width // 16
    tokens = t * (h // 2) * (w // 2)
    passes = 2 if job.guidance > 1 else 1  # Wan runs the two halves of guidance as two batch-1 calls
    one = count(lambda: transformer(
        _empty(device, 1, 48, t, h, w), _empty(device, 1, tokens),  # TI2V-5B: a timestep per token
        _empty(device, 1, 512, 4096), return_dict=False), device)
    return {
        f"denoiser step ({passes} passes)": one * passes,
        "vae decode (all frames)": count(lambda: vae.decode(_empty(device, 1, 48, t, h, w)), device),
        "vae encode (the image)": count(lambda: vae.encode(_empty(device, 1, 3, 1, job.height, job.width)), device),
        "text encoder (prompt, negative; 512 tokens)": _text(models, "text_encoder", 2, 512),
    }


def wan_pipeline(device: torch.device, dtype: torch.dtype):
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

    from pipeline.tiny_text import build_t5_tokenizer

    return WanImageToVideoPipeline(
        **wan_models(device, dtype), tokenizer=build_t5_tokenizer(), image_encoder=None, image_processor=None, transformer_2=None,
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                          num_train_timesteps=1000, flow_shift=5.0),
        boundary_ratio=None, expand_timesteps=True)


# -- LTX-Video 0.9.8 13B distilled ---------------------------------------------------------------------


def ltx_models(device: torch.device, dtype: torch.dtype | None = None) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    return _build(device, dtype, transformer=lambda: LTXVideoTransformer3DModel(**LTX_13B),
                  vae=lambda: AutoencoderKLLTXVideo(**LTX_095_VAE),
                  text_encoder=lambda: T5EncoderModel(T5Config(**T5_XXL)))


def ltx_flops(models, job: Job) -> dict[str, int]:
    transformer, vae = models["transformer"], models["vae"]
    device = _device(models)
    t, h, w = (job.num_frames - 1) // 8 + 1, job.height // 32, job.width // 32
    tokens, text = t * h * w, 256  # LTXConditionPipeline's max_sequence_length
    batch = 2 if job.guidance > 1 else 1
    return {
        f"denoiser step (batch {batch})": count(lambda: transformer(
            _empty(device, batch, tokens, 128), _empty(device, batch, text, 4096), _empty(device, batch, tokens),
            _empty(device, batch, text), num_frames=t, height=h, width=w,
            rope_interpolation_scale=(8 / job.fps, 32, 32), return_dict=False), device),
        "vae decode (all frames)": count(lambda: vae.decode(
            _empty(device, 1, 128, t, h, w), temb=_empty(device, 1)), device),
        "vae encode (the image)": count(lambda: vae.encode(_empty(device, 1, 3, 1, job.height, job.width)), device),
        f"text encoder (prompt, negative; {text} tokens)": _text(models, "text_encoder", 2, text),
    }


def ltx_pipeline(device: torch.device, dtype: torch.dtype):
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXConditionPipeline

    from pipeline.tiny_text import build_t5_tokenizer

    return LTXConditionPipeline(**ltx_models(device, dtype), tokenizer=build_t5_tokenizer(),
                                scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER))


# -- CogVideoX-5b-I2V -------------------------------------------------------------------------------------


def cogvideox_models(device: torch.device, dtype: torch.dtype | None = None) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    return _build(device, dtype, transformer=lambda: CogVideoXTransformer3DModel(**COGVIDEOX_5B_I2V),
                  vae=lambda: AutoencoderKLCogVideoX(**COGVIDEOX_VAE),
                  text_encoder=lambda: T5EncoderModel(T5Config(**T5_XXL)))


def cogvideox_flops(models, job: Job) -> dict[str, int]:
    transformer, vae = models["transformer"], models["vae"]
    device = _device(models)
    t, h, w = (job.num_frames - 1) // 4 + 1, job.height // 8, job.width // 8
    batch = 2 if job.guidance > 1 else 1
    return {
        f"denoiser step (batch {batch})": count(lambda: transformer(
            _empty(device, batch, t, 32, h, w), _empty(device, batch, 226, 4096),
            torch.zeros(batch, dtype=torch.long, device=device), return_dict=False), device),
        "vae decode (all frames)": count(lambda: vae.decode(_empty(device, 1, 16, t, h, w)), device),
        "vae encode (the image)": count(lambda: vae.encode(_empty(device, 1, 3, 1, job.height, job.width)), device),
        "text encoder (prompt, negative; 226 tokens)": _text(models, "text_encoder", 2, 226),
    }


def cogvideox_pipeline(device: torch.device, dtype: torch.dtype):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline

    from pipeline.tiny_text import build_t5_tokenizer

    scheduler = CogVideoXDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       snr_shift_scale=1.0, timestep_spacing="trailing", clip_sample=False,
                                       set_alpha_to_one=True)
    return CogVideoXImageToVideoPipeline(**cogvideox_models(device, dtype), tokenizer=build_t5_tokenizer(),
                                         scheduler=scheduler)


def _build(device: torch.device, dtype: torch.dtype | None, keep_float32: tuple[str, ...] = (),
           **factories: Callable[[], torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """Each model made on `device` and cast to `dtype` (when given) before the next is made: the float32
    weights of LTX-Video 13B and its T5-XXL together (76 GB) would not fit one H100 before casting."""
    torch.manual_seed(0)
    models = {}
    for name, factory in factories.items():
        with torch.device(device):
            model = factory()
        # SVD's AlphaBlenders make their mix factor with torch.Tensor([...]), which ignores the device context.
        model = model.to(device)
        cast = dtype is not None and name not in keep_float32
        models[name] = _cast({name: model}, dtype)[name] if cast else model.eval()
    return models


def _cast(models: dict[str, torch.nn.Module], dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """To `dtype` as from_pretrained(torch_dtype=...) would load them: the modules a model keeps in
    float32 (Wan's norms and time embedding; T5's `wo` in fp16 only, as transformers does) stay there."""
    from diffusers import ModelMixin

    for model in models.values():
        keep = model._keep_in_fp32_modules or []
        if not isinstance(model, ModelMixin) and dtype != torch.float16:
            keep = []
        for name, param in model.named_parameters():
            fp32 = any(k in name.split(".") if not isinstance(model, ModelMixin) else k in name for k in keep)
            param.data = param.data.to(torch.float32 if fp32 else dtype)
        for buffer_name, buffer in model.named_buffers():
            if buffer.is_floating_point():
                *path, leaf = buffer_name.split(".")
                model.get_submodule(".".join(path)).register_buffer(leaf, buffer.to(dtype))
    return {name: model.eval() for name, model in models.items()}


# Each backend's default job: its standard preset (pipeline/backends/<name>.py), at the default weights.
FULL: dict[str, FullModel] = {
    "svd": FullModel("svd", (Job("standard", 1024, 576, 25, 25, 3.0, 7),), svd_models, svd_flops, svd_pipeline,
                     "unet", block_cache=False),
    "wan": FullModel("wan", (Job("standard", 1280, 704, 121, 50, 5.0, 24),), wan_models, wan_flops, wan_pipeline,
                     "transformer"),
    # The distilled default: the 768x512x121 goal (<= 2 s on one H100), 8 steps without guidance.
    "ltx": FullModel("ltx", (Job("distilled", 768, 512, 121, 8, 1.0, 24),), ltx_models, ltx_flops, ltx_pipeline,
                     "transformer"),
    "cogvideox": FullModel("cogvideox", (Job("standard", 720, 480, 49, 50, 6.0, 8),), cogvideox_models,
                           cogvideox_flops, cogvideox_pipeline, "transformer"),
}
