"""A poster image and a small animated preview from a video's frames, for people browsing outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image

PosterFormat = Literal["jpeg", "webp"]
PreviewFormat = Literal["webp", "gif"]

PREVIEW_MAX_SIDE = 256
PREVIEW_MAX_FRAMES = 24


@dataclass(frozen=True)
class Poster:
    path: Path
    frame_index: int
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True)
class Preview:
    path: Path
    frames: int  # frames written; the encoder may still merge identical neighbours into one
    frame_ms: int
    width: int
    height: int
    size_bytes: int


def write_poster(frames: np.ndarray, path: Path, *, image_format: PosterFormat = "jpeg",
                 index: int | None = None, quality: int = 85) -> Poster:
    """One frame at full size, the middle one unless `index` says otherwise (negative counts from the end)."""
    _check_frames(frames)
    count = len(frames)
    chosen = count // 2 if index is None else index
    if not -count <= chosen < count:
        raise ValueError(f"poster frame {chosen} is outside the video's {count} frames")
    chosen %= count
    image = PIL.Image.fromarray(frames[chosen])
    _save(path, lambda: image.save(path, format=image_format.upper(), quality=quality))
    return Poster(path, chosen, image.width, image.height, path.stat().st_size)


def write_preview(frames: np.ndarray, path: Path, fps: int, *, image_format: PreviewFormat = "webp",
                  max_side: int = PREVIEW_MAX_SIDE, max_frames: int = PREVIEW_MAX_FRAMES,
                  quality: int = 60) -> Preview:
    """A looping animation: long side at most `max_side`, at most `max_frames` frames, same duration.

    Longer videos keep evenly spaced frames, each shown longer, so the preview plays as long as the video.
    """
    _check_frames(frames)
    if max_side < 1 or max_frames < 1:
        raise ValueError("max_side and max_frames must be at least 1")
    picked = _evenly_spaced(len(frames), max_frames)
    frame_ms = max(1, round(1000 * len(frames) / (fps * len(picked))))
    height, width = frames.shape[1:3]
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a box reduction by a whole factor, then Lanczos; half the CPU of Lanczos alone and
    # under one grey level (of 255) from it on average. WebP method 2 (of 0-6) halves the encode against
    # method 4 for previews about 3 % larger (bench/RESULTS.md, "Encoding").
    images = [PIL.Image.fromarray(frames[i]).resize(size, PIL.Image.Resampling.LANCZOS, reducing_gap=2.0)
              for i in picked]
    options = {"quality": quality, "method": 2} if image_format == "webp" else {"optimize": True}
    _save(path, lambda: images[0].save(path, format=image_format.upper(), save_all=True,
                                       append_images=images[1:], duration=frame_ms, loop=0, **options))
    return Preview(path, len(picked), frame_ms, size[0], size[1], path.stat().st_size)


def _evenly_spaced(count: int, limit: int) -> Sequence[int]:
    if count <= limit:
        return range(count)
    return [int(i) for i in np.linspace(0, count - 1, limit).round()]


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"expected uint8 frames of shape (N, H, W, 3), got {frames.dtype} {frames.shape}")


def _save(path: Path, write) -> None:
    try:
        write()
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written image under the caller's name
        raise
