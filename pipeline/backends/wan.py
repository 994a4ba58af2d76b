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
    from_pretrained,
    generate_with_text,
)
from pipeline.errors import ModelUnavailable
from pipeline.framing import Framing, plan

# Wan2.2-TI2V-5B's card and generate.py: 1280x704 or 704x1280 only (SUPPORTED_SIZES["ti2v-5B"]), 121
# frames at 24 fps, 50 steps, guidance 5.0, shift 5.0. Every preset is that pixel budget in the image's
# aspect ratio (best_output_size); standard is the authors' default job, preview saves frames and steps.
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
        "preview": Preset(width=1280, height=704, num_frames=41, steps=20, fps=24, guidance_scale=5.0),
        "standard": Preset(width=1280, height=704, num_frames=121, steps=50, fps=24, guidance_scale=5.0),
        "high": Preset(width=1280, height=704, num_frames=121, steps=70, fps=24, guidance_scale=5.0),
        "max": Preset(width=1280, height=704, num_frames=121, steps=100, fps=24, guidance_scale=5.0),
    },
    ladder_rungs=LADDER_RUNGS,
    licence="Apache-2.0",
    hub_prefixes=("Wan-AI/",),
    default_dtype="bfloat16",  # trained and published in bf16
    image_capable_when={"WanPipeline": {"expand_timesteps": True}},  # TI2V: the image is the first latent frame
    keeps_image_aspect=True,
)

NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
"""The authors' default negative prompt (wan/configs/shared_config.py `sample_neg_prompt`), for jobs without one."""

AREA_480P = 832 * 480


def flow_shift_for(width: int, height: int) -> float:
    """The authors' sampling shift: 3.0 at 480p (Wan2.1's generate.py for 480p), 5.0 at 720p (their configs)."""
    return 3.0 if width * height <= AREA_480P else 5.0


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
        # The VAE loads in float32 (the authors' examples and diffusers' Wan docs): in half precision its
        # decode loses detail, and loading it half first then upcasting would round its weights.
        return from_pretrained(WanImageToVideoPipeline, model, placement, try_fp16_variant=False,
                               component_dtypes={"vae": torch.float32})

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

    def framing(self, pipe, source, params) -> Framing:
        return plan(source, params, self.rules)

    def generate(self, pipe, image, params, report: ProgressCallback, memory: MemoryOptions):
        framing = self.framing(pipe, image.size, params)
        set_flow_shift(pipe, flow_shift_for(*framing.size))
        return generate_with_text(pipe, image, framing, params, report, memory,
                                  default_negative_prompt=NEGATIVE_PROMPT)


def set_flow_shift(pipe, shift: float) -> None:
    """The scheduler with `shift`, rebuilt from its own config only when the shift changes."""
    config = pipe.scheduler.config
    if "flow_shift" in config and config.flow_shift != shift:
        pipe.scheduler = type(pipe.scheduler).from_config(config, flow_shift=shift)
