"""Native settings read from a checkpoint: the presets of the model actually served, not only the default's.

A backend's presets describe its default weights. Other checkpoints of the same backend differ in what
their configs say (Wan 2.1 and 2.2-A14B are 16 fps models, TI2V-5B 24; CogVideoX 1.5 makes 81 frames at
16 fps and 1360x768; SVD's first release 14 frames) or in their name (LTX-Video's distilled checkpoints
want 8 steps and no guidance). Torch-free: configs are read as JSON from a local folder or the local hub
cache, never downloaded; a checkpoint that cannot be read keeps the backend's presets.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

from pipeline.backends import RULES, ModelSource
from pipeline.backends.base import BackendRules, Preset, looks_like_path


def read_config(source: str, name: str) -> dict | None:
    """`name` (e.g. "vae/config.json") of a local folder or of a hub id in the local cache, else None."""
    if looks_like_path(source):
        path = Path(source).expanduser() / name
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(source, name)
        except ValueError:  # not a valid repo id
            return None
        if not isinstance(found, str):
            return None
        path = Path(found)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _each(presets, **changes) -> dict[str, Preset]:
    return {name: replace(preset, **changes) for name, preset in presets.items()}


def _wan(rules: BackendRules, source: str) -> dict[str, Preset] | None:
    vae = read_config(source, "vae/config.json")
    if vae is None or vae.get("z_dim", 48) == 48:  # TI2V-5B's high-compression VAE: the presets as they are
        return None
    # Wan 2.1 I2V-14B and 2.2 I2V-A14B (8x VAE, z_dim 16): 81 frames at 16 fps, 40 steps (their configs);
    # 2.2-A14B guides with 3.5, 2.1 with 5.0. Sizes stay the budget: the image's aspect ratio within it.
    index = read_config(source, "model_index.json") or {}
    guidance = 3.5 if index.get("transformer_2", [None])[0] else 5.0
    presets = _each(rules.presets, fps=16, guidance_scale=guidance)
    if "480p" in source.lower():  # Wan2.1-I2V-14B-480P: the authors' 832x480 budget (and its 480p shift)
        presets = _each(presets, width=832, height=480)
    presets["standard"] = replace(presets["standard"], num_frames=81, steps=40)
    presets["preview"] = replace(presets["preview"], num_frames=33, steps=20)
    return presets


def _cogvideox(rules: BackendRules, source: str) -> dict[str, Preset] | None:
    transformer = read_config(source, "transformer/config.json")
    if transformer is None or transformer.get("use_learned_positional_embeddings", True):
        return None  # CogVideoX-5b-I2V: its one shape, 8 fps
    # CogVideoX 1.5 (rotary embeddings only): the authors' cli_demo makes 81 frames at 1360x768, 16 fps.
    return _each(rules.presets, width=1360, height=768, num_frames=81, fps=16)


LTX_FULL_PRESETS = {  # LTX-Video's non-distilled checkpoints: diffusers' examples, 40-50 steps, guidance 3
    "preview": Preset(width=512, height=352, num_frames=65, steps=20, fps=24, guidance_scale=3.0),
    "standard": Preset(width=704, height=480, num_frames=121, steps=40, fps=24, guidance_scale=3.0),
    "high": Preset(width=768, height=512, num_frames=161, steps=50, fps=24, guidance_scale=3.0),
    "max": Preset(width=1216, height=704, num_frames=257, steps=50, fps=24, guidance_scale=3.0),
}


def _ltx(rules: BackendRules, source: str) -> dict[str, Preset] | None:
    # Distillation leaves no trace in the configs: Lightricks names the checkpoints "...-distilled".
    return None if "distilled" in source.lower() else dict(LTX_FULL_PRESETS)


def _svd(rules: BackendRules, source: str) -> dict[str, Preset] | None:
    unet = read_config(source, "unet/config.json")
    frames = (unet or {}).get("num_frames", 25)
    if frames >= 25:
        return None
    # stable-video-diffusion-img2vid: trained on 14 frames, sampled at 6 fps (its card).
    return _each(rules.presets, num_frames=min(frames, 14), fps=6)


_NATIVE = {"wan": _wan, "cogvideox": _cogvideox, "ltx": _ltx, "svd": _svd}


@functools.cache
def native_rules(source: ModelSource) -> BackendRules:
    """The backend's rules with the presets of this checkpoint (the backend's own where nothing differs)."""
    rules = RULES[source.backend]
    native = _NATIVE.get(source.backend)
    presets = None if source.tiny or native is None else native(rules, source.source)
    return rules if presets is None else replace(rules, presets=presets)
