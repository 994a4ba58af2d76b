"""Intake rate: many image + sidecar pairs dropped at once into a running `i2vd run`.

The pairs (small real PNGs, 128x128 photographs-like gradients with noise, and a sidecar each) are
prepared in a staging folder, then renamed into the inbox as fast as possible, image before
sidecar. Timed from the last rename to the last `job_queued` event, which intake logs once a pair
is in the database as queued and both files are in done/. The daemon runs with inotify. Peak RSS
is the daemon's VmHWM. Two daemons take the same drop, one after the other:

- one-process: the default `i2vd run`, model loaded, its worker parked (see bench/harness.py) so
  that only intake works. Its RSS is mostly torch, diffusers and the model, not intake.
- intake-only: `I2VD_INTAKE_ONLY=true`, which never imports the model stack; another daemon on the
  same database runs the jobs.

    .venv/bin/python -m bench.intake_rate          # prints pairs/s and peak RSS last
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.harness import (
    CACHE,
    PARKED_WORKER,
    Daemon,
    Scratch,
    event_time,
    footer,
    header,
    sample,
    thread_cpu,
    write_image,
)

TARGET_RATE = 500  # pairs/s (issue 21)
MB = 1e6
TARGET_RSS = 150 * MB  # the intake-only daemon's; the one-process daemon's RSS is the model stack's


def cached_images(count: int):
    """`count` distinct PNGs, made once into build/bench/ and hard-linked into each run's staging."""
    folder = CACHE / "images-128"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2000)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.png"
        if not path.exists():
            write_image(path, rng)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--settle", type=float, default=1.0, help="the daemon's settle_seconds")
    parser.add_argument("--folder", default="", help="drop into this subfolder of the inbox (e.g. standard)")
    parser.add_argument("--daemon", choices=("both", "one-process", "intake-only"), default="both",
                        help="which daemon takes the drop (default: one after the other)")
    args = parser.parse_args(argv)
    where = f"inbox/{args.folder}/" if args.folder else "the inbox"
    header(f"Intake rate: {args.pairs} pairs dropped at once into {where}", "bench.intake_rate")
    images = cached_images(args.pairs)
    kinds = ("one-process", "intake-only") if args.daemon == "both" else (args.daemon,)
    results = {kind: drop(images, args, intake_only=kind == "intake-only") for kind in kinds}

    figures = []
    for kind, (rate, peak) in results.items():
        verdict = "meets" if rate >= TARGET_RATE and (peak < TARGET_RSS or kind == "one-process") else "misses"
        figures.append(f"{kind} {rate:.0f} pairs/s, peak RSS {peak / MB:.0f} MB ({verdict})")
    footer(f"intake rate: {'; '.join(figures)}; targets >= {TARGET_RATE} pairs/s, intake-only < {TARGET_RSS / MB:.0f} MB")
    return 0


def drop(images: list[Path], args: argparse.Namespace, *, intake_only: bool) -> tuple[float, int]:
    """Drop every pair into a fresh daemon; (pairs/s once settled, peak RSS in bytes)."""
    if intake_only:
        label, daemon_kind = "intake-only", {"intake_only": True}
        baseline = "no model stack"
    else:
        label, daemon_kind = "one-process", {"startup": PARKED_WORKER}
        baseline = "model loaded, worker parked"
    print(f"## {label} daemon ({baseline})", flush=True)
    pairs = len(images)
    with Scratch("intake") as scratch:
        sidecar = {"prompt": "a lighthouse at dusk", "width": 32, "height": 32, "num_frames": 8, "steps": 10}
        for i, image in enumerate(images):
            os.link(image, scratch.staging / f"p{i:05d}.png")
            (scratch.staging / f"p{i:05d}.json").write_text(json.dumps({**sidecar, "seed": i}))
        inbox, done = scratch.inbox / args.folder, scratch.done / args.folder
        inbox.mkdir(exist_ok=True)
        # Any free metrics port: other daemons and benches on this machine may hold the default one.
        with Daemon(scratch, observer="inotify", settle_seconds=args.settle, metrics_address="127.0.0.1:0",
                    **daemon_kind) as daemon:
            daemon.wait_ready()
            time.sleep(2)  # let start-up settle
            before, threads_before = sample(daemon.pid), thread_cpu(daemon.pid)
            first_drop = time.time()
            for i in range(pairs):
                for suffix in (".png", ".json"):
                    os.rename(scratch.staging / f"p{i:05d}{suffix}", inbox / f"p{i:05d}{suffix}")
            dropped = time.time()
            deadline = time.monotonic() + 60 + pairs
            while not done.is_dir() or sum(1 for _ in os.scandir(done)) < 2 * pairs:
                if daemon.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("intake did not take every pair")
                time.sleep(0.25)
            while len(queued := daemon.events("job_queued")) < pairs:  # the last line may lag a little
                time.sleep(0.1)
            after, threads_after = sample(daemon.pid), thread_cpu(daemon.pid)
        rejected = daemon.events("intake_rejected")

    times = sorted(event_time(e) for e in queued)
    total = times[-1] - dropped
    taking = total - args.settle  # the settle window is a wait, not work
    print(f"drop     {2 * pairs} renames in {dropped - first_drop:.2f} s; settle_seconds {args.settle}")
    print(f"queued   first +{times[0] - dropped:.2f} s, last +{total:.2f} s after the last rename; "
          f"rejected {len(rejected)}")
    print(f"rate     {pairs / total:.0f} pairs/s end to end (settle window included), "
          f"{pairs / taking:.0f} pairs/s once settled")
    used = after.cpu_seconds - before.cpu_seconds
    main_thread = threads_after[daemon.pid] - threads_before[daemon.pid]
    print(f"CPU      {used:.2f} s in the daemon, {1000 * used / pairs:.2f} ms per pair: main thread (intake) "
          f"{main_thread:.2f} s, other threads (file-system events, ...) {used - main_thread:.2f} s")
    added = (after.peak_rss_bytes - before.peak_rss_bytes) / MB
    print(f"RSS      {before.rss_bytes / MB:.0f} MB before the drop ({baseline}, idle), peak "
          f"{after.peak_rss_bytes / MB:.0f} MB; intake added {added:.0f} MB", flush=True)
    return pairs / taking, after.peak_rss_bytes


if __name__ == "__main__":
    sys.exit(main())
