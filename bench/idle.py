"""Idle cost: CPU seconds `i2vd run` uses in a minute with nothing to do and a full done/ folder.

done/ holds 10,000 files (5,000 earlier pairs) and the inbox is watched by polling, the mode for
network filesystems, where a careless walk of done/ would cost the most. The daemon is started,
left 5 s to finish starting, then its CPU time (user + system, all threads, from /proc) is read at
the start and the end of the window. The worker is not parked: its polling of the database is part
of the idle cost. The main thread's share (the intake loop, rescans) is shown apart from the
other threads' (worker, watcher).

    .venv/bin/python -m bench.idle                 # prints CPU % of one core last; target < 1 %
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench.harness import Daemon, Scratch, footer, header, sample, thread_cpu
from bench.intake_rate import cached_images

TARGET_PERCENT = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--done-files", type=int, default=10_000)
    parser.add_argument("--observer", choices=("polling", "inotify"), default="polling")
    args = parser.parse_args(argv)
    header(f"Idle cost: {args.seconds:g} s idle, {args.done_files} files in done/, {args.observer}", "bench.idle")

    with Scratch("idle") as scratch:
        scratch.done.mkdir()
        image = cached_images(1)[0]
        for i in range(args.done_files // 2):
            os.link(image, scratch.done / f"old{i:05d}.png")
            (scratch.done / f"old{i:05d}.json").write_text(json.dumps({"prompt": "an earlier job"}))
        with Daemon(scratch, observer=args.observer) as daemon:
            daemon.wait_ready()
            time.sleep(5)
            before, threads_before = sample(daemon.pid), thread_cpu(daemon.pid)
            time.sleep(args.seconds)
            after, threads_after = sample(daemon.pid), thread_cpu(daemon.pid)
            settings = daemon.events("daemon_ready")[0]

    used = after.cpu_seconds - before.cpu_seconds
    percent = 100 * used / args.seconds
    main_thread = threads_after[daemon.pid] - threads_before[daemon.pid]
    print(f"daemon   observer {settings['observer']}, poll interval 5 s, rescan 60 s, worker polls the queue "
          f"every 1 s (defaults); RSS {after.rss_bytes / 1e6:.0f} MB")
    print(f"threads  main (intake loop, rescans) {main_thread:.2f} s, others (worker, watcher) "
          f"{used - main_thread:.2f} s")
    verdict = "meets" if percent < TARGET_PERCENT else "misses"
    footer(f"idle cost {used:.2f} CPU s in {args.seconds:g} s = {percent:.2f} % of one core "
           f"({verdict} the target < {TARGET_PERCENT:g} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
