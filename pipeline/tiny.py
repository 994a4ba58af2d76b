"""A tiny, randomly initialised I2VGen-XL for smoke tests and offline demos (it makes noise, not art).

The shapes are those diffusers' own I2VGen-XL fast tests use. The tokenizer is built from a small
byte-level vocab.json/merges.txt, so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

MARKER = "i2vd-tiny-smoke-test.txt"


def _byte_alphabet() -> list[str]:
    """CLIP's byte-to-unicode table: every byte gets a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def build_tokenizer(workdir: Path):
    """A CLIP tokenizer over a small byte-level vocabulary written into `workdir`: nothing is downloaded.

    Its ids fit any CLIP text model's vocabulary, so the full-size benchmark model uses it too.
    """
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges = ["t h", "th e</w>", "a n", "an d</w>", "o n</w>", "i n"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    (workdir / "vocab.json").write_text(json.dumps(vocab))
    (workdir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(
        vocab_file=str(workdir / "vocab.json"), merges_file=str(workdir / "merges.txt"), model_max_length=77
    )


def build_tiny_pipeline(seed: int = 0):
    """A fresh tiny I2VGenXLPipeline with random weights."""
    from pipeline.loader import quiet_libraries

    quiet_libraries()
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline
    from diffusers.models.unets import I2VGenXLUNet
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(seed)
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
    return I2VGenXLPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), unet=unet, scheduler=scheduler,
    )


def ensure_tiny_model(directory: Path) -> Path:
    """Save the tiny model to `directory` once (save_pretrained), so it loads like a real one."""
    if (directory / MARKER).is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so daemons starting together never see half a model.
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=directory.parent))
    try:
        build_tiny_pipeline().save_pretrained(staging)
        (staging / MARKER).write_text(
            "Tiny randomly initialised I2VGen-XL built by i2vd for smoke tests. Its videos are noise.\n"
        )
        os.rename(staging, directory)
    except OSError:
        if not (directory / MARKER).is_file():  # not a lost race with another daemon
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
