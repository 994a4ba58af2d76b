"""MP4 encoding through the ffmpeg binary that imageio-ffmpeg ships, verified before anyone trusts it.

imageio-ffmpeg's `write_frames` ignores ffmpeg's exit status, so a killed or starved ffmpeg left a
truncated file that looked like success. Here ffmpeg runs as a plain subprocess whose status is
checked, and the file is then read back (frame count, size, fps, tags) before `encode_mp4` returns.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from pipeline.errors import EncodeError
from pipeline.params import INTERPOLATION_FACTORS, GenerationParams

INTERPOLATION_METHOD = "ffmpeg-minterpolate"
# Motion-compensated interpolation with adaptive overlapped blocks and bidirectional motion search,
# the usual choice for smooth motion. minterpolate emits nothing after the last pair of input frames,
# so `tpad` clones the last frame twice to carry it to the end; `-frames:v` then cuts exactly k·N.
_MINTERPOLATE = "tpad=stop_mode=clone:stop=2,minterpolate=fps={fps}:mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1"

# The keys the MP4 muxer stores as standard iTunes-style atoms (©nam, ©cmt, desc, ...), which every
# player and tagger reads. Any other key would be dropped silently by ffmpeg, so it is refused instead.
MP4_TAG_KEYS = frozenset({
    "title", "comment", "description", "synopsis", "artist", "album", "album_artist", "composer",
    "date", "genre", "copyright", "grouping", "keywords",
})


@dataclass(frozen=True)
class Interpolation:
    """What frame interpolation did (factor 1: nothing); fit for the metadata JSON as `to_dict()`."""

    factor: int
    method: str | None  # None when factor is 1
    filter: str | None  # the exact ffmpeg filter graph, so the result can be reproduced
    source_frames: int
    source_fps: int
    frames: int
    fps: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VideoInfo:
    """What reading a video file back found."""

    frames: int
    fps: float
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True)
class EncodedVideo:
    """A verified MP4: what was asked for is what the file holds."""

    path: Path
    info: VideoInfo
    interpolation: Interpolation


def plan_interpolation(num_frames: int, fps: int, factor: int) -> Interpolation:
    """Frame count and rate after interpolating N frames at F fps by k (1, 2 or 4).

    The result has k·N frames at k·F fps, so the duration (N/F seconds) is unchanged: source frame i
    is output frame k·i, k−1 synthesised frames lie between neighbours, and the last source frame is
    held for k output frames, as the raw video shows it for 1/F s. E.g. 16 frames at 8 fps, k=2:
    32 frames at 16 fps.
    """
    if factor not in INTERPOLATION_FACTORS:
        raise ValueError(f"interpolation factor must be one of {INTERPOLATION_FACTORS}, got {factor!r}")
    if factor == 1:
        return Interpolation(1, None, None, num_frames, fps, num_frames, fps)
    return Interpolation(factor, INTERPOLATION_METHOD, _MINTERPOLATE.format(fps=factor * fps),
                         num_frames, fps, factor * num_frames, factor * fps)


def video_tags(title: str, params: GenerationParams, *, model: str, version: str,
               interpolation: Interpolation | None = None) -> dict[str, str]:
    """MP4 tags that let the file explain itself: a title, the prompt, and the whole story as JSON."""
    story = {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "seed": params.seed,
        "steps": params.steps,
        "guidance_scale": params.guidance_scale,
        "model": model,
        "i2vd_version": version,
    }
    if interpolation is not None and interpolation.factor > 1:
        story["interpolation"] = {"factor": interpolation.factor, "method": interpolation.method}
    # A C string cannot hold NUL; JSON escapes it, the plain-text tags drop it.
    tags = {"title": title.replace("\0", ""), "comment": json.dumps(story, ensure_ascii=False)}
    if params.prompt is not None:  # image-only models (SVD) take no prompt
        tags["description"] = params.prompt.replace("\0", "")
    return tags


def encode_mp4(frames: np.ndarray, path: Path, fps: int, *, tags: Mapping[str, str] | None = None,
               interpolate: int = 1) -> EncodedVideo:
    """Write uint8 frames (N, H, W, 3) as H.264 yuv420p with `tags`, interpolated by `interpolate`.

    H and W must be even. Raises EncodeError, leaving no file at `path`, when ffmpeg fails or the
    file it wrote does not hold the expected frames, size, rate and tags.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (N, H, W, 3), got {frames.dtype} {frames.shape}")
    count, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even dimensions, got {width}x{height}")
    tags = dict(tags or {})
    _check_tags(tags)
    plan = plan_interpolation(count, fps, interpolate)

    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-an",
    ]
    if plan.filter:
        cmd += ["-vf", plan.filter, "-frames:v", str(plan.frames)]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-preset", "medium",
            "-movflags", "+faststart"]
    for key, value in tags.items():
        cmd += ["-metadata", f"{key}={value}"]
    cmd += ["-f", "mp4", str(path)]

    try:
        # A flat byte view of the frames: no copy, and communicate() copes with ffmpeg dying early.
        data = memoryview(np.ascontiguousarray(frames)).cast("B")
        result = subprocess.run(cmd, input=data, capture_output=True, check=False)
        if result.returncode != 0:
            raise EncodeError(f"ffmpeg failed to encode {path.name}: {_exit_reason(result)}")
        info = probe_mp4(path)
        expected = (plan.frames, float(plan.fps), width, height)
        found = (info.frames, info.fps, info.width, info.height)
        if found != expected:
            raise EncodeError(
                f"the encoded video {path.name} holds {info.frames} frames of {info.width}x{info.height} "
                f"at {info.fps:g} fps ({info.size_bytes} bytes); expected {plan.frames} frames of "
                f"{width}x{height} at {plan.fps} fps")
        written = read_tags(path)
        lost = sorted(key for key, value in tags.items() if written.get(key) != value)
        if lost:
            raise EncodeError(f"the encoded video {path.name} lost its tags: {', '.join(lost)}")
    except BaseException:
        path.unlink(missing_ok=True)  # a broken file must never look like a video
        raise
    return EncodedVideo(path, info, plan)


def probe_mp4(path: Path) -> VideoInfo:
    """Decode every frame of `path`; EncodeError when ffmpeg cannot, or reports any decoding error.

    ffmpeg's `framecrc` output is a stable text format: a `#tb` (time base) and `#dimensions` header,
    then one line per decoded frame with its duration in time-base units. It runs to completion with
    no timeout, so a busy machine is slow here, never wrong.
    """
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-xerror",
           "-i", str(path), "-map", "0:v:0", "-f", "framecrc", "-"]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0:
        raise EncodeError(f"ffmpeg cannot read {path.name} back: {_exit_reason(result)}")
    header, durations = {}, []
    for line in result.stdout.decode("ascii", errors="replace").splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            header[key.strip()] = value.strip()
        elif line.strip():
            durations.append(int(line.split(",")[3]))
    try:
        tb_num, tb_den = (int(part) for part in header["tb 0"].split("/"))
        width, height = (int(part) for part in header["dimensions 0"].split("x"))
    except (KeyError, ValueError):
        raise EncodeError(f"ffmpeg found no video stream in {path.name}") from None
    fps = tb_den / (tb_num * durations[0]) if durations else 0.0
    return VideoInfo(len(durations), fps, width, height, path.stat().st_size)


def read_tags(path: Path) -> dict[str, str]:
    """The container's global metadata tags, as `ffmpeg -i FILE -f ffmetadata -` prints them."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
           "-i", str(path), "-f", "ffmetadata", "-"]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0:
        raise EncodeError(f"ffmpeg cannot read the tags of {path.name}: {_exit_reason(result)}")
    return parse_ffmetadata(result.stdout.decode("utf-8", errors="replace"))


def parse_ffmetadata(text: str) -> dict[str, str]:
    """The global section of an FFMETADATA1 text; backslash escapes `=`, `;`, `#`, `\\` and newline."""
    tags: dict[str, str] = {}
    # Each logical line as (character, was it escaped) pairs: only unescaped '=' and newline are syntax.
    line: list[tuple[str, bool]] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            line.append((next(chars, ""), True))
        elif ch != "\n":
            line.append((ch, False))
        elif _entry(line, tags):
            line = []
        else:
            return tags  # a [STREAM] or [CHAPTER] section: the global tags are done
    _entry(line, tags)
    return tags


def _entry(line: list[tuple[str, bool]], tags: dict[str, str]) -> bool:
    """Add one logical line to `tags`; False at the first section header."""
    if not line or (line[0] in ((";", False), ("#", False))):
        return True  # blank or a comment (the ;FFMETADATA1 header is one)
    if line[0] == ("[", False):
        return False
    split = next((i for i, (ch, escaped) in enumerate(line) if ch == "=" and not escaped), None)
    if split is not None:
        tags["".join(ch for ch, _ in line[:split])] = "".join(ch for ch, _ in line[split + 1:])
    return True


def _check_tags(tags: dict) -> None:
    unknown = sorted(set(tags) - MP4_TAG_KEYS)
    if unknown:
        raise ValueError(f"MP4 files keep only the tags {sorted(MP4_TAG_KEYS)}; not {unknown}")
    for key, value in tags.items():
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"tag {key!r} must be text without NUL characters")


def _exit_reason(result: subprocess.CompletedProcess) -> str:
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        hint = " (the file size limit, ulimit -f)" if name == "SIGXFSZ" else ""
        reason = f"killed by {name}{hint}"
    else:
        reason = f"exit status {result.returncode}"
    detail = _ffmpeg_complaint(result.stderr.decode("utf-8", errors="replace"))
    return f"{reason}: {detail}" if detail else reason


# What ffmpeg says about a broken file, most telling first; its log is long and mostly noise.
_COMPLAINTS = ("moov atom not found", "partial file", "No space left", "No such file", "Invalid data found",
               "rror")
_PREFIX = re.compile(r"^(\[[^]]*@ 0x[0-9a-f]+\] ?)+")  # "[h264 @ 0x55...] ", repeated


def _ffmpeg_complaint(text: str) -> str:
    """The one line of ffmpeg's log that says what went wrong."""
    lines = [_PREFIX.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("===")]
    for complaint in _COMPLAINTS:
        for line in lines:
            if complaint in line:
                return line
    return lines[-1] if lines else ""

