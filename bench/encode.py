"""Encoding cost against file size and quality: libx264 presets and CRFs through `encode_mp4`; then the
poster and preview, the rest of a video's publish cost.

For each video size and each preset × CRF, the project's own `encode_mp4` (encode, then decode every
frame to verify) is timed, and the file is compared with the frames it was made from by ffmpeg's `ssim`
and `psnr` filters (both sides as yuv420p, so the figure is the encoder's loss alone). The frames are
synthetic but photo-like: a 1/f² colour texture (the spectrum of natural images) panned 3 px right and
1 px down per frame, with a disc crossing it, so motion search and the rate control have real work.

Run on an otherwise idle machine; the load is printed at start and end.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import imageio_ffmpeg
import numpy as np

from bench.harness import footer, header
from pipeline.previews import write_poster, write_preview
from pipeline.video import EncoderOptions, encode_mp4, probe_mp4

SIZES = {"512x512x16": (512, 512, 16, 8), "768x480x121": (768, 480, 121, 24), "1280x704x121": (1280, 704, 121, 24)}
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")
CRFS = (18, 20, 23)


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image whose power falls as 1/f², as in photographs; the channels share most detail."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(height, width))
    shared = rng.standard_normal((height, width))
    channels = []
    for _ in range(3):
        white = 0.7 * shared + 0.3 * rng.standard_normal((height, width))
        plane = np.fft.irfft2(np.fft.rfft2(white) * amplitude, s=(height, width))
        channels.append((plane - plane.mean()) / plane.std())
    image = np.stack(channels, axis=-1) * 48 + 128
    return np.clip(image, 0, 255).astype(np.uint8)


def frames(width: int, height: int, count: int) -> np.ndarray:
    """`count` frames panning over the texture, a disc crossing from left to right."""
    pan_x, pan_y = 3, 1
    scene = texture(height + pan_y * count, width + pan_x * count)
    out = np.empty((count, height, width, 3), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    radius = height // 8
    for i in range(count):
        out[i] = scene[pan_y * i:pan_y * i + height, pan_x * i:pan_x * i + width]
        cx = radius + (width - 2 * radius) * i / max(1, count - 1)
        out[i][(xx - cx) ** 2 + (yy - height / 2) ** 2 < radius ** 2] = (230, 200, 60)
    return out


def quality(video: Path, reference: np.ndarray, fps: int) -> tuple[float, float]:
    """(SSIM all planes, PSNR average in dB) of `video` against `reference`, by ffmpeg's filters."""
    height, width = reference.shape[1:3]
    graph = ("[0:v]format=yuv420p,split[a][b];[1:v]format=yuv420p,split[c][d];"
             "[a][c]ssim[s];[b][d]psnr[p]")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats", "-i", str(video),
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
           "-filter_complex", graph, "-map", "[s]", "-f", "null", "-", "-map", "[p]", "-f", "null", "-"]
    result = subprocess.run(cmd, input=memoryview(np.ascontiguousarray(reference)).cast("B"),
                            capture_output=True, check=True)
    log = result.stderr.decode()
    ssim = float(re.search(r"SSIM .*All:([\d.]+)", log).group(1))
    psnr = float(re.search(r"PSNR .*average:([\d.inf]+)", log).group(1))
    return ssim, psnr


def children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (the ffmpeg runs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    """User + system CPU seconds of this process (Pillow's work for the poster and preview)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--crfs", nargs="+", type=int, default=list(CRFS))
    parser.add_argument("--threads", type=int, default=0, help="x264 threads (0: x264 decides, all cores)")
    parser.add_argument("--repeat", type=int, default=1, help="encodes per setting; the fastest counts")
    args = parser.parse_args(argv)
    header("Encoding: time, size and quality of libx264 presets and CRFs", "bench.encode")
    print(f"encoder  libx264 via encode_mp4, threads {args.threads or 'auto'}, best of {args.repeat}")
    # CPU seconds (ffmpeg's user + system) are the figure to compare on a shared machine: the wall time
    # also holds every other tenant's work.
    print("| video | preset | CRF | encode_mp4 wall s | encode_mp4 CPU s | of which verify CPU s | MB | kbit/s "
          "| SSIM | PSNR dB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    with TemporaryDirectory(prefix="i2vd-bench-encode-") as scratch:
        path = Path(scratch) / "v.mp4"
        for size in args.sizes:
            width, height, count, fps = SIZES[size]
            reference = frames(width, height, count)
            for preset in args.presets:
                for crf in args.crfs:
                    options = EncoderOptions(preset=preset, crf=crf, threads=args.threads)
                    runs = []
                    for _ in range(args.repeat):
                        started, cpu = time.perf_counter(), children_cpu()
                        encoded = encode_mp4(reference, path, fps, options=options)
                        runs.append((time.perf_counter() - started, children_cpu() - cpu))
                    wall, cpu = min(runs)
                    started = children_cpu()
                    probe_mp4(path)
                    verify = children_cpu() - started
                    ssim, psnr = quality(path, reference, fps)
                    size_mb = encoded.info.size_bytes / 1e6
                    kbps = encoded.info.size_bytes * 8 / 1000 / (count / fps)
                    print(f"| {size} | {preset} | {crf} | {wall:.2f} | {cpu:.2f} | {verify:.2f} | {size_mb:.2f} | "
                          f"{kbps:.0f} | {ssim:.4f} | {psnr:.2f} |", flush=True)
        print("\n| video | poster + preview CPU s | preview KB |")
        print("|---|---:|---:|", flush=True)
        for size in args.sizes:
            width, height, count, fps = SIZES[size]
            reference = frames(width, height, count)
            started = own_cpu()
            write_poster(reference, Path(scratch) / "p.jpg")
            preview = write_preview(reference, Path(scratch) / "p.webp", fps)
            print(f"| {size} | {own_cpu() - started:.2f} | {preview.size_bytes / 1000:.0f} |", flush=True)
    footer("encode: see the tables; compare presets at equal SSIM, not only at equal CRF")
    return 0


if __name__ == "__main__":
    sys.exit(main())
