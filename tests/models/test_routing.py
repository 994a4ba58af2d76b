"""Several models in one daemon: jobs routed by "model" and by subfolder, claims per served model,
the model pool, and jobs no live worker serves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.daemons import daemon_env, make_queue, make_settings, wait_for

from support.files import drop_pair, probe
from daemon.db.engine import make_engine, session_factory, upgrade
from daemon.db.tables import JobState
from daemon.jobs.queue import JobQueue, NewJob

TWO_MODELS = '["tiny", "fast=tiny:svd"]'  # I2VGen-XL (the default) and SVD, both tiny


def new_job(key: str, model: str | None, priority: int = 0) -> NewJob:
    return NewJob(idempotency_key=key, params={"seed": 1}, priority=priority, output_stem=key,
                  output_subdir="", source_image=f"/in/{key}.png", source_sidecar=None,
                  image_path=f"/done/{key}.png", sidecar_path=None, model=model)


def queued(queue: JobQueue, key: str, model: str | None, priority: int = 0) -> int:
    job, created = queue.create(new_job(key, model, priority))
    assert created and queue.mark_queued(job.id)
    return job.id


def test_claim_takes_only_served_models_and_prefers_the_loaded_one(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    queue = JobQueue(session_factory(engine))
    a1 = queued(queue, "a1", "a")
    b1 = queued(queue, "b1", "b")
    ghost = queued(queue, "ghost", "ghost")
    legacy = queued(queue, "legacy", None)  # queued before jobs named a model: the default's
    b2 = queued(queue, "b2", "b")

    assert queue.claim("w", 60, ["a", "b"], loaded=["b"]).id == b1  # no swap while b has work
    urgent = queued(queue, "urgent", "a", priority=5)
    assert queue.claim("w", 60, ["a", "b"], loaded=["b"]).id == urgent  # unless a more urgent job waits
    assert queue.claim("w", 60, ["a", "b"], loaded=["b"]).id == b2
    assert queue.claim("w", 60, ["a", "b"], loaded=["b"]).id == a1
    assert queue.claim("w", 60, ["a", "b"], loaded=["a"]).id == legacy
    assert queue.claim("w", 60, ["a", "b"], loaded=["a"]) is None  # ghost is nobody's here
    assert queue.queued_by_model() == {"ghost": 1}
    assert queue.claim("w", 60, ["ghost"]).id == ghost
    engine.dispose()


def test_pool_keeps_what_fits_and_evicts_the_least_recently_used(tmp_path):
    from daemon.models.catalog import ModelCatalog
    from daemon.models.pool import LoadedModel, ModelPool
    from daemon.settings import Settings

    catalog = ModelCatalog.from_settings(Settings(state_dir=tmp_path, models=("a=tiny", "b=tiny", "c=tiny")))
    loads: list[str] = []
    out_of_memory_for: set[str] = set()

    def load(model):
        loads.append(model.name)
        if model.name in out_of_memory_for:
            out_of_memory_for.discard(model.name)  # fits once another model is gone
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return LoadedModel(model, generator=None, revision=None)

    pool = ModelPool(catalog, load, "cpu", max_loaded=2)
    pool.get("a"), pool.get("b"), pool.get("a")
    assert loads == ["a", "b"] and pool.resident == ["b", "a"]  # least recently used first
    pool.get("c")
    assert pool.resident == ["a", "c"]  # b evicted: the count is reached

    unlimited = ModelPool(catalog, load, "cpu")  # as many as fit
    out_of_memory_for.add("a")
    with pytest.raises(torch.OutOfMemoryError):  # nothing to evict: the error stands
        unlimited.get("a")
    unlimited.get("a"), unlimited.get("b")
    out_of_memory_for.add("c")
    unlimited.get("c")
    assert unlimited.resident == ["b", "c"] and loads[-2:] == ["c", "c"]  # a evicted, then c loaded


@pytest.fixture(scope="module")
def tiny_svd_dir(tmp_path_factory) -> Path:
    from pipeline.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("model") / "tiny-svd", "svd")


def two_model_env(dirs, tiny_svd_dir, **extra) -> dict[str, str]:
    shutil.copytree(tiny_svd_dir, dirs["state"] / "models" / "tiny-svd")
    env = daemon_env(dirs, I2VD_MODELS=TWO_MODELS, **extra)
    del env["I2VD_MODEL"]
    return env


def test_one_daemon_routes_jobs_to_two_backends_by_model_and_subfolder(dirs, run_daemon, tiny_svd_dir):
    inbox, outputs = dirs["inbox"], dirs["outputs"]
    svd_frames = {"num_frames": 6, "steps": 2, "fps": 7}
    drop_pair(inbox, "by_name", model="fast", **svd_frames)
    drop_pair(inbox / "fast" / "preview", "by_folder", **svd_frames)
    drop_pair(inbox, "by_id", model="tiny:svd", prompt=None, **svd_frames)  # SVD needs no prompt
    drop_pair(inbox, "default")
    drop_pair(inbox, "unserved", model="wan")
    drop_pair(inbox / "fast", "bad_for_svd", num_frames=30)  # SVD takes at most 25 frames
    daemon = run_daemon(two_model_env(dirs, tiny_svd_dir))
    daemon.wait_ready(timeout=120)

    def output(pattern: str) -> Path:
        return wait_for(lambda: next(iter(outputs.glob(pattern)), None), timeout=180, what=pattern)

    for pattern, name, model_id, backend, frames in [
        ("by_name_*.mp4", "fast", "tiny:svd", "svd", 6), ("fast/preview/by_folder_*.mp4", "fast", "tiny:svd", "svd", 6),
        ("by_id_*.mp4", "fast", "tiny:svd", "svd", 6), ("default_*.mp4", "i2vgen-xl", "tiny", "i2vgen-xl", 8),
    ]:
        video = output(pattern)
        model = json.loads(video.with_suffix(".json").read_text())["model"]
        assert (model["name"], model["id"], model["backend"]) == (name, model_id, backend), pattern
        assert model["smoke_test"] and model["revision"] is None
        assert probe(video)[0] == frames
    assert (inbox / "done" / "fast" / "preview" / "by_folder.png").exists()  # mirrored like outputs

    unserved = json.loads(wait_for(lambda: next(iter((inbox / "failed").glob("unserved*.error.json")), None),
                                   timeout=30, what="unserved rejected").read_text())
    assert "'wan' is not served here; served models: i2vgen-xl (default), fast" in json.dumps(unserved)
    bad = wait_for(lambda: next(iter((inbox / "failed" / "fast").glob("bad_for_svd*.error.json")), None),
                   timeout=30, what="frames rejected for svd")
    assert "num_frames" in bad.read_text() and "between 2 and 25 for model fast" in bad.read_text()
    assert daemon.stop() == 0
    swaps = [json.loads(line) for line in (dirs["state"] / "i2vd.log").read_text().splitlines()
             if '"model_swapped"' in line]
    assert swaps and {s["model"] for s in swaps} <= {"fast", "i2vgen-xl"}
    assert "Traceback" not in daemon.output


def test_a_job_for_a_model_no_live_worker_serves_stays_queued_and_status_says_why(dirs, run_daemon):
    queue = make_queue(make_settings(dirs))
    job, _ = queue.create(new_job("elsewhere", "wan-big"))
    queue.mark_queued(job.id)
    env = daemon_env(dirs)
    daemon = run_daemon(env)
    daemon.wait_ready()
    drop_pair(dirs["inbox"], "here")  # the worker is busy with what it serves ...
    wait_for(lambda: next(iter(dirs["outputs"].glob("here_*.mp4")), None), what="the served job")
    assert queue.get(job.id).state == JobState.QUEUED  # ... and leaves the other model's job alone
    status = subprocess.run([sys.executable, "-m", "daemon.cli", "status"], env=env, capture_output=True,
                            text=True)
    assert status.returncode == 0, status.stderr
    assert ("1 queued for model wan-big: no live worker serves it (live workers serve: i2vgen-xl)"
            in status.stdout), status.stdout
    assert daemon.stop() == 0


def test_doctor_checks_each_configured_model(dirs, tmp_path):
    make_queue(make_settings(dirs))
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    env = daemon_env(dirs, I2VD_MODELS=json.dumps(["tiny", "fast=tiny:svd", f"local={folder}",
                                                   "odd=someone/unknown"]))
    del env["I2VD_MODEL"]
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "doctor"], env=env, capture_output=True,
                            text=True)
    models = [line for line in result.stdout.splitlines() if line[6:].startswith("model ")]
    assert len(models) == 4, result.stdout
    assert models[0].startswith("ok") and "i2vgen-xl (i2vgen-xl): tiny smoke-test model" in models[0]
    assert models[1].startswith("ok") and "fast (svd)" in models[1]
    assert models[2].startswith("FAIL") and "no model_index.json" in models[2]
    assert models[3].startswith("FAIL") and "<backend>:someone/unknown" in models[3]
    assert result.returncode == 1
