"""Frames and broken ffmpeg installs for the video and preview tests."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import imageio_ffmpeg
import numpy as np


def noise(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Frames H.264 cannot squeeze: the file is as large as a real one of that size or larger."""
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def moving_square(count: int, height: int, width: int, step: int = 4) -> np.ndarray:
    """A white 12-pixel square on black, `step` pixels further right in each frame, from x=4."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    top = (height - 12) // 2
    for i in range(count):
        frames[i, top:top + 12, 4 + i * step:16 + i * step] = 255
    return frames


def square_x(frame: np.ndarray) -> float:
    """Where the square's centre is: the brightness-weighted mean column."""
    weight = frame.astype(float).mean(axis=(0, 2))
    return float((weight * np.arange(len(weight))).sum() / weight.sum())


def solid_colours(count: int, height: int, width: int) -> np.ndarray:
    """Frame i is one flat colour unlike every other frame's: a decoded frame tells which it was."""
    colours = [((i * 67) % 256, (i * 131 + 40) % 256, (255 - i * 29) % 256) for i in range(count)]
    return np.stack([np.full((height, width, 3), c, dtype=np.uint8) for c in colours])


def ffmpeg_wrapper(directory: Path, body: str) -> Path:
    """An executable shell script standing in for ffmpeg; $FFMPEG in `body` is the real one."""
    real = imageio_ffmpeg.get_ffmpeg_exe()
    assert "ffmpeg-wrapper" not in real, "IMAGEIO_FFMPEG_EXE already names a wrapper: it would call itself"
    script = directory / "ffmpeg-wrapper"
    script.write_text(f"#!/bin/sh\nFFMPEG='{real}'\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    assert os.access(script, os.X_OK)
    return script


def x264_options(path: Path) -> dict[str, str]:
    """The settings x264 writes into every stream it makes (as `strings FILE` or mediainfo show them)."""
    match = re.search(rb"x264 - core \d+ .*? - options: ([^\0]*)", path.read_bytes())
    assert match, f"{path.name} holds no x264 settings: not made by libx264"
    return dict(item.split("=", 1) for item in match.group(1).decode("ascii").split() if "=" in item)
