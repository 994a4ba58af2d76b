"""LTX-Video: 8k+1 frames, sizes multiple of 32, frame-rate conditioning; old and new pipeline classes."""

from __future__ import annotations

from support.backends import BackendContract
from pipeline.backends import RULES, backend_for_class


class TestLtx(BackendContract):
    name = "ltx"
    frames = 9
    ladder_frames = 17
    pipeline_class = "LTXConditionPipeline"

    def test_rules(self):
        rules = RULES["ltx"]
        assert rules.prompt_required is True
        assert [n for n in range(0, 42) if rules.frames.valid(n)] == [9, 17, 25, 33, 41]
        assert rules.frames.floor(100) == 97 and rules.frames.floor(8) is None
        assert rules.size_multiple == 32
        assert rules.steps_range[0] <= 4 and rules.guidance_range[0] == 1.0  # distilled: 4-10 steps, guidance 1

    def test_checkpoints_before_0_9_5_run_through_the_image_to_video_pipeline(self, model_dir):
        """LTX-Video 0.9.0/0.9.1 are saved as LTXPipeline: the same components, the older i2v pipeline."""
        import json

        import torch

        from pipeline.backends import get_backend
        from pipeline.backends.ltx import pipeline_class_for
        from pipeline.runtime import Placement

        assert backend_for_class("LTXPipeline") == backend_for_class("LTXImageToVideoPipeline") == "ltx"
        assert pipeline_class_for("LTXPipeline").__name__ == "LTXImageToVideoPipeline"
        new_vae = {"down_block_types": ["LTXVideo095DownBlock3D"] * 4}  # 0.9.5's VAE, saved as LTXPipeline
        assert pipeline_class_for("LTXPipeline", new_vae).__name__ == "LTXConditionPipeline"
        old = model_dir.parent / "tiny-ltx-0.9.1"
        if not old.exists():
            import shutil

            shutil.copytree(model_dir, old)
            index = json.loads((old / "model_index.json").read_text())
            (old / "model_index.json").write_text(json.dumps({**index, "_class_name": "LTXPipeline"}))
        pipe = get_backend("ltx").load(str(old), Placement(torch.device("cpu"), torch.float32))
        assert type(pipe).__name__ == "LTXImageToVideoPipeline"
        assert self.run(pipe, self.params(steps=2)).shape == (9, 32, 32, 3)
