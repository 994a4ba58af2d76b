"""Backends from the daemon's side (pure logic): per-backend sidecar rules, model choice, detection,
versioned job parameters, the OOM ladder per backend and the model pool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path, PurePath

import pytest

from daemon.models.catalog import ModelCatalog
from daemon.errors import ConfigError, InputRejected
from daemon.settings import Settings
from daemon.intake.sidecar import Sidecar, parse_sidecar, resolve, route
from pipeline.backends import RULES, ModelSource, parse_model
from pipeline.backends.base import FrameRule
from pipeline.oom import OomLadder
from pipeline.params import VERSION, GenerationParams

REPO = Path(__file__).resolve().parents[2]


def settings(tmp_path, **values) -> Settings:
    return Settings(inbox_dir=tmp_path / "inbox", outputs_dir=tmp_path / "outputs", state_dir=tmp_path / "state",
                    **values)


def rejection(data: dict, rules, **kwargs) -> InputRejected:
    with pytest.raises(InputRejected) as info:
        resolve(parse_sidecar(json.dumps(data).encode()), rules, default_preset="standard", **kwargs)
    return info.value


def fields(error: InputRejected) -> list[str]:
    return [e["field"] for e in error.field_errors]


# -- rules without torch ---------------------------------------------------------------------------


def test_intake_side_imports_no_model_stack():
    """What the intake-only daemon imports to validate sidecars against every backend."""
    code = ("import sys; import daemon.intake.ingest, daemon.models.catalog, daemon.intake.sidecar; from pipeline.backends import RULES; "
            "assert len(RULES) >= 1; loaded = [m for m in ('torch', 'diffusers', 'transformers') "
            "if m in sys.modules]; assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_frame_rules():
    any_count, wan, ltx = FrameRule(1, 0, 8, 32), FrameRule(4, 1, 5, 121), FrameRule(8, 1, 9, 257)
    assert [n for n in range(40) if any_count.valid(n)] == list(range(8, 33))
    assert [n for n in range(30) if wan.valid(n)] == [5, 9, 13, 17, 21, 25, 29]
    assert wan.floor(40) == 37 and wan.floor(4) is None and wan.floor(500) == 121
    assert ltx.floor(60) == 57 and ltx.valid(121) and not ltx.valid(120)
    assert wan.describe() == "4k+1, between 5 and 121" and any_count.describe() == "between 8 and 32"


# -- sidecars against the backend that will run them ---------------------------------------------------


@pytest.mark.parametrize("backend", sorted(RULES))
def test_every_preset_of_every_backend_resolves_to_valid_params(backend):
    rules = RULES[backend]
    for preset in ("preview", "standard", "high", "max"):
        p = resolve(Sidecar(prompt="waves", preset=preset), rules, default_preset="standard")
        native = rules.presets[preset]
        assert (p.width, p.height, p.num_frames, p.steps, p.fps, p.guidance_scale) == (
            native.width, native.height, native.num_frames, native.steps, native.fps, native.guidance_scale)


@pytest.mark.parametrize("backend", sorted(RULES))
def test_prompt_is_required_only_where_the_backend_needs_text(backend):
    rules = RULES[backend]
    if rules.prompt_required:
        error = rejection({}, rules, model_name="m")
        assert fields(error) == ["prompt"] and "model m needs a text prompt" in str(error)
    else:
        assert resolve(Sidecar(), rules, default_preset="preview").prompt is None


@pytest.mark.parametrize("backend", sorted(RULES))
def test_size_and_frames_are_checked_against_the_backends_rules(backend):
    rules = RULES[backend]
    odd = rules.presets["preview"].width + (rules.size_multiple // 2 or 1)
    error = rejection({"prompt": "x", "width": odd, "height": rules.presets["preview"].height}, rules)
    assert fields(error) == ["width"] and f"multiple of {rules.size_multiple}" in str(error)
    bad_frames = next(n for n in range(rules.frames.minimum, 300) if not rules.frames.valid(n))
    error = rejection({"prompt": "x", "num_frames": bad_frames}, rules, model_name=backend)
    assert fields(error) == ["num_frames"] and rules.frames.describe() in str(error)
    assert f"for model {backend}" in str(error)
    too_many = rejection({"prompt": "x", "steps": rules.steps_range[1] + 1}, rules)
    assert fields(too_many) == ["steps"]


def test_resolution_is_the_long_side_in_the_presets_aspect_ratio():
    wan = RULES["wan"]  # 16:9-ish presets, sizes multiple of its size_multiple
    p = resolve(Sidecar(prompt="x", resolution=512), wan, default_preset="standard")
    assert max(p.width, p.height) == 512 and p.width % wan.size_multiple == 0 == p.height % wan.size_multiple
    square = resolve(Sidecar(prompt="x", resolution=256), RULES["i2vgen-xl"], default_preset="standard")
    assert (square.width, square.height) == (256, 256)


def test_default_fps_applies_only_where_the_backend_allows_it():
    assert resolve(Sidecar(prompt="x"), RULES["i2vgen-xl"], default_preset="standard", default_fps=12).fps == 12
    svd = RULES["svd"]
    p = resolve(Sidecar(prompt="x"), svd, default_preset="standard", default_fps=svd.fps_range[1] + 1)
    assert p.fps == svd.presets["standard"].fps


# -- which model: settings, sidecar "model", subfolders -------------------------------------------------


def test_model_values_name_their_backend(tmp_path):
    assert parse_model("tiny") == ModelSource("i2vgen-xl", "i2vgen-xl", tiny=True)
    assert parse_model("tiny:svd").value == "tiny:svd"
    assert parse_model("wan") == ModelSource("wan", RULES["wan"].default_model)
    assert parse_model("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers").backend == "wan"
    assert parse_model("ltx:someone/fine-tune") == ModelSource("ltx", "someone/fine-tune")
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "CogVideoXImageToVideoPipeline"}))
    assert parse_model(str(folder)).backend == "cogvideox"
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(LookupError, match="no backend serves the pipeline class StableDiffusionPipeline"):
        parse_model(str(folder))
    with pytest.raises(LookupError, match="<backend>:someone/unknown"):
        parse_model("someone/unknown")
    with pytest.raises(LookupError, match="unknown backend"):
        parse_model("tiny:nope")


def test_settings_serve_one_model_or_several_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("I2VD_MODEL", "tiny")
    one = ModelCatalog.from_settings(settings(tmp_path))
    assert one.names == ["i2vgen-xl"] and one.default.source.tiny
    monkeypatch.delenv("I2VD_MODEL")
    monkeypatch.setenv("I2VD_MODELS", '["tiny", "fast=tiny:svd", "wan"]')
    several = ModelCatalog.from_settings(settings(tmp_path))
    assert several.names == ["i2vgen-xl", "fast", "wan"] and several.default.name == "i2vgen-xl"
    assert several.find("tiny:svd").name == "fast" and several.find("wan").rules is RULES["wan"]
    assert several.find(RULES["wan"].default_model).name == "wan" and several.find("ltx") is None
    with pytest.raises(ConfigError, match="several models would be called i2vgen-xl"):
        ModelCatalog.from_settings(settings(tmp_path, models=("tiny", "tiny:i2vgen-xl")))
    with pytest.raises(ValueError, match="model name 'preview'"):
        settings(tmp_path, models=("preview=tiny",))
    with pytest.raises(ValueError, match="either model"):
        settings(tmp_path, model="tiny", models=("tiny",))


def test_sidecar_or_subfolder_picks_the_model_and_the_preset(tmp_path):
    catalog = ModelCatalog.from_settings(settings(tmp_path, models=("tiny", "fast=tiny:svd")))
    plain = Sidecar(prompt="x")
    assert route(plain, PurePath(""), catalog).model.name == "i2vgen-xl"
    assert route(plain, PurePath("fast"), catalog).model.name == "fast"
    chosen = route(plain, PurePath("fast/preview/shots"), catalog)
    assert (chosen.model.name, chosen.folder_preset) == ("fast", "preview")
    assert route(plain, PurePath("high"), catalog).folder_preset == "high"
    assert route(Sidecar(prompt="x", model="fast"), PurePath(""), catalog).model.name == "fast"
    assert route(Sidecar(prompt="x", model="i2vgen-xl"), PurePath("fast"), catalog).model.name == "i2vgen-xl"
    with pytest.raises(InputRejected) as info:
        route(Sidecar(prompt="x", model="wan"), PurePath(""), catalog)
    assert fields(info.value) == ["model"]
    assert "'wan' is not served here; served models: i2vgen-xl (default), fast" in str(info.value)


# -- persisted job parameters ---------------------------------------------------------------------


def test_job_params_are_versioned_and_v1_and_v2_jobs_still_load():
    stored_v1 = {"prompt": "a lighthouse", "width": 32, "height": 32, "num_frames": 8, "fps": 8, "steps": 10,
                 "guidance_scale": 9.0, "seed": 1, "negative_prompt": None}  # as jobs were stored before
    params = GenerationParams.from_dict(stored_v1)
    assert params.prompt == "a lighthouse" and params.seed == 1
    stored = params.to_dict()
    assert stored["version"] == VERSION == 3
    assert GenerationParams.from_dict(stored) == params
    stored_v2 = {**stored_v1, "version": 2, "interpolate": 2}  # before keep_aspect
    assert GenerationParams.from_dict(stored_v2) == GenerationParams(**stored_v1, interpolate=2, keep_aspect=False)
    assert GenerationParams.from_dict({**stored, "prompt": None}).prompt is None
    with pytest.raises(ValueError, match="newer i2vd"):
        GenerationParams.from_dict({**stored, "version": VERSION + 1})


# -- OOM ladder per backend ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", sorted(RULES))
def test_ladder_rungs_come_from_the_backend_and_keep_its_rules(backend):
    rules = RULES[backend]
    preset = rules.presets["max"]
    asked = GenerationParams(prompt="x", width=preset.width, height=preset.height, num_frames=preset.num_frames,
                             fps=preset.fps, steps=2, guidance_scale=preset.guidance_scale, seed=1)
    rungs = list(OomLadder(rules).walk(asked))
    assert [r.name for r in rungs][0] == "full"
    assert {r.name for r in rungs[1:]} == set(rules.ladder_rungs)
    assert [r for r in dict.fromkeys(r.name for r in rungs[1:])] == list(rules.ladder_rungs)
    for rung in rungs:
        p = rung.params
        assert rules.frames.valid(p.num_frames), (rung.name, p.num_frames)
        assert p.width % rules.size_multiple == 0 and p.height % rules.size_multiple == 0, (rung.name, p)
        assert min(p.width, p.height) >= rules.min_size
    if "fewer_frames" in rules.ladder_rungs:
        assert rungs[-1].params.num_frames < asked.num_frames
    if "lower_resolution" in rules.ladder_rungs:
        assert max(rungs[-1].params.width, rungs[-1].params.height) < max(asked.width, asked.height)
