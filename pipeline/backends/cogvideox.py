"""CogVideoX image-to-video (THUDM / Zhipu AI, 2024) through diffusers' CogVideoXImageToVideoPipeline.

CogVideoX-5b-I2V learned its positional embeddings for one shape, 720x480 and 49 frames, and the
transformer refuses other sizes; other frame counts would silently swap the learned embeddings for
fixed ones. So for such a checkpoint `generate` accepts only its own shape (with a message saying so),
and the ladder has no fewer-frames or lower-resolution rung. CogVideoX 1.5 checkpoints (rotary
embeddings only) take any size the rules allow.
"""

from __future__ import annotations

from pipeline.backends.base import (
    BackendRules,
    FrameRule,
    MemoryOptions,
    Preset,
    ProgressCallback,
    from_pretrained,
    generate_with_text,
)
from pipeline.errors import PipelineError
from pipeline.framing import Framing, plan

# CogVideoX-5b-I2V's card: 720x480, 49 frames at 8 fps, 50 steps, guidance 6.
RULES = BackendRules(
    name="cogvideox",
    pipeline_classes=("CogVideoXImageToVideoPipeline",),
    default_model="THUDM/CogVideoX-5b-I2V",
    prompt_required=True,
    size_multiple=16,  # VAE stride 8 x patch size 2
    min_size=32,
    max_size=1360,  # CogVideoX 1.5's 1360x768
    frames=FrameRule(multiple=4, offset=1, minimum=5, maximum=81),  # 4 frames per latent; 1.5 makes 81
    steps_range=(2, 100),
    guidance_range=(1.0, 10.0),
    fps_range=(4, 30),
    presets={
        # One shape for the default checkpoint: the presets trade steps only.
        "preview": Preset(width=720, height=480, num_frames=49, steps=25, fps=8, guidance_scale=6.0),
        "standard": Preset(width=720, height=480, num_frames=49, steps=50, fps=8, guidance_scale=6.0),
        "high": Preset(width=720, height=480, num_frames=49, steps=75, fps=8, guidance_scale=6.0),
        "max": Preset(width=720, height=480, num_frames=49, steps=100, fps=8, guidance_scale=6.0),
    },
    ladder_rungs=("vae_slicing", "cpu_offload", "sequential_offload"),
    licence="CogVideoX License (5B weights)",
    hub_prefixes=("THUDM/CogVideoX", "zai-org/CogVideoX"),
    default_dtype="bfloat16",  # trained and published in bf16; fp16 overflows (NaN)
    keeps_image_aspect=True,  # CogVideoX 1.5; the fixed-shape 5b-I2V only crops to 3:2
)


class UnsupportedShape(PipelineError):
    """This checkpoint generates only the size and frame count it was trained at."""

    code = "unsupported_shape"
    retryable = False


def fixed_shape(pipe) -> tuple[int, int, int] | None:
    """(width, height, frames) a checkpoint with learned positional embeddings insists on, else None."""
    config = pipe.transformer.config
    if not config.use_learned_positional_embeddings:
        return None
    scale = pipe.vae_scale_factor_spatial
    return config.sample_width * scale, config.sample_height * scale, config.sample_frames


class Backend:
    rules = RULES

    def load(self, model: str, placement):
        from diffusers import CogVideoXImageToVideoPipeline

        # Published in bf16 with no fp16 variant files: asking for them first would only cost a failed try.
        return from_pretrained(CogVideoXImageToVideoPipeline, model, placement, try_fp16_variant=False)

    def build_tiny(self):
        """Random weights in the shapes of diffusers' own CogVideoX I2V fast tests, learned embeddings
        included (as in 5b-I2V), sized for 32x32 and 9 frames."""
        import torch
        from diffusers import (
            AutoencoderKLCogVideoX,
            CogVideoXDDIMScheduler,
            CogVideoXImageToVideoPipeline,
            CogVideoXTransformer3DModel,
        )

        from pipeline.runtime import quiet_libraries
        from pipeline.tiny_text import TEXT_DIM, build_t5_encoder, build_t5_tokenizer

        quiet_libraries()
        torch.manual_seed(0)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=2,
            text_embed_dim=TEXT_DIM, num_layers=1, sample_width=4, sample_height=4, sample_frames=9,
            patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,  # the real prompt length
            use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True,
        )
        vae = AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        )
        return CogVideoXImageToVideoPipeline(
            tokenizer=build_t5_tokenizer(), text_encoder=build_t5_encoder(), vae=vae, transformer=transformer,
            scheduler=CogVideoXDDIMScheduler(),
        )

    def framing(self, pipe, source, params) -> Framing:
        shape = fixed_shape(pipe)
        return plan(source, params, self.rules, fixed=shape[:2] if shape else None)

    def generate(self, pipe, image, params, report: ProgressCallback, memory: MemoryOptions):
        shape = fixed_shape(pipe)
        if shape is not None and shape != (params.width, params.height, params.num_frames):
            width, height, frames = shape
            raise UnsupportedShape(
                f"this CogVideoX checkpoint generates only {width}x{height} with {frames} frames "
                f"(asked: {params.width}x{params.height}, {params.num_frames} frames); set width, height "
                "and num_frames to those, or use a preset"
            )
        use_authors_scheduler(pipe)
        # The text length the transformer was built for (226 for the real models); dynamic CFG as the
        # authors sample (cli_demo.py: `use_dynamic_cfg=True`).
        return generate_with_text(pipe, image, self.framing(pipe, image.size, params), params, report, memory,
                                  max_sequence_length=pipe.transformer.config.max_text_seq_length,
                                  use_dynamic_cfg=True)


def use_authors_scheduler(pipe) -> None:
    """CogVideoXDPMScheduler with trailing timesteps, as the authors' cli_demo.py sets it; the checkpoints
    ship CogVideoXDDIMScheduler, which at 50 steps gives blurrier motion."""
    from diffusers import CogVideoXDPMScheduler

    config = pipe.scheduler.config
    if not isinstance(pipe.scheduler, CogVideoXDPMScheduler) or config.timestep_spacing != "trailing":
        pipe.scheduler = CogVideoXDPMScheduler.from_config(config, timestep_spacing="trailing")
