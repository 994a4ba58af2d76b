"""I2VGen-XL (ali-vilab, 2023) through diffusers' I2VGenXLPipeline: i2vd's original and default model.

The pipeline is deprecated upstream and needs two shims, both kept here: CLIP text embeddings
computed by i2vd (transformers >= 5.6 broke the pipeline's own path), and progress counted by wrapping
`scheduler.step` (the pipeline has no step callback).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.backends.base import (
    LADDER_RUNGS,
    BackendRules,
    FrameRule,
    MemoryOptions,
    Preset,
    Progress,
    ProgressCallback,
    apply_memory_options,
    check_finite,
    from_pretrained,
    seeded_generator,
    to_uint8,
)
from pipeline.framing import Framing, plan

RULES = BackendRules(
    name="i2vgen-xl",
    pipeline_classes=("I2VGenXLPipeline",),
    default_model="ali-vilab/i2vgen-xl",
    prompt_required=True,
    size_multiple=8,
    min_size=32,
    max_size=2048,
    frames=FrameRule(multiple=1, offset=0, minimum=8, maximum=32),
    steps_range=(10, 150),
    guidance_range=(1.0, 20.0),
    fps_range=(4, 30),
    presets={
        "preview": Preset(width=512, height=512, num_frames=8, steps=30, fps=8, guidance_scale=9.0),
        "standard": Preset(width=512, height=512, num_frames=16, steps=50, fps=8, guidance_scale=9.0),
        "high": Preset(width=768, height=768, num_frames=24, steps=80, fps=8, guidance_scale=9.0),
        "max": Preset(width=1024, height=1024, num_frames=32, steps=100, fps=8, guidance_scale=9.0),
    },
    ladder_rungs=LADDER_RUNGS,
    licence="MIT",
    hub_prefixes=("ali-vilab/i2vgen-xl",),
)


TARGET_FPS = 16
"""The frame-rate conditioning the authors sample with (VGen's i2vgen_xl_infer.yaml `target_fps: 16`, the
pipeline's default); they save the clip at 8 fps, the presets' rate. A sidecar's `fps` is only the MP4's."""

NEGATIVE_PROMPT = ("Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static, disfigured, "
                   "disconnected limbs, Ugly faces, incomplete arms")
"""The authors' negative prompt (VGen's inference config, diffusers' I2VGen-XL example), for jobs without one."""


class Backend:
    rules = RULES

    def load(self, model: str, placement):
        from diffusers import I2VGenXLPipeline

        return from_pretrained(I2VGenXLPipeline, model, placement)

    def build_tiny(self):
        """Random weights in the shapes of diffusers' own I2VGen-XL fast tests."""
        import torch
        from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline
        from diffusers.models.unets import I2VGenXLUNet
        from transformers import (
            CLIPImageProcessorPil,
            CLIPTextConfig,
            CLIPTextModel,
            CLIPVisionConfig,
            CLIPVisionModelWithProjection,
        )

        from pipeline.runtime import quiet_libraries
        from pipeline.tiny import build_tokenizer

        quiet_libraries()
        torch.manual_seed(0)
        unet = I2VGenXLUNet(
            block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=4, attention_head_dim=4, num_attention_heads=None, norm_num_groups=2,
        )
        vae = AutoencoderKL(
            block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D"], latent_channels=4, sample_size=32, norm_num_groups=2,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=0, eos_token_id=2, hidden_size=4, intermediate_size=16, layer_norm_eps=1e-05,
            num_attention_heads=2, num_hidden_layers=2, pad_token_id=1, vocab_size=1000, hidden_act="gelu",
            projection_dim=32,
        ))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=1,
        ))
        scheduler = DDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
            set_alpha_to_one=False,
        )
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = build_tokenizer(Path(tmp))
        # The PIL image processor: the plain CLIPImageProcessor wants torchvision, which i2vd does not
        # need, and warns on every build and load without it.
        return I2VGenXLPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
            feature_extractor=CLIPImageProcessorPil(crop_size=32, size=32), unet=unet, scheduler=scheduler,
        )

    def framing(self, pipe, source, params) -> Framing:
        # The authors centre-crop to the size asked (VGen's CenterCropWide, the pipeline's _center_crop_wide).
        return plan(source, params, self.rules)

    def generate(self, pipe, image, params, report: ProgressCallback, memory: MemoryOptions):
        apply_memory_options(pipe, memory)
        device = pipe._execution_device  # the GPU even while the sub-models are offloaded
        framing = self.framing(pipe, image.size, params)

        # 1. Encode prompts
        report(Progress("encoding_prompt"))
        prompt_embeds = encode_prompt(pipe, params.prompt, device)
        negative_embeds = encode_prompt(pipe, params.negative_prompt or NEGATIVE_PROMPT, device)

        # 2. Denoise, counting scheduler steps (the pipeline has no step callback)
        with _global_rng_seeded(params.seed, device), _counting_steps(pipe.scheduler, params.steps, report):
            result = pipe(
                image=framing.apply(image),
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                height=framing.size[1],
                width=framing.size[0],
                num_frames=params.num_frames,
                target_fps=TARGET_FPS,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance_scale,
                generator=seeded_generator(params.seed),
                decode_chunk_size=memory.decode_chunk_size,
                output_type="np",
            )

        # 3. To 8-bit frames
        return to_uint8(result.frames)


def encode_prompt(pipe, text: str, device):
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


@contextlib.contextmanager
def _global_rng_seeded(seed: int, device) -> Iterator[None]:
    """Seed torch's global generators too, in a fork that leaves the process's own state alone.

    The pipeline samples the image latents from the VAE without passing `generator`, so that draw
    comes from the global generator: without this, the same seed gave a different video depending
    on what the process had run before.
    """
    import torch

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
            check_finite(getattr(out, "prev_sample", None), f"latents after denoising step {done}")
            self.report(Progress("denoising", done, self.total))
            if done == self.total:
                self.report(Progress("decoding"))
            return out

        self.scheduler.step = step
        self.report(Progress("denoising", 0, self.total))
        return self

    def __exit__(self, *exc) -> None:
        del self.scheduler.step  # back to the class's method
