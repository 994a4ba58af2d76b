"""Stable Video Diffusion (Stability AI, 2023) through diffusers' StableVideoDiffusionPipeline.

SVD is conditioned on the image alone: it has no text encoder, so a sidecar's prompt is optional and
ignored. Guidance ramps linearly over the frames from 1.0 to the sidecar's `guidance_scale`
(the pipeline's max_guidance_scale), and the model is conditioned on the frame rate.
"""

from __future__ import annotations

from pipeline.backends.base import (
    LADDER_RUNGS,
    BackendRules,
    FrameRule,
    MemoryOptions,
    Preset,
    Progress,
    ProgressCallback,
    apply_memory_options,
    from_pretrained,
    seeded_generator,
    step_callback,
    to_uint8,
)
from pipeline.framing import Framing, plan

# Model card of stable-video-diffusion-img2vid-xt: 1024x576, 25 frames, 25 steps, max guidance 3,
# fps conditioning around 6-7 (diffusers' default 7).
RULES = BackendRules(
    name="svd",
    pipeline_classes=("StableVideoDiffusionPipeline",),
    default_model="stabilityai/stable-video-diffusion-img2vid-xt",
    prompt_required=False,
    size_multiple=8,  # the pipeline's check; the UNet passes odd latent sizes through its up blocks
    min_size=32,
    max_size=1280,
    frames=FrameRule(multiple=1, offset=0, minimum=2, maximum=25),  # xt was trained on 25 frames
    steps_range=(2, 100),
    guidance_range=(1.0, 10.0),
    fps_range=(3, 30),
    presets={
        "preview": Preset(width=576, height=320, num_frames=14, steps=15, fps=7, guidance_scale=3.0),
        "standard": Preset(width=1024, height=576, num_frames=25, steps=25, fps=7, guidance_scale=3.0),
        "high": Preset(width=1024, height=576, num_frames=25, steps=40, fps=7, guidance_scale=3.0),
        "max": Preset(width=1280, height=704, num_frames=25, steps=50, fps=7, guidance_scale=3.0),
    },
    ladder_rungs=LADDER_RUNGS,
    licence="Stability AI Community License",
    hub_prefixes=("stabilityai/stable-video-diffusion",),
    keeps_image_aspect=True,
)


class Backend:
    rules = RULES

    def load(self, model: str, placement):
        from diffusers import StableVideoDiffusionPipeline

        return from_pretrained(StableVideoDiffusionPipeline, model, placement)

    def build_tiny(self):
        """Random weights in the shapes of diffusers' own SVD fast tests.

        The CLIP image encoder sees 224x224 (the pipeline resizes the image to that before encoding),
        so it has patch size 14 where the fast tests, which feed tensors, use 1.
        """
        import torch
        from diffusers import (
            AutoencoderKLTemporalDecoder,
            EulerDiscreteScheduler,
            StableVideoDiffusionPipeline,
            UNetSpatioTemporalConditionModel,
        )
        from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

        from pipeline.runtime import quiet_libraries

        quiet_libraries()
        torch.manual_seed(0)
        unet = UNetSpatioTemporalConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            cross_attention_dim=32, num_attention_heads=8, projection_class_embeddings_input_dim=96,
            addition_time_embed_dim=32,
        )
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
            num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
            steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
        )
        # Four blocks where the fast tests have two: the real VAE's 8x stride, so a 32x32 job denoises
        # 4x4 latents (16x16 made each tiny job seconds long). 32 channels: its GroupNorms use 32 groups.
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=[32, 32, 32, 32], in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4, latent_channels=4, layers_per_block=1,
        )
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, projection_dim=32, num_hidden_layers=5, num_attention_heads=4, image_size=224,
            intermediate_size=37, patch_size=14,
        ))
        # The PIL image processor: the plain CLIPImageProcessor wants torchvision, which i2vd does not need.
        return StableVideoDiffusionPipeline(
            vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
            feature_extractor=CLIPImageProcessorPil(crop_size=32, size=32),
        )

    def framing(self, pipe, source, params) -> Framing:
        return plan(source, params, self.rules)

    def generate(self, pipe, image, params, report: ProgressCallback, memory: MemoryOptions):
        framing = self.framing(pipe, image.size, params)
        apply_memory_options(pipe, memory)
        report(Progress("encoding_prompt"))  # the image embedding: SVD has no text
        result = pipe(
            image=framing.apply(image),
            width=framing.size[0],
            height=framing.size[1],
            num_frames=params.num_frames,
            num_inference_steps=params.steps,
            min_guidance_scale=1.0,
            max_guidance_scale=params.guidance_scale,
            fps=params.fps,
            decode_chunk_size=memory.decode_chunk_size,
            generator=seeded_generator(params.seed),
            output_type="np",
            callback_on_step_end=step_callback(report, params.steps),
        )
        return to_uint8(result.frames)
