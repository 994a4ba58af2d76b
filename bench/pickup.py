"""Pickup latency: from the last byte of a pair written to the job queued, inotify mode.

Each drop writes the image, then the sidecar, straight into the inbox (open, write, close: what a
plain copy does), and the clock starts when the sidecar is closed. The end is the `job_queued` log
event's timestamp. Drops are one at a time, each after the previous one was queued plus a random
pause, so they fall at random points of the daemon's loop. The worker is parked (see
bench/harness.py): only intake runs. The settle window is the default, 3 s; the target is the
settle window + 0.5 s.

    .venv/bin/python -m bench.pickup               # prints the median and max latency last
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

from bench.harness import Daemon, Scratch, event_time, footer, header
from bench.intake_rate import cached_images

MARGIN = 0.5  # seconds above the settle window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drops", type=int, default=50)
    parser.add_argument("--settle", type=float, default=3.0, help="the daemon's settle_seconds")
    args = parser.parse_args(argv)
    header(f"Pickup latency: {args.drops} drops, inotify, settle_seconds {args.settle:g}", "bench.pickup")
    images = [path.read_bytes() for path in cached_images(args.drops)]
    pause = random.Random(4)

    latencies = []
    with Scratch("pickup") as scratch, \
            Daemon(scratch, parked_worker=True, observer="inotify", settle_seconds=args.settle) as daemon:
        daemon.wait_ready()
        time.sleep(2)
        for i, data in enumerate(images):
            with open(scratch.inbox / f"drop{i:03d}.png", "wb") as fh:
                fh.write(data)
            with open(scratch.inbox / f"drop{i:03d}.json", "w") as fh:
                fh.write(json.dumps({"prompt": "a lighthouse at dusk", "seed": i}))
            written = time.time()
            deadline = time.monotonic() + args.settle + 30
            while len(queued := daemon.events("job_queued")) <= i:
                if daemon.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"drop {i} was not queued")
                time.sleep(0.05)
            latencies.append(event_time(queued[i]) - written)
            time.sleep(pause.uniform(0, 1))

    over = [1000 * (x - args.settle) for x in latencies]
    p90 = statistics.quantiles(over, n=10, method="inclusive")[-1]
    print(f"above the settle window: median {statistics.median(over):.0f} ms, p90 {p90:.0f} ms, "
          f"max {max(over):.0f} ms; slowest drops: " + ", ".join(
              f"#{i} {ms:.0f} ms" for ms, i in sorted(zip(over, range(len(over))), reverse=True)[:3]))
    verdict = "meets" if max(latencies) <= args.settle + MARGIN else "misses"
    footer(f"pickup latency median {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s "
           f"({verdict} the target <= settle + {MARGIN} = {args.settle + MARGIN:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
