"""Intake rate: many image + sidecar pairs dropped at once into a running `i2vd run`.

The pairs (small real PNGs, 128x128 photographs-like gradients with noise, and a sidecar each) are
prepared in a staging folder, then renamed into the inbox as fast as possible, image before
sidecar. Timed from the last rename to the last `job_queued` event, which intake logs once a pair
is in the database as queued and both files are in done/. The daemon runs with inotify and its
worker parked (see bench/harness.py), so only intake works. Peak RSS is the daemon's VmHWM.

    .venv/bin/python -m bench.intake_rate          # prints pairs/s and peak RSS last
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from bench.harness import CACHE, Daemon, Scratch, event_time, footer, header, sample, thread_cpu, write_image

TARGET_RATE = 200  # pairs/s
MB = 1e6
TARGET_RSS = 300 * MB


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
    args = parser.parse_args(argv)
    where = f"inbox/{args.folder}/" if args.folder else "the inbox"
    header(f"Intake rate: {args.pairs} pairs dropped at once into {where}", "bench.intake_rate")
    images = cached_images(args.pairs)

    with Scratch("intake") as scratch:
        sidecar = {"prompt": "a lighthouse at dusk", "width": 32, "height": 32, "num_frames": 8, "steps": 10}
        for i, image in enumerate(images):
            os.link(image, scratch.staging / f"p{i:05d}.png")
            (scratch.staging / f"p{i:05d}.json").write_text(json.dumps({**sidecar, "seed": i}))
        inbox, done = scratch.inbox / args.folder, scratch.done / args.folder
        inbox.mkdir(exist_ok=True)
        with Daemon(scratch, parked_worker=True, observer="inotify", settle_seconds=args.settle) as daemon:
            daemon.wait_ready()
            time.sleep(2)  # let start-up settle
            before, threads_before = sample(daemon.pid), thread_cpu(daemon.pid)
            first_drop = time.time()
            for i in range(args.pairs):
                for suffix in (".png", ".json"):
                    os.rename(scratch.staging / f"p{i:05d}{suffix}", inbox / f"p{i:05d}{suffix}")
            dropped = time.time()
            deadline = time.monotonic() + 60 + args.pairs
            while not done.is_dir() or sum(1 for _ in os.scandir(done)) < 2 * args.pairs:
                if daemon.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("intake did not take every pair")
                time.sleep(0.25)
            while len(queued := daemon.events("job_queued")) < args.pairs:  # the last line may lag a little
                time.sleep(0.1)
            after, threads_after = sample(daemon.pid), thread_cpu(daemon.pid)
        rejected = daemon.events("intake_rejected")

    times = sorted(event_time(e) for e in queued)
    total = times[-1] - dropped
    taking = total - args.settle  # the settle window is a wait, not work
    print(f"drop     {2 * args.pairs} renames in {dropped - first_drop:.2f} s; settle_seconds {args.settle}")
    print(f"queued   first +{times[0] - dropped:.2f} s, last +{total:.2f} s after the last rename; "
          f"rejected {len(rejected)}")
    print(f"rate     {args.pairs / total:.0f} pairs/s end to end (settle window included), "
          f"{args.pairs / taking:.0f} pairs/s once settled")
    used = after.cpu_seconds - before.cpu_seconds
    main_thread = threads_after[daemon.pid] - threads_before[daemon.pid]
    print(f"CPU      {used:.2f} s in the daemon, {1000 * used / args.pairs:.2f} ms per pair: main thread (intake) "
          f"{main_thread:.2f} s, other threads (file-system events, ...) {used - main_thread:.2f} s")
    added = (after.peak_rss_bytes - before.peak_rss_bytes) / MB
    print(f"RSS      {before.rss_bytes / MB:.0f} MB before the drop (model loaded, idle), peak "
          f"{after.peak_rss_bytes / MB:.0f} MB; intake added {added:.0f} MB")
    rate = args.pairs / taking
    verdict = "meets" if rate >= TARGET_RATE and after.peak_rss_bytes < TARGET_RSS else "misses"
    footer(f"intake rate {rate:.0f} pairs/s, peak RSS {after.peak_rss_bytes / MB:.0f} MB "
           f"({verdict} the targets >= {TARGET_RATE} pairs/s, < {TARGET_RSS / MB:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
