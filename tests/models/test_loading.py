"""Which model a value means and how it is placed: the class names real checkpoints use, text-only
checkpoints refused at start-up, the per-model dtype, and tiny presets for tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.daemons import daemon_env, make_settings, wait_for
from support.files import probe, write_image

from daemon.errors import ConfigError
from daemon.intake.sidecar import Sidecar, resolve
from daemon.models.catalog import ModelCatalog
from daemon.settings import Settings
from pipeline.backends import RULES, parse_model

TI2V_INDEX = {  # Wan2.2-TI2V-5B-Diffusers: text and image in one WanPipeline
    "_class_name": "WanPipeline", "_diffusers_version": "0.35.0.dev0", "boundary_ratio": None,
    "expand_timesteps": True, "scheduler": ["diffusers", "UniPCMultistepScheduler"],
    "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "WanTransformer3DModel"], "transformer_2": [None, None],
    "vae": ["diffusers", "AutoencoderKLWan"],
}
T2V_INDEX = {  # Wan2.1-T2V-14B-Diffusers: the same class, text only
    "_class_name": "WanPipeline", "_diffusers_version": "0.33.0.dev0",
    "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
}


def checkpoint(directory: Path, index: dict) -> Path:
    directory.mkdir(parents=True)
    (directory / "model_index.json").write_text(json.dumps(index))
    return directory


def hub_cache(cache: Path, repo_id: str, index: dict) -> None:
    """A hub id's snapshot in the Hugging Face cache layout, as `huggingface-cli download` leaves it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    checkpoint(repo / "snapshots" / commit, index)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.mark.parametrize("class_name, backend", [
    ("WanPipeline", "wan"), ("WanImageToVideoPipeline", "wan"), ("LTXPipeline", "ltx"),
    ("LTXConditionPipeline", "ltx"), ("LTXImageToVideoPipeline", "ltx"),
    ("CogVideoXImageToVideoPipeline", "cogvideox"), ("StableVideoDiffusionPipeline", "svd"),
    ("I2VGenXLPipeline", "i2vgen-xl"),
])
def test_a_local_folder_of_each_real_class_name_is_served(tmp_path, class_name, backend):
    index = {**TI2V_INDEX, "_class_name": class_name} if backend == "wan" else {"_class_name": class_name}
    assert parse_model(str(checkpoint(tmp_path / "model", index))).backend == backend


def test_text_only_wan_is_refused_in_one_line_as_a_folder_and_in_the_hub_cache(tmp_path, cache):
    assert parse_model(str(checkpoint(tmp_path / "ti2v", TI2V_INDEX))).backend == "wan"
    folder = checkpoint(tmp_path / "t2v", T2V_INDEX)
    with pytest.raises(LookupError, match="text-only WanPipeline checkpoint") as info:
        parse_model(str(folder))
    assert "expand_timesteps: true" in str(info.value) and "Wan-AI/Wan2.2-TI2V-5B-Diffusers" in str(info.value)
    hub_cache(cache, "Wan-AI/Wan2.1-T2V-14B-Diffusers", T2V_INDEX)
    hub_cache(cache, "Wan-AI/Wan2.2-TI2V-5B-Diffusers", TI2V_INDEX)
    for value in ("Wan-AI/Wan2.1-T2V-14B-Diffusers", "wan:Wan-AI/Wan2.1-T2V-14B-Diffusers", f"wan:{folder}"):
        with pytest.raises(LookupError, match="text-only"):
            parse_model(value)
    assert parse_model("Wan-AI/Wan2.2-TI2V-5B-Diffusers").backend == "wan"
    assert parse_model("wan").source == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    # At start-up: the daemon's catalog says so in one line, naming the value.
    settings = make_settings({"inbox": tmp_path / "i", "outputs": tmp_path / "o", "state": tmp_path / "s"},
                             model="Wan-AI/Wan2.1-T2V-14B-Diffusers")
    with pytest.raises(ConfigError, match="Wan2.1-T2V-14B-Diffusers.*text-only") as info:
        ModelCatalog.from_settings(settings)
    assert "\n" not in str(info.value)


def test_a_dtype_option_per_model(tmp_path):
    from daemon.models.loading import placement_for

    dirs = {"inbox": tmp_path / "i", "outputs": tmp_path / "o", "state": tmp_path / "s"}
    source = parse_model("wan:/models/wan ; float32")
    assert (source.backend, source.source, source.dtype) == ("wan", "/models/wan", "float32")
    assert parse_model("tiny:ltx;bfloat16").value == "tiny:ltx"  # the canonical value has no option
    for bad in ("tiny;int8", "tiny;dtype=float16"):
        with pytest.raises(LookupError, match="unknown dtype .* write float16, bfloat16, float32"):
            parse_model(bad)
    catalog = ModelCatalog.from_settings(Settings(inbox_dir=dirs["inbox"], outputs_dir=dirs["outputs"],
                                                  state_dir=dirs["state"], models=("tiny:svd;bfloat16", "tiny:wan")))
    import torch

    svd, wan = catalog.models
    assert svd.name == "svd" and catalog.find("tiny:svd") is svd
    cpu = torch.device("cpu")
    assert placement_for(make_settings(dirs), cpu, svd).dtype == torch.bfloat16  # the option wins
    assert placement_for(make_settings(dirs), cpu, wan).dtype == torch.float32  # auto on the CPU
    assert placement_for(make_settings(dirs, dtype="float16"), cpu, wan).dtype == torch.float16  # I2VD_DTYPE


@pytest.mark.parametrize("backend", sorted(RULES))
def test_a_tiny_model_has_tiny_presets(tmp_path, backend):
    """A prompt-only sidecar on I2VD_MODEL=tiny ran 512x512 for minutes; now 32x32, 9 frames, a few steps."""
    dirs = {"inbox": tmp_path / "i", "outputs": tmp_path / "o", "state": tmp_path / "s"}
    rules = ModelCatalog.from_settings(make_settings(dirs, model=f"tiny:{backend}")).default.rules
    params = resolve(Sidecar(prompt="a cat on the sea"), rules, default_preset="standard")
    assert (params.width, params.height) == (32, 32) and params.num_frames <= 9 and params.steps <= 10
    assert rules.frames.valid(params.num_frames)
    real = ModelCatalog.from_settings(make_settings(dirs, model=backend)).default.rules
    assert real.presets["standard"].width >= 512  # real models keep their own


def test_a_prompt_only_sidecar_on_the_tiny_model_makes_a_tiny_video(dirs, run_daemon):
    """Issue 19: it ran 512x512 on the tiny I2VGen-XL for minutes at 7 GB, and a cancel could not land."""
    write_image(dirs["inbox"] / ".scene.png.tmp", fmt="PNG").rename(dirs["inbox"] / "scene.png")
    (dirs["inbox"] / ".scene.json.tmp").write_text(json.dumps({"prompt": "a cat on the sea"}))
    (dirs["inbox"] / ".scene.json.tmp").rename(dirs["inbox"] / "scene.json")
    daemon = run_daemon(daemon_env(dirs))  # I2VD_MODEL=tiny, the default preset
    daemon.wait_ready(timeout=120)
    video = wait_for(lambda: next(iter(dirs["outputs"].glob("scene_*.mp4")), None), timeout=180, what="the MP4")
    assert probe(video) == (9, 8.0, (32, 32))
    assert json.loads(video.with_suffix(".json").read_text())["params"]["steps"] == 10  # I2VGen-XL's minimum
    assert daemon.stop() == 0
