"""What every video backend must do, checked on its tiny model; each tests/test_backend_<name>.py
subclasses `BackendContract` and adds the rules particular to its backend.

The tiny model is built once per test module, saved with save_pretrained and loaded back through the
backend's own `load()` (from_pretrained), as a real model is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from pipeline.backends import RULES, detect_backend, get_backend
from pipeline.backends.base import MemoryOptions, Progress
from pipeline.errors import GenerationInterrupted
from pipeline.params import GenerationParams
from support.daemons import daemon_env, wait_for
from support.files import TINY_SIDECAR, probe, write_image

REPO = Path(__file__).resolve().parents[2]


def test_image() -> PIL.Image.Image:
    """Not square and not the job's size: the pipelines resize it themselves."""
    pixels = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


test_image.__test__ = False  # a helper, not a test


class BackendContract:
    name: str  # backend name, set by the subclass
    frames: int  # a valid tiny frame count
    ladder_frames: int  # a count the fewer_frames rung can halve (None where the backend has no such rung)
    pipeline_class: str  # what the tiny model's model_index.json names

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def one_thread(cls):
        """Tiny ops on a shared 2-core machine: extra OpenMP threads mostly wait for each other."""
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    @pytest.fixture(scope="class")
    @classmethod
    def model_dir(cls, tmp_path_factory) -> Path:
        directory = tmp_path_factory.mktemp(f"tiny-{cls.name}")
        get_backend(cls.name).build_tiny().save_pretrained(directory)
        return directory

    @pytest.fixture(scope="class")
    @classmethod
    def pipe(cls, model_dir):
        import torch

        from pipeline.runtime import Placement

        return get_backend(cls.name).load(str(model_dir), Placement(torch.device("cpu"), torch.float32))

    def params(self, **changes) -> GenerationParams:
        base = GenerationParams(prompt="a cat on the sea", negative_prompt="blurry", width=32, height=32,
                                num_frames=self.frames, fps=8, steps=4, guidance_scale=3.0, seed=7)
        return replace(base, **changes)

    def run(self, pipe, params: GenerationParams, report=lambda _p: None, memory=MemoryOptions()):
        return get_backend(self.name).generate(pipe, test_image(), params, report, memory)

    # -- rules -------------------------------------------------------------------------------------

    def test_rules_import_without_torch(self):
        code = (f"import sys; import pipeline.backends.{self.name}; from pipeline.backends import RULES; "
                f"assert RULES[{self.name!r}].name == {self.name!r}; "
                "loaded = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
                "assert not loaded, loaded")
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def test_presets_obey_the_rules(self):
        rules = RULES[self.name]
        for name, preset in rules.presets.items():
            assert preset.width % rules.size_multiple == 0 and preset.height % rules.size_multiple == 0, name
            assert rules.min_size <= min(preset.width, preset.height) <= max(preset.width, preset.height) \
                <= rules.max_size, name
            assert rules.frames.valid(preset.num_frames), name
            assert rules.steps_range[0] <= preset.steps <= rules.steps_range[1], name
            assert rules.fps_range[0] <= preset.fps <= rules.fps_range[1], name
            assert rules.guidance_range[0] <= preset.guidance_scale <= rules.guidance_range[1], name
        assert rules.frames.valid(self.frames)

    # -- the tiny model through from_pretrained -----------------------------------------------------

    def test_tiny_model_is_saved_as_its_pipeline_and_detected(self, model_dir):
        index = json.loads((model_dir / "model_index.json").read_text())
        assert index["_class_name"] == self.pipeline_class
        assert detect_backend(model_dir) == self.name

    def test_generate_gives_the_asked_frames_with_progress(self, pipe):
        seen: list[Progress] = []
        frames = self.run(pipe, self.params(), seen.append)
        assert frames.shape == (self.frames, 32, 32, 3) and frames.dtype == np.uint8
        assert frames.std() > 0  # random weights make noise, not a blank
        assert [(p.phase, p.step) for p in seen] == [
            ("encoding_prompt", None), *(("denoising", i) for i in range(1, 5)), ("decoding", None)]
        assert {p.total for p in seen if p.phase == "denoising"} == {4}

    def test_same_seed_same_video_other_seed_other_video(self, pipe):
        first = self.run(pipe, self.params())
        assert np.array_equal(first, self.run(pipe, self.params()))
        assert not np.array_equal(first, self.run(pipe, self.params(seed=8)))

    def test_interrupt_at_step_2_propagates_and_the_pipeline_stays_usable(self, pipe):
        steps: list[int] = []

        def report(progress: Progress) -> None:
            if progress.phase == "denoising":
                steps.append(progress.step)
                if progress.step == 2:
                    raise GenerationInterrupted()

        with pytest.raises(GenerationInterrupted):
            self.run(pipe, self.params(), report)
        assert steps == [1, 2]  # stopped at once, not after the remaining steps
        frames = self.run(pipe, self.params(steps=2))
        assert frames.shape == (self.frames, 32, 32, 3)

    def test_oom_ladder_through_the_fault_injection(self, pipe):
        """An injected OOM above 32x32 x (fewer frames): the ladder walks to a rung that fits, or ends."""
        import torch

        from daemon.worker.faults import Faults
        from pipeline.generate import VideoGenerator
        from pipeline.oom import OomLadder, is_oom
        from pipeline.runtime import Placement

        rules = RULES[self.name]
        asked = self.params(num_frames=self.ladder_frames or self.frames, steps=2)
        generator = VideoGenerator(pipe, Placement(torch.device("cpu"), torch.float32),
                                   backend=get_backend(self.name))
        faults = Faults(oom_above=32 * 32 * (asked.num_frames - 1))
        tried, frames = [], None
        for rung in OomLadder(rules).walk(asked):
            tried.append(rung)
            try:
                faults.before_generate(rung.params)
                frames = generator.generate(test_image(), rung.params, memory=rung.memory)
                break
            except Exception as exc:  # noqa: BLE001  the worker's test: only OOMs walk on
                assert is_oom(exc), exc
        memory_rungs = [r for r in ("vae_slicing", "cpu_offload", "sequential_offload") if r in rules.ladder_rungs]
        assert [r.name for r in tried][:1 + len(memory_rungs)] == ["full", *memory_rungs]
        if "fewer_frames" in rules.ladder_rungs:
            last = tried[-1]
            assert last.name == "fewer_frames" and rules.frames.valid(last.params.num_frames)
            assert last.params.num_frames < asked.num_frames
            assert frames.shape == (last.params.num_frames, 32, 32, 3)
        else:  # no rung that changes the output: every try ran out of memory, the ladder ended
            assert frames is None and [r.name for r in tried] == ["full", *memory_rungs]

    # -- the daemon ---------------------------------------------------------------------------------

    def sidecar(self) -> dict:
        return {"prompt": "a cat on the sea", **TINY_SIDECAR, "num_frames": self.frames, "steps": 2, "fps": 12}

    def test_daemon_end_to_end(self, dirs, run_daemon):
        """I2VD_MODEL=tiny:<backend>: pair in the inbox -> MP4 with the frames and fps asked -> metadata."""
        inbox, outputs = dirs["inbox"], dirs["outputs"]
        write_image(inbox / ".scene.png.tmp", fmt="PNG").rename(inbox / "scene.png")
        (inbox / ".scene.json.tmp").write_text(json.dumps(self.sidecar()))
        (inbox / ".scene.json.tmp").rename(inbox / "scene.json")
        daemon = run_daemon(daemon_env(dirs, I2VD_MODEL=f"tiny:{self.name}"))
        daemon.wait_ready(timeout=120)
        video = wait_for(lambda: next(iter(outputs.glob("scene_*.mp4")), None), timeout=120,
                         what=f"the {self.name} MP4")
        assert probe(video) == (self.frames, 12.0, (32, 32))
        metadata = json.loads(video.with_suffix(".json").read_text())
        assert metadata["frames"] == self.frames and metadata["fps"] == 12
        assert metadata["params"]["prompt"] == self.sidecar().get("prompt")
        model = metadata["model"]
        assert (model["id"], model["backend"], model["smoke_test"]) == (f"tiny:{self.name}", self.name, True)
        assert model["pipeline_class"] == self.pipeline_class
        assert model["dtype"] == "float32"  # auto on the CPU, whatever the backend's CUDA default
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.output
