"""Tiny models in the layout of each backend's default checkpoint: the real repository, only sizes shrunk.

A tiny model built from diffusers' fast-test shapes does not look like a real repository: its
model_index.json names the class the test used, its scheduler has default flags and its tokenizer
comes as tokenizer.json. Real checkpoints differ (Wan2.2-TI2V-5B is a `WanPipeline` with
`expand_timesteps`, CogVideoX and LTX-Video ship `spiece.model` only, ...), and those differences
are what breaks a first real load. Each folder here starts from the backend's tiny pipeline and is
rewritten to the checkpoint's own model_index.json (class names, `_diffusers_version`, pipeline
flags), the non-size flags of its component configs, and its tokenizer files as the repository ships them.

Sources: the authors' configs as quoted by diffusers' conversion scripts, docs and model cards, and
by projects that pin them; where a value could not be read offline, diffusers' defaults for the
class (noted per entry). Limits that do not cost memory (Wan's rope_max_seq_len) keep real values.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

_T5 = ["transformers", "T5EncoderModel"]


@dataclass(frozen=True)
class CheckpointLayout:
    """What one default checkpoint's folder looks like, sizes aside."""

    backend: str
    hub_id: str
    model_index: dict  # the repository's model_index.json
    configs: dict[str, dict] = field(default_factory=dict)  # "subfolder/file.json" -> real flags
    tokenizer: str | None = None  # "t5" (spiece.model only), "t5+json" (and tokenizer.json), "clip"
    tokenizer_max_length: int = 512


LAYOUTS: dict[str, CheckpointLayout] = {
    "wan": CheckpointLayout(
        backend="wan", hub_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        model_index={
            "_class_name": "WanPipeline", "_diffusers_version": "0.35.0.dev0", "boundary_ratio": None,
            "expand_timesteps": True, "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "WanTransformer3DModel"], "transformer_2": [None, None],
            "vae": ["diffusers", "AutoencoderKLWan"],
        },
        configs={
            # The authors' sample_shift 5.0 for TI2V-5B; flow sigmas, as diffusers' Wan 2.2 conversion.
            "scheduler/scheduler_config.json": {"prediction_type": "flow_prediction", "use_flow_sigmas": True,
                                                "flow_shift": 5.0, "num_train_timesteps": 1000},
            "transformer/config.json": {"rope_max_seq_len": 1024, "patch_size": [1, 2, 2], "in_channels": 48,
                                        "out_channels": 48, "cross_attn_norm": True, "eps": 1e-6,
                                        "qk_norm": "rms_norm_across_heads", "freq_dim": 256, "image_dim": None,
                                        "added_kv_proj_dim": None},
            "vae/config.json": {"z_dim": 48, "is_residual": True, "in_channels": 12, "out_channels": 12,
                                "patch_size": 2, "scale_factor_spatial": 16, "scale_factor_temporal": 4,
                                "temperal_downsample": [False, True, True]},
        },
        tokenizer="t5+json",  # umT5's tokenizer folder carries both files
    ),
    "ltx": CheckpointLayout(
        # The default, LTX-Video 0.9.8 13B distilled, is saved as LTXConditionPipeline (diffusers' LTX docs
        # load it so). Its _diffusers_version and VAE flags could not be read offline: the version is the
        # release that added the class's 0.9.8 support, the VAE flags diffusers' defaults for the class.
        backend="ltx", hub_id="Lightricks/LTX-Video-0.9.8-13B-distilled",
        model_index={
            "_class_name": "LTXConditionPipeline", "_diffusers_version": "0.35.0.dev0",
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": _T5,
            "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "LTXVideoTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLLTXVideo"],
        },
        configs={
            # 0.9.5 on: a static shift stretched to end at 0.1, no `mu` (LTXConditionPipeline passes its own
            # sigmas and no mu: dynamic shifting would fail every job), as bench/full_models.py models it.
            "scheduler/scheduler_config.json": {"use_dynamic_shifting": False, "base_shift": 0.95, "max_shift": 2.05,
                                                "base_image_seq_len": 1024, "max_image_seq_len": 4096,
                                                "shift_terminal": 0.1, "shift": 1.0, "num_train_timesteps": 1000},
            # Causal encoder; the tiny decoder keeps the fast tests' timestep_conditioning=False (its weights
            # would change with it).
            "vae/config.json": {"encoder_causal": True, "decoder_causal": False},
        },
        tokenizer="t5", tokenizer_max_length=128,
    ),
    "cogvideox": CheckpointLayout(
        backend="cogvideox", hub_id="THUDM/CogVideoX-5b-I2V",
        model_index={
            "_class_name": "CogVideoXImageToVideoPipeline", "_diffusers_version": "0.31.0.dev0",
            "scheduler": ["diffusers", "CogVideoXDDIMScheduler"], "text_encoder": _T5,
            "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLCogVideoX"],
        },
        configs={
            "scheduler/scheduler_config.json": {
                "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False,
                "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "set_alpha_to_one": True,
                "snr_shift_scale": 1.0, "timestep_spacing": "trailing", "steps_offset": 0},
            # The learned positional embeddings stay, shrunk with the sizes to 32x32 and 9 frames (at the
            # real 720x480x49 they would make the tiny model's only job a full-size one).
            "transformer/config.json": {"use_rotary_positional_embeddings": True,
                                        "use_learned_positional_embeddings": True, "patch_size": 2,
                                        "temporal_compression_ratio": 4, "max_text_seq_length": 226},
            "vae/config.json": {"scaling_factor": 0.7, "temporal_compression_ratio": 4},
        },
        tokenizer="t5", tokenizer_max_length=226,
    ),
    "svd": CheckpointLayout(
        backend="svd", hub_id="stabilityai/stable-video-diffusion-img2vid-xt",
        model_index={
            "_class_name": "StableVideoDiffusionPipeline", "_diffusers_version": "0.24.0.dev0",
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
            "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
        },
        configs={
            "scheduler/scheduler_config.json": {
                "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "v_prediction",
                "sigma_max": 700.0, "sigma_min": 0.002, "steps_offset": 1, "timestep_spacing": "leading",
                "timestep_type": "continuous", "use_karras_sigmas": True},
        },
    ),
    "i2vgen-xl": CheckpointLayout(
        backend="i2vgen-xl", hub_id="ali-vilab/i2vgen-xl",
        model_index={
            "_class_name": "I2VGenXLPipeline", "_diffusers_version": "0.25.0.dev0",
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "I2VGenXLUNet"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
        configs={
            # diffusers' I2VGen-XL docs and fast tests: scaled-linear DDIM without sample clipping.
            "scheduler/scheduler_config.json": {"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                                "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False},
        },
        tokenizer="clip",
    ),
}


def build_checkpoint(backend: str, directory: Path) -> Path:
    """The tiny model of `backend` saved into `directory` in its default checkpoint's layout."""
    from pipeline.tiny import build_tiny_pipeline

    layout = LAYOUTS[backend]
    build_tiny_pipeline(backend).save_pretrained(directory)
    version = layout.model_index["_diffusers_version"]
    _write_json(directory / "model_index.json", layout.model_index)
    for config in directory.glob("*/*config.json"):
        name = f"{config.parent.name}/{config.name}"
        data = json.loads(config.read_text())
        if "_diffusers_version" in data:
            data["_diffusers_version"] = version
        _write_json(config, {**data, **layout.configs.get(name, {})})
    if layout.tokenizer is not None:
        _rewrite_tokenizer(directory / "tokenizer", layout)
    return directory


def _rewrite_tokenizer(folder: Path, layout: CheckpointLayout) -> None:
    from pipeline.tiny_text import EXTRA_IDS, write_t5_tokenizer

    shutil.rmtree(folder)
    if layout.tokenizer == "clip":
        from pipeline.tiny import build_tokenizer

        folder.mkdir()
        build_tokenizer(folder)  # vocab.json and merges.txt, as CLIP repositories ship them
        special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>"}
        _write_json(folder / "special_tokens_map.json", special)
        _write_json(folder / "tokenizer_config.json", {**special, "model_max_length": 77,
                                                       "tokenizer_class": "CLIPTokenizer"})
        return
    write_t5_tokenizer(folder, model_max_length=layout.tokenizer_max_length)
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer.from_pretrained(folder)
    sentinels = {f"<extra_id_{i}>": tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(EXTRA_IDS)}
    _write_json(folder / "added_tokens.json", sentinels)
    if layout.tokenizer == "t5+json":
        tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
