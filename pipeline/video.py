"""MP4 encoding through the ffmpeg binary that imageio-ffmpeg ships, verified before anyone trusts it.

imageio-ffmpeg's `write_frames` ignores ffmpeg's exit status, so a killed or starved ffmpeg left a
truncated file that looked like success. Here ffmpeg runs as a plain subprocess whose status is
checked, and the file is then read back (frame count, size, fps, tags) before `encode_mp4` returns.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from pipeline.errors import EncodeError, EncoderUnavailable
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


# H.264 encoders encode_mp4 can drive; "auto" in the settings picks one of them (see choose_encoder).
ENCODERS = ("libx264", "h264_nvenc")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# NVENC's own speed/quality scale (p1 fastest .. p7 best); p4 is its default. x264 presets do not apply.
NVENC_PRESET = "p4"
# NVENC refuses frames below a size that differs by GPU (145x49 and 145x96 are reported); where `auto`
# chose it, a video with a side under this goes to libx264, which costs next to nothing at that size.
NVENC_MIN_SIDE = 256


@dataclass(frozen=True)
class EncoderOptions:
    """How `encode_mp4` compresses: an ffmpeg H.264 encoder and its speed and quality knobs."""

    encoder: str = "libx264"
    preset: str = "medium"  # x264's preset; NVENC runs NVENC_PRESET
    crf: int = 18  # constant quality, lower is better: x264's -crf, NVENC's -cq
    threads: int = 0  # x264's frame threads; 0 lets x264 decide (all cores)
    auto: bool = False  # chosen by "auto": small videos may go to libx264 (see for_size)

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"video encoder must be one of {', '.join(ENCODERS)}, not {self.encoder!r}")
        if self.preset not in X264_PRESETS:
            raise ValueError(f"x264 preset must be one of {', '.join(X264_PRESETS)}, not {self.preset!r}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"CRF must be between 0 and 51, not {self.crf}")
        if self.threads < 0:
            raise ValueError(f"encoder threads must be 0 (automatic) or more, not {self.threads}")

    def for_size(self, width: int, height: int) -> EncoderOptions:
        """The options to encode a width x height video with: libx264 where `auto` chose NVENC and it is small."""
        if self.encoder == "h264_nvenc" and self.auto and min(width, height) < NVENC_MIN_SIDE:
            return replace(self, encoder="libx264")
        return self

    def ffmpeg_args(self) -> list[str]:
        """The output options that select and tune the encoder."""
        if self.encoder == "h264_nvenc":
            return ["-c:v", "h264_nvenc", "-preset", NVENC_PRESET, "-rc", "vbr", "-cq", str(self.crf), "-b:v", "0"]
        args = ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf)]
        return args + ["-threads", str(self.threads)] if self.threads else args

    def to_dict(self) -> dict:
        """What the metadata JSON records; only the knobs the encoder uses."""
        if self.encoder == "h264_nvenc":
            return {"encoder": self.encoder, "preset": NVENC_PRESET, "cq": self.crf}
        return {"encoder": self.encoder, "preset": self.preset, "crf": self.crf, "threads": self.threads}


def choose_encoder(requested: str, *, preset: str = "medium", crf: int = 18, threads: int = 0) -> EncoderOptions:
    """The options for `requested`: an encoder name, or "auto" (h264_nvenc where it works here, else libx264;
    videos too small for NVENC go to libx264 all the same).

    Raises EncoderUnavailable, saying why in one line, when an encoder named outright cannot encode here.
    """
    if requested == "auto":
        encoder = "h264_nvenc" if encoder_problem("h264_nvenc") is None else "libx264"
        return EncoderOptions(encoder, preset, crf, threads, auto=True)
    if requested not in ENCODERS:
        raise EncoderUnavailable(f"video encoder {requested!r} is not one of auto, {', '.join(ENCODERS)}")
    if problem := encoder_problem(requested):
        raise EncoderUnavailable(problem)
    return EncoderOptions(requested, preset, crf, threads)


def encoder_problem(encoder: str) -> str | None:
    """Why the ffmpeg in use cannot encode with `encoder` on this machine, or None when it can."""
    return _encoder_problem(imageio_ffmpeg.get_ffmpeg_exe(), encoder)


@functools.cache  # one trial per ffmpeg and encoder: a GPU encoder's trial opens a CUDA context
def _encoder_problem(exe: str, encoder: str) -> str | None:
    try:
        listed = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True,
                                check=False).stdout
    except OSError as exc:
        return f"ffmpeg at {exe} does not run: {exc}"
    if not re.search(rf"^\s*V\S*\s+{re.escape(encoder)}\s", listed, re.MULTILINE):
        return f"the ffmpeg in use ({exe}) has no {encoder} encoder"
    # Listed is not enough: NVENC is compiled into most builds and needs an NVIDIA GPU and driver at run
    # time. Two black frames at a size every H.264 encoder takes show whether it really works here.
    width, height, frames = 256, 256, 2
    cmd = [exe, "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{width}x{height}", "-r", "8", "-i", "-", *EncoderOptions(encoder).ffmpeg_args(),
           "-pix_fmt", "yuv420p", "-f", "null", "-"]
    result = subprocess.run(cmd, input=bytes(width * height * 3 * frames), capture_output=True, check=False)
    if result.returncode != 0:
        hint = " (it needs an NVIDIA GPU and driver)" if encoder.endswith("_nvenc") else ""
        return f"ffmpeg's {encoder} encoder does not work here{hint}: {_exit_reason(result)}"
    return None


def encoder_threads(worker_cores: int) -> int:
    """x264 threads for the cores this process may use that the worker does not keep busy; at least 1."""
    return max(1, len(os.sched_getaffinity(0)) - worker_cores)


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
    encoder: EncoderOptions


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
    story: dict[str, object] = {
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
               interpolate: int = 1, options: EncoderOptions = EncoderOptions()) -> EncodedVideo:
    """Write uint8 frames (N, H, W, 3) as H.264 yuv420p with `tags`, interpolated by `interpolate`.

    `options` picks the encoder and its knobs (see `choose_encoder`); every encoder's file is verified alike.

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
    options = options.for_size(width, height)

    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-an",
    ]
    if plan.filter:
        cmd += ["-vf", plan.filter, "-frames:v", str(plan.frames)]
    cmd += [*options.ffmpeg_args(), "-pix_fmt", "yuv420p", "-movflags", "+faststart"]
    for key, value in tags.items():
        cmd += ["-metadata", f"{key}={value}"]
    cmd += ["-f", "mp4", str(path)]

    try:
        result = _feed(cmd, memoryview(np.ascontiguousarray(frames).data).cast("B"))  # a flat view: no copy
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
    return EncodedVideo(path, info, plan, options)


def _feed(cmd: list[str], data: memoryview) -> subprocess.CompletedProcess:
    """Run ffmpeg with `data` on its stdin, written in one call that holds no GIL while it blocks.

    subprocess.run(input=...) writes 4 KiB per turn of a select loop, each turn taking the GIL back:
    80,000 turns for a 1280x704x121 video, paced by the encoder, while the worker thread generates the
    next video. stderr goes to a file, which never fills up and blocks ffmpeg while we write.
    """
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            assert proc.stdin is not None
            with proc.stdin:
                proc.stdin.write(data)
        except BrokenPipeError:
            pass  # ffmpeg stopped reading (it failed): its exit status and stderr say why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        returncode = proc.wait()
        stderr.seek(0)
        return subprocess.CompletedProcess(cmd, returncode, b"", stderr.read())


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
_COMPLAINTS = ("Cannot load", "No NVENC capable", "moov atom not found", "partial file", "No space left",
               "No such file", "Invalid data found", "rror")
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

