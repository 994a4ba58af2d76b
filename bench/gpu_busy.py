"""GPU busy fraction: the fastest backend's default jobs back to back through `i2vd run` (issue 21).

The daemon runs as users run it, except that its model is the backend's default at full size with
random weights, built on the GPU as bench.gpu builds it (nothing is downloaded; the kernels do not
care what the weights are): RANDOM_WEIGHTS replaces the backend's `load` in the daemon's process
before it starts. Once it is ready, --jobs default jobs (sidecars with a prompt only: the standard
preset, LTX-Video distilled's 768x512x121 in 8 steps) are dropped at once, and the GPU's utilisation
is read every 0.1 s. The busy fraction is its mean between the first `job_started` (plus PERIOD) and
the last `job_generated` (after that only the last publish runs, on the CPU): NVML's utilisation is the
share of its sample period in which a kernel ran, so the mean is the share of the window the GPU had
work.

Read with nvidia-ml-py (`pynvml`) in this process: no subprocess, each reading timed here, and the
lent GPU image ships it (no wheel to carry). Without it, `nvidia-smi --query-gpu=timestamp,
utilization.gpu -lms 100`, which comes with every driver; its own timestamps are used, since its
output through a pipe may arrive in bursts.

    python -m bench.gpu_busy                  # CUDA: 10 default jobs of LTX-Video; target >= 95 %
    python -m bench.gpu_busy --backend wan    # another backend's default jobs
    python -m bench.gpu_busy --toy --jobs 2   # anywhere: the tiny model at toy size (no utilisation without a GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import PIL.Image

from bench.harness import Daemon, Scratch, event_time, footer, header

TARGET = 0.95
INTERVAL = 0.1  # seconds between readings
# A reading covers NVML's last sample period, 1/6 s to 1 s depending on the GPU: those within a second
# of the first job's start would count the idle moment before it.
PERIOD = 1.0
# The fewest FLOPs per default job, counted (bench/RESULTS.md, section 6): LTX-Video 0.9.8 13B distilled
# 1,442 TFLOP against I2VGen-XL's 2,135, SVD's 4,174, CogVideoX's 33,545 and Wan's 54,091.
FASTEST = "ltx"
RANDOM_WEIGHTS = ("import sys, bench.gpu_busy as busy; busy.random_weights({backend!r}, {toy!r}); "
                  "from daemon.cli.main import main; sys.exit(main())")


def random_weights(backend: str, toy: bool) -> None:
    """In the daemon's process: `backend` loads bench.gpu's model with random weights (full-size, or tiny)."""
    from bench.gpu import build_pipeline
    from pipeline.backends import get_backend

    def load(self, model: str, placement):
        pipe = build_pipeline(backend, toy, placement.device, placement.dtype)
        pipe.register_to_config(_name_or_path=model)  # LTX-Video's distilled schedule goes by the name
        pipe.set_progress_bar_config(disable=True)
        return pipe

    type(get_backend(backend)).load = load


# -- utilisation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    time: float  # seconds since the epoch
    percent: float


def parse_smi_line(line: str) -> Reading | None:
    """One line of `nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits`
    ("2026/12/06 03:20:11.123, 87"; the timestamp in local time); None for anything else ("[N/A]")."""
    stamp, _, percent = line.partition(",")
    try:
        when = datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f")
        return Reading(when.timestamp(), float(percent))
    except ValueError:
        return None


def busy_fraction(readings: list[Reading], start: float, end: float) -> float | None:
    """Mean utilisation (0-1) of the readings from `start` to `end`; None when none fall in it."""
    inside = [r.percent for r in readings if start <= r.time <= end]
    return statistics.fmean(inside) / 100 if inside else None


def job_window(events: list[dict]) -> tuple[float, float]:
    """From the first job_started to the last job_generated, in seconds since the epoch."""
    started = [event_time(e) for e in events if e["event"] == "job_started"]
    generated = [event_time(e) for e in events if e["event"] == "job_generated"]
    return min(started), max(generated)


class Utilisation:
    """GPU 0's utilisation every INTERVAL s while in the `with` block (the lent machines have one GPU)."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self._stop = threading.Event()
        self._smi: subprocess.Popen | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.source = f"NVML (nvidia-ml-py), every {INTERVAL} s"
            self._thread = threading.Thread(target=self._poll, args=(pynvml, handle), daemon=True)
        except Exception as exc:  # noqa: BLE001  no nvidia-ml-py, or NVML would not start (pynvml.NVMLError)
            self._fallback(exc)

    def _fallback(self, reason: Exception) -> None:
        command = ["nvidia-smi", "--id=0", "--query-gpu=timestamp,utilization.gpu", "--format=csv,noheader,nounits",
                   f"-lms={int(INTERVAL * 1000)}"]
        self.source = f"`{' '.join(command)}` (no NVML in Python: {type(reason).__name__})"
        self._smi = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # FileNotFoundError: no driver
        self._thread = threading.Thread(target=self._read_smi, daemon=True)

    def _poll(self, pynvml, handle) -> None:
        while not self._stop.is_set():
            self.readings.append(Reading(time.time(), pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            self._stop.wait(INTERVAL)

    def _read_smi(self) -> None:
        assert self._smi is not None and self._smi.stdout is not None
        for line in self._smi.stdout:
            if (reading := parse_smi_line(line)) is not None:
                self.readings.append(reading)

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._smi is not None:
            self._smi.terminate()
            self._smi.wait()
        self._thread.join()


# -- the run ----------------------------------------------------------------------------------------


def run(args, cuda: bool) -> int:
    from bench.gpu import full_shapes, toy_shapes

    shape = (toy_shapes if args.toy else full_shapes)(args.backend)[0]
    sidecar = {"prompt": "a lighthouse on a cliff, waves crashing, golden hour"}
    if args.toy:  # the tiny model at the full preset would take minutes a job on a CPU
        sidecar.update(width=shape.width, height=shape.height, num_frames=shape.num_frames, steps=shape.steps)
    kind, weights = ("toy", "tiny") if args.toy else ("default job", "full-size")
    print(f"jobs     {args.jobs} x {args.backend} {kind} ({shape.width}x{shape.height}, {shape.num_frames} frames, "
          f"{shape.steps} steps), {weights} random weights, dropped at once; publish_backlog 1, poster and preview on")
    with Scratch("gpu-busy") as scratch:
        rng = np.random.default_rng(0)
        for i in range(args.jobs):  # the preset's aspect ratio: the video is the preset's size, uncropped
            pixels = rng.integers(0, 255, (shape.height, shape.width, 3), dtype=np.uint8)
            PIL.Image.fromarray(pixels).save(scratch.staging / f"job{i:02d}.png")
            (scratch.staging / f"job{i:02d}.json").write_text(json.dumps({**sidecar, "seed": i}))
        startup = RANDOM_WEIGHTS.format(backend=args.backend, toy=args.toy)
        with Daemon(scratch, startup=startup, model=args.backend, observer="inotify", settle_seconds=0.3) as daemon:
            daemon.wait_ready(timeout=1800)  # imports, then the full-size model made on the GPU
            utilisation = Utilisation() if cuda else None
            with utilisation or contextlib.nullcontext():
                for i in range(args.jobs):
                    for suffix in (".png", ".json"):
                        os.rename(scratch.staging / f"job{i:02d}{suffix}", scratch.inbox / f"job{i:02d}{suffix}")
                deadline = time.monotonic() + 300 + 120 * args.jobs
                while len(succeeded := daemon.events("job_succeeded")) < args.jobs:
                    if daemon.events("job_failed") or daemon.proc.poll() is not None or time.monotonic() > deadline:
                        tail = (scratch.root / "daemon-console.log").read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"{len(succeeded)} of {args.jobs} jobs succeeded:\n{tail}")
                    time.sleep(0.2)
            events = daemon.events()
    start, end = job_window(events)
    started = sorted(event_time(e) for e in events if e["event"] == "job_started")
    generated = sorted(event_time(e) for e in events if e["event"] == "job_generated")
    gaps = [s - g for s, g in zip(started[1:], generated[:-1])]
    print(f"jobs     generation median {statistics.median(g - s for s, g in zip(started, generated)):.2f} s; "
          f"generation end -> next start median {statistics.median(gaps) if gaps else 0:.3f} s, "
          f"max {max(gaps, default=0):.3f} s; window {end - start:.1f} s")
    if utilisation is None:
        footer(f"toy smoke test: {args.jobs} of {args.jobs} jobs through the daemon on the CPU; "
               "busy fraction not measured (no GPU)")
        return 0
    fraction = busy_fraction(utilisation.readings, start + PERIOD, end)
    inside = [r.percent for r in utilisation.readings if start + PERIOD <= r.time <= end]
    print(f"sampling {utilisation.source}: {len(inside)} readings in the window, min {min(inside, default=0):.0f} %")
    if fraction is None:
        footer("GPU busy fraction: no utilisation reading fell inside the jobs' window")
        return 1
    verdict = "meets" if fraction >= TARGET else "misses"
    footer(f"GPU busy fraction over {args.jobs} back-to-back default jobs of {args.backend} = {100 * fraction:.1f} % "
           f"({verdict} the target >= {100 * TARGET:.0f} %)")
    return 0 if fraction >= TARGET else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--backend", default=FASTEST, help=f"whose default model and job (default {FASTEST})")
    parser.add_argument("--toy", action="store_true", help="the tiny model at toy size: a smoke test, CPU allowed")
    parser.add_argument("--record", type=Path, metavar="RESULTS_MD", help="append the output to this file")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.toy:
        print("bench.gpu_busy: no CUDA GPU here (torch.cuda.is_available() is False); it measures a GPU's busy "
              "fraction, so it needs one (--toy runs it on the CPU as a smoke test)", file=sys.stderr)
        return 2
    from bench.gpu import record

    def measure() -> int:
        header(f"GPU busy fraction: {args.jobs} {args.backend} {'toy' if args.toy else 'default'} jobs back to "
               "back through i2vd run",
               "bench.gpu_busy")
        return run(args, cuda)

    return record(args.record, "`make gpu-busy`", measure)


if __name__ == "__main__":
    sys.exit(main())
