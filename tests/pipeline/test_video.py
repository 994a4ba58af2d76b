"""encode_mp4 with the real bundled ffmpeg: verified results, broken encoders, tags, interpolation."""

from __future__ import annotations

import json
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from support.files import probe
from pipeline.errors import EncodeError, PipelineError
from pipeline.params import GenerationParams
from pipeline.video import encode_mp4, parse_ffmetadata, plan_interpolation, video_tags
from support.tmpfs import tmpfs
from support.video import ffmpeg_wrapper, moving_square, noise, square_x


def ffmetadata(path) -> dict[str, str]:
    """The file's tags as any user would read them: `ffmpeg -i FILE -f ffmetadata -`."""
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                         capture_output=True, check=True).stdout
    return parse_ffmetadata(out.decode())


# -- a broken encode is an error, never a video ---------------------------------------------------

def test_a_good_encode_is_verified_and_reported(tmp_path):
    encoded = encode_mp4(noise(12, 40, 56), tmp_path / "v.mp4", fps=12)
    assert probe(tmp_path / "v.mp4") == (12, 12.0, (56, 40))
    info = encoded.info
    assert (info.frames, info.fps, info.width, info.height) == (12, 12.0, 56, 40)
    assert info.size_bytes == (tmp_path / "v.mp4").stat().st_size > 0
    assert encoded.interpolation.factor == 1 and encoded.interpolation.method is None


def test_an_encoder_stopped_by_the_file_size_limit_is_an_error(tmp_path, monkeypatch):
    # The repro: ffmpeg under `ulimit -f 4` (4 KiB) wrote a 4 KB MP4 that was published as success.
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(ffmpeg_wrapper(tmp_path, 'ulimit -f 4\nexec "$FFMPEG" "$@"')))
    target = tmp_path / "v.mp4"
    with pytest.raises(EncodeError, match="SIGXFSZ") as info:
        encode_mp4(noise(8, 64, 64), target, fps=8)
    assert isinstance(info.value, PipelineError)
    assert not target.exists()  # nothing that looks like a video is left behind


def test_an_encoder_that_fails_is_an_error_even_if_its_file_looks_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(ffmpeg_wrapper(tmp_path, '"$FFMPEG" "$@"\nexit 1')))
    with pytest.raises(EncodeError, match="exit status 1"):
        encode_mp4(noise(8, 32, 32), tmp_path / "v.mp4", fps=8)
    assert not (tmp_path / "v.mp4").exists()


def test_an_encoder_that_claims_success_for_a_truncated_file_is_caught_by_reading_it_back(tmp_path, monkeypatch):
    # Exit status 0 but half the file: only decoding the result shows it is broken.
    body = ('"$FFMPEG" "$@" || exit\n'
            'case "$*" in *rawvideo*) for last; do :; done; truncate -s 3000 "$last";; esac')
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(ffmpeg_wrapper(tmp_path, body)))
    with pytest.raises(EncodeError, match="cannot read v.mp4 back: .*partial file"):
        encode_mp4(noise(8, 64, 64), tmp_path / "v.mp4", fps=8)
    assert not (tmp_path / "v.mp4").exists()


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs: room for a few small files, not for a real video. Needs root (mount)."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    with tmpfs(mountpoint, "64k"):
        yield mountpoint


def test_a_full_disk_is_an_encode_error_and_leaves_no_file(full_disk):
    with pytest.raises(EncodeError, match="No space left on device"):
        encode_mp4(noise(8, 128, 128), full_disk / "v.mp4", fps=8)
    assert list(full_disk.iterdir()) == []
    encode_mp4(noise(8, 16, 16), full_disk / "small.mp4", fps=8)  # a video that fits is still fine
    assert probe(full_disk / "small.mp4")[0] == 8


# -- tags --------------------------------------------------------------------------------------

ODD = "line one\nline two = 2; #3 \\ back\tslash é 日本語 🎬 \r\n  trailing  "


def test_tags_survive_odd_characters(tmp_path):
    tags = {"title": "a=b;c#d\ne", "comment": ODD, "description": "x" * 4000}
    encode_mp4(noise(8, 32, 32), tmp_path / "v.mp4", fps=8, tags=tags)
    written = ffmetadata(tmp_path / "v.mp4")
    assert {key: written[key] for key in tags} == tags


def test_the_story_tags_tell_prompt_seed_model_and_version(tmp_path):
    params = GenerationParams(prompt="waves\n= rolling; # in", negative_prompt="blurry, ü", width=32, height=32,
                              num_frames=8, fps=8, steps=10, guidance_scale=9.0, seed=2**63 - 1)
    tags = video_tags("beach_20261122_083005", params, model="some/model", version="0.1.0",
                      interpolation=plan_interpolation(8, 8, 2))
    encode_mp4(noise(8, 32, 32), tmp_path / "v.mp4", fps=8, tags=tags, interpolate=2)
    written = ffmetadata(tmp_path / "v.mp4")
    assert written["title"] == "beach_20261122_083005"
    assert written["description"] == "waves\n= rolling; # in"
    assert json.loads(written["comment"]) == {
        "prompt": "waves\n= rolling; # in", "negative_prompt": "blurry, ü", "seed": 2**63 - 1, "steps": 10,
        "guidance_scale": 9.0, "model": "some/model", "i2vd_version": "0.1.0",
        "interpolation": {"factor": 2, "method": "ffmpeg-minterpolate"},
    }


def test_a_nul_in_a_prompt_is_dropped_from_the_tags_and_refused_in_raw_tags(tmp_path):
    params = GenerationParams(prompt="a\0b", width=32, height=32, num_frames=8, fps=8, steps=10,
                              guidance_scale=9.0, seed=1)
    tags = video_tags("t", params, model="m", version="v")
    assert tags["description"] == "ab" and json.loads(tags["comment"])["prompt"] == "a\0b"
    with pytest.raises(ValueError, match="NUL"):
        encode_mp4(noise(8, 32, 32), tmp_path / "v.mp4", fps=8, tags={"title": "a\0b"})


def test_a_tag_mp4_would_drop_is_refused_before_encoding(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        encode_mp4(noise(8, 32, 32), tmp_path / "v.mp4", fps=8, tags={"seed": "7"})
    assert not (tmp_path / "v.mp4").exists()


def test_ffmetadata_parsing_unescapes_and_stops_at_the_first_section():
    text = ";FFMETADATA1\ntitle=a\\=b\\;c\\#d\\\\e\ncomment=one\\\ntwo\n; a comment\n[STREAM]\ntitle=stream\n"
    assert parse_ffmetadata(text) == {"title": "a=b;c#d\\e", "comment": "one\ntwo"}


# -- interpolation -----------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [2, 4])
def test_interpolation_multiplies_frames_and_fps_and_moves_the_picture_in_between(tmp_path, factor):
    frames = moving_square(8, 48, 64)  # 4 px further right each frame, centre from x=9.5 to 37.5
    encoded = encode_mp4(frames, tmp_path / "v.mp4", fps=8, interpolate=factor)
    count, fps, size = probe(tmp_path / "v.mp4")
    assert (count, fps, size) == (8 * factor, 8.0 * factor, (64, 48))  # the same 1 s
    assert encoded.interpolation.to_dict() == {
        "factor": factor, "method": "ffmpeg-minterpolate", "filter": encoded.interpolation.filter,
        "source_frames": 8, "source_fps": 8, "frames": 8 * factor, "fps": 8 * factor,
    }
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "v.mp4"))
    next(reader)
    centres = [square_x(np.frombuffer(b, np.uint8).reshape(48, 64, 3)) for b in reader]
    moving = centres[:factor * 7 + 1]
    # Synthesised frames put the square part of the way: motion, not repeated frames.
    assert max(abs(x - (9.5 + 4 * j / factor)) for j, x in enumerate(moving)) < 0.75
    assert centres[factor * 7:] == pytest.approx([37.5] * factor, abs=0.25)  # the last frame is held


def test_interpolation_factors_are_1_2_or_4():
    assert plan_interpolation(16, 8, 2).frames == 32 and plan_interpolation(16, 8, 2).fps == 16
    assert plan_interpolation(16, 8, 1).filter is None
    with pytest.raises(ValueError, match="1, 2, 4"):
        plan_interpolation(16, 8, 3)
