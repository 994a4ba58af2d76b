"""LTX-Video 0.9.x (Lightricks, 2024-2025) through diffusers' LTX pipelines: the fast backend.

Checkpoints from 0.9.5 on run through LTXConditionPipeline, older ones (0.9.0, 0.9.1) through
LTXImageToVideoPipeline. Some 0.9.5+ folders are saved as LTXPipeline, so the VAE tells them apart too:
0.9.5 brought a new VAE (LTXVideo095DownBlock3D). The presets are the distilled default's (8 steps,
guidance 1); a non-distilled checkpoint gets its own from pipeline.native. Frame-rate conditioning is
the video's fps.
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
from pipeline.framing import Framing, plan

CONDITION_PIPELINE = "LTXConditionPipeline"
MAX_SEQUENCE_LENGTH = 256
DISTILLED_TIMESTEPS = (1000, 993, 987, 981, 975, 909, 725, 0.03)
"""The distilled checkpoints' own 8-step schedule (diffusers' LTX docs for 0.9.7 and 0.9.8 distilled: the
base pass, with guidance 1.0, guidance_rescale 0.7 and no noise on the image condition)."""

# The default is the newest LTX-Video checkpoint in diffusers' format that diffusers 0.42 loads:
# 0.9.8 13B distilled (LTXConditionPipeline; LTX-2 is another model family and pipeline). Distilled, it
# samples in 8 steps without guidance (diffusers' LTX docs: guidance 1.0 for distilled variants); the
# issue's 768x512x121 job is its standard preset. Its card: sizes divisible by 32, 8k+1 frames, best
# below 720x1280 and 257 frames. Non-distilled checkpoints get 40-50 steps and guidance 3
# (pipeline.native). Every size is a pixel budget in the image's aspect ratio.
RULES = BackendRules(
    name="ltx",
    pipeline_classes=(CONDITION_PIPELINE, "LTXImageToVideoPipeline", "LTXPipeline"),
    default_model="Lightricks/LTX-Video-0.9.8-13B-distilled",
    prompt_required=True,
    size_multiple=32,
    min_size=32,
    max_size=1280,
    frames=FrameRule(multiple=8, offset=1, minimum=9, maximum=257),
    steps_range=(2, 100),
    guidance_range=(1.0, 10.0),
    fps_range=(8, 60),
    presets={
        "preview": Preset(width=512, height=352, num_frames=65, steps=8, fps=24, guidance_scale=1.0),
        "standard": Preset(width=768, height=512, num_frames=121, steps=8, fps=24, guidance_scale=1.0),
        "high": Preset(width=1216, height=704, num_frames=121, steps=8, fps=24, guidance_scale=1.0),
        "max": Preset(width=1216, height=704, num_frames=257, steps=8, fps=24, guidance_scale=1.0),
    },
    ladder_rungs=LADDER_RUNGS,
    licence="LTXV Open Weights License (0.9.5 and later, the default 0.9.8 included); OpenRAIL-M (0.9.0-0.9.1)",
    hub_prefixes=("Lightricks/LTX-Video",),
    default_dtype="bfloat16",  # trained and published in bf16
    keeps_image_aspect=True,
)


def pipeline_class_for(class_name: str | None, vae_config: dict | None = None):
    """LTXConditionPipeline for 0.9.5+ checkpoints (by class name or VAE), LTXImageToVideoPipeline otherwise."""
    from diffusers import LTXConditionPipeline, LTXImageToVideoPipeline

    new_vae = "LTXVideo095DownBlock3D" in (vae_config or {}).get("down_block_types", ())
    return LTXConditionPipeline if class_name == CONDITION_PIPELINE or new_vae else LTXImageToVideoPipeline


def is_distilled(pipe) -> bool:
    """Distillation leaves no trace in the configs: Lightricks names those checkpoints "...-distilled"."""
    return "distilled" in str(getattr(pipe, "name_or_path", "")).lower()


class Backend:
    rules = RULES

    def load(self, model: str, placement):
        from diffusers import AutoencoderKLLTXVideo, DiffusionPipeline

        # Unreadable configs leave the choice to the other one; from_pretrained below says why in one line.
        try:
            class_name = DiffusionPipeline.load_config(model).get("_class_name")
        except Exception:  # noqa: BLE001
            class_name = None
        try:
            vae_config = AutoencoderKLLTXVideo.load_config(model, subfolder="vae")
        except Exception:  # noqa: BLE001
            vae_config = None
        # Lightricks publishes no fp16 variant files: asking for them first would only cost a failed try.
        return from_pretrained(pipeline_class_for(class_name, vae_config), model, placement, try_fp16_variant=False)

    def build_tiny(self):
        """Random weights in the shapes of diffusers' own LTX condition-pipeline fast tests (0.9.5+ layout)."""
        import torch
        from diffusers import (
            AutoencoderKLLTXVideo,
            FlowMatchEulerDiscreteScheduler,
            LTXConditionPipeline,
            LTXVideoTransformer3DModel,
        )

        from pipeline.runtime import quiet_libraries
        from pipeline.tiny_text import TEXT_DIM, build_t5_encoder, build_t5_tokenizer

        quiet_libraries()
        torch.manual_seed(0)
        transformer = LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
            attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=TEXT_DIM,
        )
        vae = AutoencoderKLLTXVideo(
            in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
            upsample_residual=(False,) * 4, upsample_factor=(1, 1, 1, 1), timestep_conditioning=False,
            patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
        )
        return LTXConditionPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=build_t5_encoder(),
            tokenizer=build_t5_tokenizer(), transformer=transformer,
        )

    def framing(self, pipe, source, params) -> Framing:
        return plan(source, params, self.rules)

    def generate(self, pipe, image, params, report: ProgressCallback, memory: MemoryOptions):
        # LTX-Video was trained on 256 T5 tokens (its inference.py, and LTXConditionPipeline's default);
        # LTXImageToVideoPipeline's default of 128 would cut longer prompts in half.
        extra = {"frame_rate": params.fps, "max_sequence_length": MAX_SEQUENCE_LENGTH}
        condition = type(pipe).__name__ == CONDITION_PIPELINE
        if pipe.vae.config.timestep_conditioning:
            # Timestep-aware VAEs (0.9.1 on) decode best slightly noised: the values diffusers documents.
            extra.update(decode_timestep=0.05, decode_noise_scale=0.025)
            if condition:
                extra["image_cond_noise_scale"] = 0.025
        if condition and is_distilled(pipe) and params.steps == len(DISTILLED_TIMESTEPS):
            extra.update(timesteps=list(DISTILLED_TIMESTEPS), guidance_rescale=0.7, image_cond_noise_scale=0.0)
        return generate_with_text(pipe, image, self.framing(pipe, image.size, params), params, report, memory,
                                  **extra)
