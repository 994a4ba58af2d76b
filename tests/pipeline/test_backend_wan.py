"""Wan 2.1/2.2 image-to-video: 4k+1 frames, sizes multiple of 32 (valid for the 5B and 14B models)."""

from __future__ import annotations

import pytest

from support.backends import BackendContract, test_image
from pipeline.backends import RULES
from pipeline.backends.base import MemoryOptions


class TestWan(BackendContract):
    name = "wan"
    frames = 9
    ladder_frames = 9
    pipeline_class = "WanImageToVideoPipeline"

    def test_rules(self):
        rules = RULES["wan"]
        assert rules.prompt_required is True
        assert [n for n in range(0, 30) if rules.frames.valid(n)] == [5, 9, 13, 17, 21, 25, 29]
        assert rules.frames.valid(121) and not rules.frames.valid(125) and not rules.frames.valid(120)
        assert rules.frames.floor(120) == 117 and rules.frames.floor(4) is None
        assert rules.size_multiple == 32
        high = rules.presets["high"]
        assert (high.width, high.height, high.num_frames, high.fps) == (1280, 704, 121, 24)  # TI2V-5B native

    def test_the_tiny_model_takes_the_full_size(self, pipe):
        """rope_max_seq_len at the real 1024: with 32, any width above 1024 failed in the rotary embedding."""
        assert pipe.transformer.config.rope_max_seq_len == 1024
        frames = self.run(pipe, self.params(width=1280, height=704, num_frames=5, steps=1))
        assert frames.shape == (5, 704, 1280, 3)


def tiny_wan21(tmp_path):
    """Wan2.1-I2V-14B's layout (CLIP image encoder, 8x VAE, 36 input channels), diffusers' fast-test shapes."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    from pipeline.tiny_text import TEXT_DIM, build_t5_tokenizer, build_umt5_encoder

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024, image_dim=4)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=16, patch_size=1))
    WanImageToVideoPipeline(
        vae=AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True]),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder=build_umt5_encoder(),
        tokenizer=build_t5_tokenizer(), transformer=transformer, transformer_2=None, image_encoder=image_encoder,
        image_processor=CLIPImageProcessorPil(crop_size=32, size=32),
    ).save_pretrained(tmp_path)
    return tmp_path


def tiny_wan22_a14b(tmp_path):
    """Wan2.2-I2V-A14B's layout: two experts switched at boundary_ratio, no image encoder."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel

    from pipeline.tiny_text import TEXT_DIM, build_t5_tokenizer, build_umt5_encoder

    def expert():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
            text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)

    torch.manual_seed(0)
    WanImageToVideoPipeline(
        vae=AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True]),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        text_encoder=build_umt5_encoder(), tokenizer=build_t5_tokenizer(), transformer=expert(),
        transformer_2=expert(), image_encoder=None, image_processor=None, boundary_ratio=0.875,
    ).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("build", [tiny_wan21, tiny_wan22_a14b], ids=["wan2.1-i2v-14b", "wan2.2-i2v-a14b"])
def test_the_14b_layouts_load_and_generate_through_the_same_backend(build, tmp_path):
    import torch

    from pipeline.backends import detect_backend, get_backend
    from pipeline.runtime import Placement

    folder = build(tmp_path / "model")
    assert detect_backend(folder) == "wan"
    pipe = get_backend("wan").load(str(folder), Placement(torch.device("cpu"), torch.float32))
    assert (pipe.transformer_2 is not None) == (build is tiny_wan22_a14b)
    steps, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a shared machine
    try:
        frames = get_backend("wan").generate(pipe, test_image(), TestWan().params(steps=4),
                                             lambda p: steps.append(p.step) if p.phase == "denoising" else None,
                                             MemoryOptions())
    finally:
        torch.set_num_threads(threads)
    assert frames.shape == (9, 32, 32, 3) and steps == [1, 2, 3, 4]
