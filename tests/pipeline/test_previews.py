"""Poster and animated preview, checked by decoding them with Pillow."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from pipeline.previews import write_poster, write_preview
from support.video import noise, solid_colours


def decoded_frames(path) -> list[np.ndarray]:
    with PIL.Image.open(path) as image:
        frames = []
        for i in range(getattr(image, "n_frames", 1)):
            image.seek(i)
            frames.append(np.asarray(image.convert("RGB"), dtype=int))
        return frames


def test_the_poster_is_the_middle_frame_at_the_videos_size(tmp_path):
    frames = solid_colours(9, 48, 80)  # 5:3
    poster = write_poster(frames, tmp_path / "p.jpg")
    with PIL.Image.open(tmp_path / "p.jpg") as image:
        assert image.format == "JPEG" and image.size == (80, 48)
    colour = decoded_frames(tmp_path / "p.jpg")[0].mean(axis=(0, 1))
    assert np.abs(colour - frames[4, 0, 0]).max() < 4  # frame 4 of 0..8, not a neighbour
    assert (poster.frame_index, poster.width, poster.height) == (4, 80, 48)
    assert poster.size_bytes == (tmp_path / "p.jpg").stat().st_size


def test_a_webp_poster_of_a_chosen_frame(tmp_path):
    frames = solid_colours(8, 32, 64)
    poster = write_poster(frames, tmp_path / "p.webp", image_format="webp", index=-1)
    with PIL.Image.open(tmp_path / "p.webp") as image:
        assert image.format == "WEBP" and image.size == (64, 32)
    assert np.abs(decoded_frames(tmp_path / "p.webp")[0].mean(axis=(0, 1)) - frames[7, 0, 0]).max() < 4
    assert poster.frame_index == 7
    with pytest.raises(ValueError, match="outside"):
        write_poster(frames, tmp_path / "q.webp", index=8)


def test_the_preview_is_small_animated_and_as_long_as_the_video(tmp_path):
    frames = solid_colours(40, 320, 512)  # 5 s at 8 fps
    preview = write_preview(frames, tmp_path / "p.webp", fps=8)
    with PIL.Image.open(tmp_path / "p.webp") as image:
        assert image.format == "WEBP" and image.is_animated and image.size == (256, 160)
        assert image.n_frames == 24  # evenly spaced frames, capped
        durations = []
        for i in range(image.n_frames):
            image.seek(i)
            image.load()  # WebP reads a frame's duration with its pixels
            durations.append(image.info["duration"])
    assert durations == [208] * 24 and abs(sum(durations) - 5000) < 24  # still 5 s
    decoded = decoded_frames(tmp_path / "p.webp")
    assert np.abs(decoded[0].mean(axis=(0, 1)) - frames[0, 0, 0]).max() < 6
    assert np.abs(decoded[-1].mean(axis=(0, 1)) - frames[-1, 0, 0]).max() < 6
    assert (preview.frames, preview.frame_ms, preview.width, preview.height) == (24, 208, 256, 160)


def test_a_small_video_gives_a_gif_preview_of_every_frame_never_enlarged(tmp_path):
    frames = solid_colours(8, 32, 32)
    preview = write_preview(frames, tmp_path / "p.gif", fps=8, image_format="gif")
    with PIL.Image.open(tmp_path / "p.gif") as image:
        assert image.format == "GIF" and image.is_animated and image.n_frames == 8
        assert image.size == (32, 32) and image.info["loop"] == 0
    assert preview.frames == 8


def test_a_real_sized_preview_stays_small(tmp_path):
    # Noise is the worst case for a compressor; a generated video compresses far better.
    preview = write_preview(noise(16, 512, 512), tmp_path / "p.webp", fps=8)
    assert (preview.width, preview.height, preview.frames) == (256, 256, 16)
    assert preview.size_bytes < 500_000  # raw: 3 MB
