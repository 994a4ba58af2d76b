"""bench/encode.py: its size and quality figures come from code that runs in CI."""

from __future__ import annotations

import re

import numpy as np

from bench.encode import frames, main, quality
from pipeline.video import EncoderOptions, encode_mp4


def test_quality_is_measured_against_the_frames_the_video_was_made_from(tmp_path):
    reference = frames(64, 48, 8)
    video = encode_mp4(reference, tmp_path / "v.mp4", 8, options=EncoderOptions(preset="ultrafast", crf=18)).path
    ssim, psnr = quality(video, reference, 8)
    assert ssim > 0.97 and psnr > 35
    other_ssim, other_psnr = quality(video, np.roll(reference, 1, axis=0), 8)  # each frame against its neighbour
    assert other_ssim < ssim - 0.05 and other_psnr < psnr - 5


def test_a_lower_crf_buys_quality_with_bytes(capsys):
    assert main(["--sizes", "512x512x16", "--presets", "ultrafast", "--crfs", "18", "30"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if re.match(r"\| 512x512x16 \| ultrafast \| \d+ \|", line)]
    (crf18, mb18, ssim18), (crf30, mb30, ssim30) = [(int(r[2]), float(r[6]), float(r[8])) for r in rows]
    assert (crf18, crf30) == (18, 30) and mb18 > mb30 and ssim18 > ssim30
