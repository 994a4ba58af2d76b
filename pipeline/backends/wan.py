"""Wan 2.1 / 2.2 (Alibaba Wan-AI, 2025) through diffusers' WanImageToVideoPipeline.

One pipeline class serves the Wan image-to-video checkpoints: Wan2.2-TI2V-5B (the default: a
high-compression VAE, 16x spatially, 24 fps), Wan2.1-I2V-14B-480P/720P (CLIP image encoder, 8x VAE,
16 fps) and Wan2.2-I2V-A14B (two experts switched at a timestep boundary). The pipeline reads which
one it is from the checkpoint's config; i2vd only keeps sizes valid for all of them.
"""

from __future__ import annotations

from pipeline.backends.base import (
    LADDER_RUNGS,
    BackendRules,
    FrameRule,
    MemoryOptions,
    Preset,
    ProgressCallback,
    generate_with_text,
    from_pretrained,
)
from pipeline.errors import ModelUnavailable

# Wan2.2-TI2V-5B's card: 1280x704 (or 704x1280), 121 frames at 24 fps, 50 steps, guidance 5.0.
RULES = BackendRules(
    name="wan",
    # Wan2.2-TI2V-5B-Diffusers is saved as WanPipeline (text and image in one model); so is Wan2.1-T2V.
    pipeline_classes=("WanImageToVideoPipeline", "WanPipeline"),
    default_model="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
    prompt_required=True,
    # VAE stride x patch size: 16x2 for TI2V-5B, 8x2 for the 14B models. 32 suits both (the pipeline
    # would otherwise silently round the size down); Wan2.1-720P's 1280x720 becomes 1280x704.
    size_multiple=32,
    min_size=32,
    max_size=1280,
    frames=FrameRule(multiple=4, offset=1, minimum=5, maximum=121),  # the VAE packs 4 frames per latent
    steps_range=(2, 100),
    guidance_range=(1.0, 10.0),
    fps_range=(8, 30),  # the model takes no fps: this is the MP4's rate (24 for 5B, 16 for 2.1)
    presets={
        "preview": Preset(width=640, height=352, num_frames=41, steps=20, fps=24, guidance_scale=5.0),
        "standard": Preset(width=960, height=544, num_frames=81, steps=30, fps=24, guidance_scale=5.0),
        "high": Preset(width=1280, height=704, num_frames=121, steps=50, fps=24, guidance_scale=5.0),
        "max": Preset(width=1280, height=704, num_frames=121, steps=80, fps=24, guidance_scale=5.0),
    },
    ladder_rungs=LADDER_RUNGS,
    licence="Apache-2.0",
    hub_prefixes=("Wan-AI/",),
    default_dtype="bfloat16",  # trained and published in bf16
    image_capable_when={"WanPipeline": {"expand_timesteps": True}},  # TI2V: the image is the first latent frame
)


class Backend:
    rules = RULES

    def load(self, model: str, placement):
        import torch
        from diffusers import DiffusionPipeline, WanImageToVideoPipeline

        try:
            index = DiffusionPipeline.load_config(model)
        except Exception:  # noqa: BLE001  from_pretrained below says why in one line
            index = None
        refusal = index and RULES.refusal(index)
        if refusal:
            raise ModelUnavailable(f"model {model!r} is {refusal}")
        pipe = from_pretrained(WanImageToVideoPipeline, model, placement, try_fp16_variant=False)
        if placement.dtype != torch.float32:
            # Wan's own examples keep the VAE in float32: in half precision its decode loses detail.
            pipe.vae.to(dtype=torch.float32)
        return pipe

    def build_tiny(self):
        """Random weights in the shapes of diffusers' own Wan 2.2 TI2V-5B fast tests (the default model)."""
        import torch
        from diffusers import (
            AutoencoderKLWan,
            UniPCMultistepScheduler,
            WanImageToVideoPipeline,
            WanTransformer3DModel,
        )

        from pipeline.runtime import quiet_libraries
        from pipeline.tiny_text import TEXT_DIM, build_t5_tokenizer, build_umt5_encoder

        quiet_libraries()
        torch.manual_seed(0)
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
            latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
        )
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
            text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
        )
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
        return WanImageToVideoPipeline(
            tokenizer=build_t5_tokenizer(), text_encoder=build_umt5_encoder(), vae=vae, scheduler=scheduler,
            transformer=transformer, transformer_2=None, image_encoder=None, image_processor=None,
            boundary_ratio=None, expand_timesteps=True,
        )

    def generate(self, pipe, image, params, report: ProgressCallback, memory: MemoryOptions):
        return generate_with_text(pipe, image, params, report, memory)
