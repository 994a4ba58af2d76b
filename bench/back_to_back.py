"""Back-to-back jobs: the gap between one job's generation end and the next job's generation start.

A tiny model makes full-size videos (Wan's tiny model at 1280x704, 121 frames, one torch thread: a
stand-in for a GPU that makes such a clip in seconds) and the daemon runs JOBS of them
dropped at once, twice: publishing in its own thread while the next job generates
(`publish_backlog` 1, the default), and one job at a time (`publish_backlog` 0, the worker before
pipelining). The gaps come from the daemon's log: `job_generated` of one job to `job_started` of
the next. With one job at a time each gap is that job's whole publish (encode, verify, poster,
preview, metadata, fsync); pipelined, it is a claim and a few database rows.

Wan's tiny model is the one that makes such videos in minutes on one thread: its VAE compresses 16x
and its transformer patches 2x2, about 27,000 tokens at 1280x704x121. LTX-Video's tiny VAE compresses
4x with patch 1, about 1.7 million tokens: more than 5 minutes without finishing its first step.

    .venv/bin/python -m bench.back_to_back [--jobs 3] [--size 1280x704] [--frames 121]   # target <= 0.05 s
    .venv/bin/python -m bench.back_to_back --backend ltx --jobs 4 --size 256x160 --frames 25
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from bench.harness import Daemon, Scratch, event_time, footer, header, write_image

TARGET = 0.05  # seconds, median gap


def run(args, backlog: int) -> dict:
    """One daemon, every job dropped at once: the gaps, and the publish time of each job."""
    width, height = (int(v) for v in args.size.split("x"))
    with Scratch("back-to-back", args.backend) as scratch:
        rng = np.random.default_rng(21)
        for i in range(args.jobs):
            write_image(scratch.staging / f"job{i:02d}.png", rng)
            (scratch.staging / f"job{i:02d}.json").write_text(json.dumps({
                "prompt": "a lighthouse at dusk", "width": width, "height": height, "num_frames": args.frames,
                "steps": args.steps, "fps": 24, "seed": i}))
        env = {"OMP_NUM_THREADS": "1"}
        with Daemon(scratch, env=env, model=f"tiny:{args.backend}", observer="inotify", settle_seconds=0.3,
                    publish_backlog=backlog, poster=True, preview=True) as daemon:
            daemon.wait_ready()
            for i in range(args.jobs):
                for suffix in (".png", ".json"):
                    os.rename(scratch.staging / f"job{i:02d}{suffix}", scratch.inbox / f"job{i:02d}{suffix}")
            deadline = time.monotonic() + 600 * args.jobs
            while len(daemon.events("job_succeeded")) < args.jobs:
                if daemon.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not publish every video")
                time.sleep(0.2)
            started = sorted(event_time(e) for e in daemon.events("job_started"))
            generated = sorted(event_time(e) for e in daemon.events("job_generated"))
        documents = [p for p in scratch.outputs.glob("*.json") if not p.name.startswith(".")]
        encoding = [json.loads(p.read_text())["timings"]["encoding_seconds"] for p in documents]
    return {"gaps": [s - g for s, g in zip(started[1:], generated[:-1])], "encoding": encoding,
            "generation": [g - s for s, g in zip(started, generated)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("wan", "ltx"), default="wan", help="whose tiny model")
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--size", default="1280x704", help="WIDTHxHEIGHT of the videos")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)

    header(f"Back-to-back: generation end -> next generation start, {args.jobs} jobs", "bench.back_to_back")
    print(f"jobs     {args.jobs} x {args.size}, {args.frames} frames, {args.steps} steps, tiny {args.backend}, "
          "CPU, 1 torch thread, poster and preview on; dropped at once")
    results = {}
    for label, backlog in (("one at a time", 0), ("pipelined", 1)):
        r = results[label] = run(args, backlog)
        print(f"{label:14s} gaps median {statistics.median(r['gaps']):.3f} s, max {max(r['gaps']):.3f} s   "
              f"generation median {statistics.median(r['generation']):.2f} s   "
              f"publish (encoding_seconds) median {statistics.median(r['encoding']):.2f} s", flush=True)
    gap = statistics.median(results["pipelined"]["gaps"])
    verdict = "meets" if gap <= TARGET else "misses"
    footer(f"median gap between generations, pipelined = {gap:.3f} s ({verdict} the target <= {TARGET} s; "
           f"one at a time: {statistics.median(results['one at a time']['gaps']):.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
