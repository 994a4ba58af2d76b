"""Inputs as users drop them (images, sidecars, pairs) and the videos that come out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio_ffmpeg
import PIL.Image

TINY_SIDECAR = {"width": 32, "height": 32, "num_frames": 8, "steps": 10, "fps": 8}


def write_image(path: Path, size=(48, 40), color=(200, 120, 40), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new(mode, size, color).save(path, format=fmt)
    return path


def write_sidecar(path: Path, **fields) -> Path:
    data = {"prompt": "a test scene", **TINY_SIDECAR, **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


def drop_pair(inbox: Path, name: str, **fields) -> tuple[Path, Path]:
    """A pair written the safe way (temporary names, then rename), as `i2vd submit` does."""
    image = write_image(inbox / f".{name}.png.tmp", fmt="PNG")
    sidecar = write_sidecar(inbox / f".{name}.json.tmp", **fields)
    final_image, final_sidecar = inbox / f"{name}.png", inbox / f"{name}.json"
    os.rename(image, final_image)
    os.rename(sidecar, final_sidecar)
    return final_image, final_sidecar


def probe(path: Path) -> tuple[int, float, tuple[int, int]]:
    """(frames, fps, (width, height)) of a video, by decoding every frame with ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return sum(1 for _ in reader), float(meta["fps"]), tuple(meta["size"])
