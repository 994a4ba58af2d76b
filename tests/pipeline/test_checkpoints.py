"""Each backend's default checkpoint, as a tiny folder in the real repository's layout, served by the
daemon the two ways a user points at it: its hub id (a snapshot in the Hugging Face cache) and a
local folder. One daemon per backend runs a job through each (the expensive part: once per backend)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.daemons import daemon_env, wait_for
from support.files import drop_pair, probe

from pipeline.backends import RULES, parse_model
from pipeline.tiny_checkpoints import LAYOUTS, build_checkpoint

BACKENDS = sorted(LAYOUTS)
COMMIT = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"
# A small valid job per backend: the tiny CogVideoX's learned embeddings fix 32x32 and 9 frames.
JOBS = {
    "wan": {"num_frames": 9, "steps": 2, "guidance_scale": 5.0},
    "ltx": {"num_frames": 9, "steps": 2, "guidance_scale": 3.0},
    "cogvideox": {"num_frames": 9, "steps": 2, "guidance_scale": 6.0},
    "svd": {"num_frames": 8, "steps": 2, "guidance_scale": 3.0},
    "i2vgen-xl": {"num_frames": 8, "steps": 10, "guidance_scale": 9.0},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny checkpoint of a backend, built once per test session."""
    root, built = tmp_path_factory.mktemp("checkpoints"), {}

    def get(backend: str) -> Path:
        if backend not in built:
            built[backend] = build_checkpoint(backend, root / backend)
        return built[backend]

    return get


def into_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """The folder as `huggingface-cli download` leaves a snapshot: models--org--name/snapshots/<commit>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def test_every_backend_has_its_default_checkpoints_layout():
    assert {layout.hub_id for layout in LAYOUTS.values()} == {rules.default_model for rules in RULES.values()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_folder_looks_like_the_repository_and_its_tokenizer_loads_as_shipped(checkpoint, backend):
    folder, layout = checkpoint(backend), LAYOUTS[backend]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == layout.model_index["_class_name"]
    assert index["_diffusers_version"] == layout.model_index["_diffusers_version"]
    assert parse_model(str(folder)).backend == backend
    for name, flags in layout.configs.items():
        config = json.loads((folder / name).read_text())
        assert {k: config[k] for k in flags} == flags, name
    if layout.tokenizer in ("t5", "t5+json"):
        from transformers import AutoTokenizer

        files = {p.name for p in (folder / "tokenizer").iterdir()}
        assert "spiece.model" in files and ("tokenizer.json" in files) == (layout.tokenizer == "t5+json")
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")  # converted from spiece.model
        ids = tokenizer("a cat on the sea").input_ids
        assert ids[-1] == tokenizer.eos_token_id == 1 and tokenizer.unk_token_id not in ids
        assert tokenizer.model_max_length == layout.tokenizer_max_length


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_daemon_serves_it_by_hub_id_and_by_folder(checkpoint, backend, tmp_path, dirs, run_daemon):
    folder, layout = checkpoint(backend), LAYOUTS[backend]
    into_hub_cache(tmp_path / "hub", layout.hub_id, folder)
    job = {"width": 32, "height": 32, "fps": 8, **JOBS[backend]}
    drop_pair(dirs["inbox"], "by-hub-id", model="hub", **job)
    drop_pair(dirs["inbox"], "by-folder", model="local", **job)
    env = daemon_env(dirs, I2VD_MODELS=json.dumps([f"hub={layout.hub_id}", f"local={folder}"]),
                     HF_HUB_CACHE=str(tmp_path / "hub"), I2VD_MAX_RETRIES="0")
    del env["I2VD_MODEL"]
    daemon = run_daemon(env)
    daemon.wait_ready(timeout=180)
    for name, model_id in (("by-hub-id", layout.hub_id), ("by-folder", str(folder))):
        video = wait_for(lambda name=name: next(iter(dirs["outputs"].glob(f"{name}_*.mp4")), None), timeout=300,
                         what=f"the {backend} MP4 {name}")
        assert probe(video) == (job["num_frames"], 8.0, (32, 32))
        model = json.loads(video.with_suffix(".json").read_text())["model"]
        assert (model["id"], model["backend"], model["smoke_test"], model["dtype"]) == (
            model_id, backend, False, "float32")
        assert model["revision"] == (COMMIT if name == "by-hub-id" else None)
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output
