"""Stable Video Diffusion: image-only conditioning, any frame count up to 25."""

from __future__ import annotations

from support.backends import BackendContract
from pipeline.backends import RULES


class TestSvd(BackendContract):
    name = "svd"
    frames = 8
    ladder_frames = 8
    pipeline_class = "StableVideoDiffusionPipeline"

    def test_rules(self):
        rules = RULES["svd"]
        assert rules.prompt_required is False  # SVD has no text encoder
        assert [n for n in range(0, 40) if rules.frames.valid(n)] == list(range(2, 26))
        assert rules.frames.floor(40) == 25 and rules.frames.floor(1) is None
        assert rules.size_multiple == 8
        standard = rules.presets["standard"]
        assert (standard.width, standard.height, standard.num_frames) == (1024, 576, 25)

    def sidecar(self) -> dict:
        """No prompt at all: the daemon must accept the pair for SVD (the end-to-end test drops this)."""
        return {key: value for key, value in super().sidecar().items() if key != "prompt"}

    def test_prompt_may_be_absent(self, pipe):
        frames = self.run(pipe, self.params(prompt=None, negative_prompt=None, steps=2))
        assert frames.shape == (self.frames, 32, 32, 3)
