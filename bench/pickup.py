"""Pickup latency: from a pair's arrival to its job queued, inotify mode, two ways of arriving.

- `rename`: each file is written under a temporary name in the inbox, then renamed into place (what
  rsync, `i2vd submit` and most scripts do). Complete by construction: taken at once. The clock
  starts at the second rename. Target: median <= 0.2 s.
- `in-place`: each file is written straight into the inbox (open, write, close: what a plain copy
  does), so readiness is the stat settle window. The clock starts when the sidecar is closed.
  Target: max <= settle + 0.5 s.

The end is the `job_queued` log event's timestamp. Drops alternate between the two ways, one at a
time, each after the previous one was queued plus a random pause, so they fall at random points of
the daemon's loop. The worker is parked (see bench/harness.py): only intake runs. The settle
window is the default, 3 s.

    .venv/bin/python -m bench.pickup [--drops 50]   # per way; prints both figures last
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

from bench.harness import PARKED_WORKER, Daemon, Scratch, event_time, footer, header
from bench.intake_rate import cached_images

RENAME_TARGET = 0.2  # seconds, median
MARGIN = 0.5  # seconds above the settle window, max


def drop_renamed(inbox, name: str, image: bytes, sidecar: str) -> float:
    for suffix, data in ((".png", image), (".json", sidecar.encode())):
        with open(inbox / f".{name}{suffix}.tmp", "wb") as fh:
            fh.write(data)
    os.rename(inbox / f".{name}.png.tmp", inbox / f"{name}.png")
    os.rename(inbox / f".{name}.json.tmp", inbox / f"{name}.json")
    return time.time()


def drop_in_place(inbox, name: str, image: bytes, sidecar: str) -> float:
    with open(inbox / f"{name}.png", "wb") as fh:
        fh.write(image)
    with open(inbox / f"{name}.json", "w") as fh:
        fh.write(sidecar)
    return time.time()


WAYS = {"rename": drop_renamed, "in-place": drop_in_place}


def summary(latencies: list[float]) -> str:
    ms = [1000 * x for x in latencies]
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[-1]
    return f"median {statistics.median(ms):.0f} ms, p90 {p90:.0f} ms, max {max(ms):.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drops", type=int, default=50, help="drops per way of arriving")
    parser.add_argument("--settle", type=float, default=3.0, help="the daemon's settle_seconds")
    args = parser.parse_args(argv)
    header(f"Pickup latency: {args.drops} drops renamed into place and {args.drops} written in place, "
           f"inotify, settle_seconds {args.settle:g}", "bench.pickup")
    images = [path.read_bytes() for path in cached_images(2 * args.drops)]
    pause = random.Random(4)

    latencies: dict[str, list[float]] = {way: [] for way in WAYS}
    with Scratch("pickup") as scratch, \
            Daemon(scratch, startup=PARKED_WORKER, observer="inotify", settle_seconds=args.settle,
                   metrics_address="127.0.0.1:0") as daemon:  # any free port: the default may be taken
        daemon.wait_ready()
        time.sleep(2)
        for i, data in enumerate(images):
            way = list(WAYS)[i % 2]
            sidecar = json.dumps({"prompt": "a lighthouse at dusk", "seed": i})
            arrived = WAYS[way](scratch.inbox, f"drop{i:03d}", data, sidecar)
            deadline = time.monotonic() + args.settle + 30
            while len(queued := daemon.events("job_queued")) <= i:
                if daemon.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"drop {i} was not queued")
                time.sleep(0.01)
            latencies[way].append(event_time(queued[i]) - arrived)
            time.sleep(pause.uniform(0, 1))

    renamed, in_place = latencies["rename"], latencies["in-place"]
    print(f"rename    {summary(renamed)}")
    print(f"in-place  {summary(in_place)} (settle window {1000 * args.settle:.0f} ms)")
    rename_ok = statistics.median(renamed) <= RENAME_TARGET
    in_place_ok = max(in_place) <= args.settle + MARGIN
    footer(f"pickup latency: renamed median {statistics.median(renamed):.3f} s, max {max(renamed):.3f} s "
           f"({'meets' if rename_ok else 'misses'} <= {RENAME_TARGET} s median); written in place median "
           f"{statistics.median(in_place):.3f} s, max {max(in_place):.3f} s "
           f"({'meets' if in_place_ok else 'misses'} <= settle + {MARGIN} = {args.settle + MARGIN:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
