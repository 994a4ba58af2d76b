"""Wan 2.1/2.2 image-to-video: 4k+1 frames, sizes multiple of 32 (valid for the 5B and 14B models)."""

from __future__ import annotations

from backend_support import BackendContract
from pipeline.backends import RULES


class TestWan(BackendContract):
    name = "wan"
    frames = 9
    ladder_frames = 9
    pipeline_class = "WanImageToVideoPipeline"

    def test_rules(self):
        rules = RULES["wan"]
        assert rules.prompt_required is True
        assert [n for n in range(0, 30) if rules.frames.valid(n)] == [5, 9, 13, 17, 21, 25, 29]
        assert rules.frames.valid(121) and not rules.frames.valid(125) and not rules.frames.valid(120)
        assert rules.frames.floor(120) == 117 and rules.frames.floor(4) is None
        assert rules.size_multiple == 32
        high = rules.presets["high"]
        assert (high.width, high.height, high.num_frames, high.fps) == (1280, 704, 121, 24)  # TI2V-5B native
