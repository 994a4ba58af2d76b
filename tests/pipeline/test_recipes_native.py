"""Native presets read from the checkpoint's configs: a 16 fps model makes a 16 fps MP4, a distilled
LTX-Video samples in 8 steps, a non-distilled one in 40 (folders with the real repositories' configs)."""

from __future__ import annotations

import json
from pathlib import Path

from daemon.intake.sidecar import Sidecar, resolve
from daemon.models.catalog import ServedModel
from pipeline.backends import RULES, ModelSource, parse_model
from pipeline.native import native_rules


def checkpoint(root: Path, name: str, configs: dict[str, dict]) -> Path:
    folder = root / name
    for path, config in configs.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(json.dumps(config))
    return folder


def wan(root: Path, name: str, z_dim: int, transformer_2=(None, None)) -> Path:
    return checkpoint(root, name, {
        "model_index.json": {"_class_name": "WanImageToVideoPipeline", "transformer": ["diffusers",
                             "WanTransformer3DModel"], "transformer_2": list(transformer_2)},
        "vae/config.json": {"_class_name": "AutoencoderKLWan", "z_dim": z_dim},
    })


def fps_of(folder: Path, backend: str) -> int:
    model = ServedModel("m", str(folder), ModelSource(backend, str(folder)))
    return resolve(Sidecar.model_validate({"prompt": "x"}), model.rules, default_preset="standard").fps


def test_wan_2_1_and_2_2_a14b_are_16_fps_ti2v_5b_is_24(tmp_path):
    assert fps_of(wan(tmp_path, "Wan2.1-I2V-14B-720P-Diffusers", 16), "wan") == 16
    assert fps_of(wan(tmp_path, "Wan2.2-I2V-A14B-Diffusers", 16, ("diffusers", "WanTransformer3DModel")),
                  "wan") == 16
    assert fps_of(wan(tmp_path, "Wan2.2-TI2V-5B-Diffusers", 48), "wan") == 24
    a14b = native_rules(ModelSource("wan", str(tmp_path / "Wan2.2-I2V-A14B-Diffusers"))).presets["standard"]
    assert (a14b.num_frames, a14b.steps, a14b.guidance_scale) == (81, 40, 3.5)
    p480 = native_rules(ModelSource("wan", str(wan(tmp_path, "Wan2.1-I2V-14B-480P-Diffusers", 16))))
    assert (p480.presets["standard"].width, p480.presets["standard"].height) == (832, 480)


def test_cogvideox_1_5_makes_81_frames_at_16_fps(tmp_path):
    folder = checkpoint(tmp_path, "CogVideoX1.5-5B-I2V", {
        "model_index.json": {"_class_name": "CogVideoXImageToVideoPipeline"},
        "transformer/config.json": {"use_learned_positional_embeddings": False, "patch_size_t": 2},
    })
    standard = native_rules(ModelSource("cogvideox", str(folder))).presets["standard"]
    assert (standard.width, standard.height, standard.num_frames, standard.fps) == (1360, 768, 81, 16)
    assert fps_of(folder, "cogvideox") == 16


def test_a_checkpoint_whose_configs_cannot_be_read_keeps_the_backend_presets(tmp_path):
    assert native_rules(ModelSource("cogvideox", "THUDM/CogVideoX-5b-I2V")) is RULES["cogvideox"]
    assert native_rules(parse_model("tiny:wan")) is RULES["wan"]
    assert native_rules(ModelSource("wan", str(tmp_path / "missing"))) is RULES["wan"]


def test_ltx_distilled_default_samples_8_steps_unguided_others_40_guided():
    default = native_rules(parse_model("ltx")).presets["standard"]
    assert (default.width, default.height, default.num_frames, default.steps, default.guidance_scale) == \
        (768, 512, 121, 8, 1.0)
    full = native_rules(parse_model("ltx:Lightricks/LTX-Video")).presets["standard"]
    assert (full.steps, full.guidance_scale) == (40, 3.0)


def test_svd_first_release_is_14_frames_at_6_fps(tmp_path):
    folder = checkpoint(tmp_path, "stable-video-diffusion-img2vid", {
        "model_index.json": {"_class_name": "StableVideoDiffusionPipeline"},
        "unet/config.json": {"num_frames": 14},
    })
    standard = native_rules(ModelSource("svd", str(folder))).presets["standard"]
    assert (standard.num_frames, standard.fps) == (14, 6)
