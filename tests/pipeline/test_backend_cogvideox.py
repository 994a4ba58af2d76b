"""CogVideoX image-to-video: 4k+1 frames; a 5b-I2V-style checkpoint generates only its own shape."""

from __future__ import annotations

import pytest

from support.backends import BackendContract
from pipeline.backends import RULES
from pipeline.backends.cogvideox import UnsupportedShape


class TestCogVideoX(BackendContract):
    name = "cogvideox"
    frames = 9
    ladder_frames = None
    pipeline_class = "CogVideoXImageToVideoPipeline"

    def test_rules(self):
        rules = RULES["cogvideox"]
        assert rules.prompt_required is True
        assert [n for n in range(0, 20) if rules.frames.valid(n)] == [5, 9, 13, 17]
        assert rules.size_multiple == 16
        assert {(p.width, p.height, p.num_frames, p.fps) for p in rules.presets.values()} == {(720, 480, 49, 8)}
        assert "fewer_frames" not in rules.ladder_rungs and "lower_resolution" not in rules.ladder_rungs

    def test_other_shapes_are_refused_with_what_to_do(self, pipe):
        """The tiny model, like 5b-I2V, learned its positional embeddings for one shape (32x32, 9 frames)."""
        with pytest.raises(UnsupportedShape, match=r"only 32x32 with 9 frames .*asked: 64x32, 9 frames"):
            self.run(pipe, self.params(width=64))
        with pytest.raises(UnsupportedShape, match=r"asked: 32x32, 5 frames"):
            self.run(pipe, self.params(num_frames=5))
