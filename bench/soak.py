"""Soak: hundreds of tiny jobs through one pipelined daemon; its RSS, open fds and threads stay flat.

One `i2vd run` (publish_backlog 1, the pipelined default; poster and preview on) serves the tiny
model's `preview` preset (32x32, 9 frames, 2 steps: the smallest job that still goes through every
stage: intake, claim, generation, the publisher thread's encode, verify, poster, preview, metadata,
done/ moves, events). Pairs arrive in batches of --batch whenever no more than one batch is still
waiting, so the worker never runs dry, yet the daemon is in the same state at every sample (a batch
queued, one job generating, one publishing) rather than draining one burst of 500: samples compare
like with like, and intake's one-off cost of a giant burst stays out of the curve.

Every --every succeeded jobs, while the jobs go on, it reads the daemon's VmRSS and Threads
(/proc/PID/status) and counts /proc/PID/fd every 0.02 s until three more jobs succeeded (half a second
at least), and keeps the floor and the peak. A job in flight holds frames, ffmpeg's pipes and its
heartbeat thread for a moment; what jobs leave behind raises the floor. The daemon's malloc returns
large blocks at once (MALLOC), so the RSS floor is what it holds, not what glibc chose to keep.
Flat means, after the first --warmup jobs (the first ones start tqdm's monitor thread and torch's
own threads): fd and thread floors within FD_SPREAD and THREAD_SPREAD (one leaked per job would be
hundreds), and the RSS floor growing less than TARGET_RSS MB per 100 jobs by a linear fit over the
post-warm-up samples.

    .venv/bin/python -m bench.soak [--jobs 500] [--batch 25] [--backend ltx]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness import Daemon, Scratch, footer, header, write_image

# 10 KB a job: a third of one tiny job's frames (32x32x9 RGB, 27 KB), so keeping any job's frames, or
# anything that size, fails; 2,000 jobs drifted 0.2 MB per 100, mostly SQLite's page cache (bench/RESULTS.md, 10).
TARGET_RSS = 1.0  # MB per 100 jobs
# The floors' max - min. The fd floor moves by whole SQLite connections (database + WAL): SQLAlchemy's pool
# keeps one more for reuse the first time threads overlap on it (at most 5); 4 allows two such steps.
FD_SPREAD = 4
THREAD_SPREAD = 2  # each job in flight (generating, handed over) renews its lease from its own thread
# glibc's malloc with a fixed mmap threshold: blocks of 128 KiB and more go back to the system when freed.
# By default the threshold follows the largest block freed, after which a job's transient buffers may stay
# resident for hundreds of jobs and then go: a floor 15 MB up or down that says nothing about leaks.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
# A sample reads /proc every READ_EVERY s until WINDOW_JOBS more jobs succeeded, and for WINDOW s at least:
# however slow the jobs (a busy machine), it spans moments between them.
READ_EVERY = 0.02
WINDOW_JOBS = 3
WINDOW = 0.5


class LogTail:
    """The daemon's JSON-lines log read as it grows: each call returns the events written since the last.

    Reading the whole log at every poll would cost this process more CPU with every job, taken from the
    two cores the daemon runs on."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def new_events(self) -> list[dict]:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                data = log.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def resources(pid: int) -> tuple[int, int, int]:
    """(RSS bytes, open fds, threads) of process `pid` now."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) * 1024, len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"])


def floor_and_peak(readings: list[tuple[int, int, int]]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The lowest and the highest of each of RSS, fds and threads over `readings`."""
    columns = list(zip(*readings))
    return tuple(map(min, columns)), tuple(map(max, columns))


@dataclass(frozen=True)
class Sample:
    jobs: int  # the sample's mark: at least this many succeeded when its window opened
    seconds: float  # since the first pairs were dropped
    low: tuple[int, int, int]  # (RSS bytes, fds, threads), the floor over the sampling window
    high: tuple[int, int, int]  # the peak over it


def soak(args) -> list[Sample]:
    """Run the jobs; a sample at start and every --every succeeded jobs."""
    with Scratch("soak", args.backend) as scratch:
        rng = np.random.default_rng(21)
        # One batch more than --jobs: the last sample, too, has a batch waiting behind it (and its window jobs).
        names = [f"soak{i:04d}" for i in range(args.jobs + args.batch)]
        for i, name in enumerate(names):
            write_image(scratch.staging / f"{name}.png", rng, size=64)
            (scratch.staging / f"{name}.json").write_text(json.dumps(
                {"prompt": "a lighthouse at dusk", "preset": "preview", "seed": i}))
        env = {"OMP_NUM_THREADS": "1", **MALLOC}
        with Daemon(scratch, env=env, model=f"tiny:{args.backend}", observer="inotify", settle_seconds=0.3,
                    publish_backlog=1, poster=True, preview=True, log_max_bytes=0) as daemon:
            daemon.wait_ready()
            tail = LogTail(daemon.log_file)
            idle = []
            for _ in range(round(WINDOW / READ_EVERY)):
                idle.append(resources(daemon.pid))
                time.sleep(READ_EVERY)
            samples = [Sample(0, 0.0, *floor_and_peak(idle))]
            print(row(samples[0]), flush=True)
            started = time.monotonic()
            dropped = succeeded = 0
            window: tuple[int, float, list] | None = None  # (jobs, seconds, readings) of the sample being taken
            while len(samples) <= args.jobs // args.every:
                if dropped < len(names) and dropped - succeeded <= args.batch:
                    for name in names[dropped:dropped + args.batch]:
                        for suffix in (".png", ".json"):  # image first: the pair is complete with its sidecar
                            os.rename(scratch.staging / f"{name}{suffix}", scratch.inbox / f"{name}{suffix}")
                    dropped += args.batch
                for event in tail.new_events():
                    if event["event"] in ("job_failed", "intake_rejected", "job_cancelled"):
                        raise RuntimeError(f"a job did not succeed: {event}")
                    succeeded += event["event"] == "job_succeeded"
                if window is None and succeeded >= len(samples) * args.every:
                    window = (len(samples) * args.every, time.monotonic() - started, [])
                if window is not None:  # the daemon goes on with the next jobs meanwhile
                    jobs, seconds, readings = window
                    readings.append(resources(daemon.pid))
                    # Jobs faster than a window may all be done: then no more will succeed.
                    if succeeded >= min(jobs + WINDOW_JOBS, len(names)) and len(readings) * READ_EVERY >= WINDOW:
                        samples.append(Sample(jobs, seconds, *floor_and_peak(readings)))
                        print(row(samples[-1]), flush=True)
                        window = None
                if daemon.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({daemon.proc.returncode}) after {succeeded} jobs")
                time.sleep(READ_EVERY if window else 0.1)
    return samples


def row(sample: Sample) -> str:
    (rss, fds, threads), (peak_rss, peak_fds, peak_threads) = sample.low, sample.high
    return (f"{sample.jobs:>6}{sample.seconds:>9.1f}{rss / 2**20:>10.1f}{peak_rss / 2**20:>10.1f}"
            f"{fds:>6}{peak_fds:>6}{threads:>9}{peak_threads:>6}")


def verdict(samples: list[Sample], warmup: int) -> tuple[bool, str]:
    """Whether the floors after warm-up are flat, and the figures that say so."""
    after = [s for s in samples if s.jobs >= warmup]
    rss_mb = np.array([s.low[0] for s in after], dtype=float) / 2**20
    slope = float(np.polyfit([s.jobs for s in after], rss_mb, 1)[0]) * 100  # MB per 100 jobs
    fds, threads = ([s.low[i] for s in after] for i in (1, 2))
    flat = slope < TARGET_RSS and max(fds) - min(fds) <= FD_SPREAD and max(threads) - min(threads) <= THREAD_SPREAD
    return flat, (f"RSS floor {slope:+.2f} MB per 100 jobs by a linear fit (target < {TARGET_RSS:g}; "
                  f"{rss_mb.min():.1f}-{rss_mb.max():.1f} MB), fds floor {min(fds)}-{max(fds)} (spread <= "
                  f"{FD_SPREAD}), threads floor {min(threads)}-{max(threads)} (spread <= {THREAD_SPREAD})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--batch", type=int, default=25, help="pairs dropped at once")
    parser.add_argument("--every", type=int, default=25, help="sample every N succeeded jobs")
    parser.add_argument("--warmup", type=int, default=50, help="jobs left out of the verdict")
    parser.add_argument("--backend", default="ltx", help="the tiny model's backend (ltx: the fastest tiny job)")
    args = parser.parse_args(argv)
    if args.jobs < args.warmup + 2 * args.every:
        parser.error("--jobs must leave at least two samples after --warmup")

    header(f"Soak: {args.jobs} jobs through one pipelined daemon, RSS, fds and threads", "bench.soak")
    print(f"jobs     {args.jobs} x tiny {args.backend} preview preset (32x32, 9 frames, 2 steps), CPU, 1 torch "
          f"thread, publish_backlog 1, poster and preview on; {args.batch} pairs dropped whenever at most "
          f"{args.batch} wait")
    print(f"sampling every {args.every} succeeded jobs: the floor (low) and peak (high) of readings every "
          f"{READ_EVERY} s until {WINDOW_JOBS} more jobs succeeded ({WINDOW} s at least), while the jobs go on")
    print(f"{'jobs':>6}{'s':>9}{'RSS MB':>10}{'high':>10}{'fds':>6}{'high':>6}{'threads':>9}{'high':>6}", flush=True)
    samples = soak(args)
    flat, figures = verdict(samples, args.warmup)
    seconds = samples[-1].seconds
    print(f"rate     {args.jobs / seconds * 60:.0f} jobs/min ({seconds:.0f} s)")
    footer(f"after {args.warmup} jobs of warm-up: {figures}: {'flat' if flat else 'NOT flat'}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
