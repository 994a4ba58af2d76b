"""Web page and API at scale: every page and list with 100,000 jobs in the database (retention off).

The jobs (90 % succeeded, the rest failed, cancelled, queued or running; three models; prompts drawn
from a vocabulary) and three events each are inserted straight into a fresh SQLite database, then
`i2vd web` is started as its own process, as users run it. Each URL is fetched once to warm up,
then `--rounds` times; the median and the slowest are printed, and the web process's CPU time per
request (from /proc, so a busy machine inflates it less than the wall time), with its RSS (now and
peak) at the end.

    .venv/bin/python -m bench.web                  # prints the slowest median last; target <= 100 ms
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import requests

from bench.harness import REPO, footer, header, sample

TARGET_MS = 100.0
WORDS = ("waves", "beach", "sunset", "harbour", "lighthouse", "storm", "forest", "city", "night", "rain",
         "boats", "cliffs", "snow", "desert", "river", "mountain", "clouds", "birds", "market", "train")
MODELS = ("i2vgen-xl", "ltx", "wan")


def fill(database_url: str, jobs: int, seed: int = 1) -> None:
    """`jobs` finished and waiting jobs, and three events each, as years of use would leave them."""
    from sqlalchemy import insert

    from daemon.db.engine import make_engine, session_factory, upgrade
    from daemon.db.tables import Event, Job, JobState, utcnow

    engine = make_engine(database_url)
    upgrade(engine)
    rng = random.Random(seed)
    start = utcnow() - timedelta(days=365)
    with session_factory(engine)() as s:
        for first in range(0, jobs, 10_000):
            rows, events = [], []
            for i in range(first, min(first + 10_000, jobs)):
                roll = rng.random()
                state = (JobState.RUNNING if i >= jobs - 2 else JobState.QUEUED if i >= jobs - 200
                         else JobState.FAILED if roll < 0.06 else JobState.CANCELLED if roll < 0.08
                         else JobState.SUCCEEDED)
                made = start + timedelta(seconds=i * 300)
                prompt = " ".join(rng.choice(WORDS) for _ in range(6)) + f" #{i}"
                rows.append({"state": state, "priority": 0, "idempotency_key": f"bench-{i}",
                             "params": {"version": 2, "prompt": prompt, "width": 512, "height": 512,
                                        "num_frames": 16, "seed": i},
                             "model": MODELS[i % len(MODELS)], "output_stem": f"clip{i}", "output_subdir": "",
                             "source_image": f"/in/clip{i}.png", "image_path": f"/done/clip{i}.png",
                             "created_at": made, "cancel_requested": False,
                             "started_at": made if state != JobState.QUEUED else None,
                             "finished_at": made + timedelta(seconds=60) if state in (
                                 JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED) else None,
                             "phase": "denoising" if state == JobState.RUNNING else None,
                             "progress_step": 3 if state == JobState.RUNNING else None,
                             "progress_total": 50 if state == JobState.RUNNING else None,
                             "output_path": f"/out/clip{i}.mp4" if state == JobState.SUCCEEDED else None,
                             "metadata_path": f"/out/clip{i}.json" if state == JobState.SUCCEEDED else None,
                             "error_code": "generation_error" if state == JobState.FAILED else None,
                             "error_message": "CUDA error" if state == JobState.FAILED else None})
                for kind in ("job.queued", "job.started", f"job.{state.value}"):
                    events.append({"type": kind, "job_id": i + 1, "payload": {}, "created_at": made})
            s.execute(insert(Job), rows)
            s.execute(insert(Event), events)
            s.commit()
    engine.dispose()


def urls(jobs: int) -> dict[str, str]:
    some = jobs // 2
    return {
        "queue page": "/", "queue fragment": "/fragments/queue",
        "results (succeeded)": "/results", "results, last page": "/results?page=100000",
        "results, failed": "/results?state=failed", "results, all states": "/results?state=",
        "results, search": "/results?q=lighthouse+storm", "results, search, no hit": "/results?q=zebra",
        "results, model": "/results?state=&model=ltx",
        "job page": f"/jobs/{some}", "job fragment": f"/fragments/jobs/{some}",
        "API jobs": "/api/jobs", "API jobs, page 2000": "/api/jobs?page=2000",
        "API jobs, search": "/api/jobs?q=harbour", "API jobs, search, rare": f"/api/jobs?q=%23{some}",
        "API jobs, state queued": "/api/jobs?state=queued", "API jobs, model": "/api/jobs?model=wan",
        "API jobs, search+state+model": "/api/jobs?q=beach&state=failed&model=ltx",
        "API job": f"/api/jobs/{some}", "API workers": "/api/workers",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    header(f"Web at scale: {args.jobs} jobs, {args.rounds} rounds per URL", "bench.web")
    root = Path(tempfile.mkdtemp(prefix="i2vd-bench-web-"))
    try:
        dirs = {name: root / name for name in ("inbox", "outputs", "state")}
        for path in dirs.values():
            path.mkdir()
        database_url = f"sqlite:///{dirs['state'] / 'i2vd.sqlite3'}"
        started = time.monotonic()
        fill(database_url, args.jobs)
        print(f"filled   {args.jobs} jobs, {3 * args.jobs} events in {time.monotonic() - started:.0f} s", flush=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
        env.update({"I2VD_INBOX_DIR": str(dirs["inbox"]), "I2VD_OUTPUTS_DIR": str(dirs["outputs"]),
                    "I2VD_STATE_DIR": str(dirs["state"]), "I2VD_MODEL": "tiny", "PYTHONPATH": str(REPO)})
        log = open(root / "web.log", "wb")
        web = subprocess.Popen([sys.executable, "-m", "daemon.cli", "web", "--address", "127.0.0.1:0"], env=env,
                               cwd=root, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = None
            while url is None and web.poll() is None:
                time.sleep(0.2)
                found = re.search(r"serving (http://\S+)", (root / "web.log").read_text(errors="replace"))
                url = found.group(1).rstrip("/") if found else None
            if url is None:
                print((root / "web.log").read_text(errors="replace"), file=sys.stderr)
                return 1
            print(f"{'':32} {'median ms':>10} {'max ms':>8} {'CPU ms/request':>15}")
            medians = {}
            http = requests.Session()
            for name, path in urls(args.jobs).items():
                assert http.get(url + path, timeout=60).status_code == 200, path
                times = []
                cpu_before = sample(web.pid).cpu_seconds
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    http.get(url + path, timeout=60).raise_for_status()
                    times.append((time.perf_counter() - t) * 1000)
                cpu_ms = (sample(web.pid).cpu_seconds - cpu_before) * 1000 / args.rounds
                medians[name] = statistics.median(times)
                print(f"{name:32} {medians[name]:10.1f} {max(times):8.1f} {cpu_ms:15.1f}", flush=True)
            proc = sample(web.pid)
            print(f"web RSS  {proc.rss_bytes / 2**20:.0f} MB now, {proc.peak_rss_bytes / 2**20:.0f} MB peak")
        finally:
            web.terminate()
            web.wait(30)
            log.close()
        slowest = max(medians, key=medians.get)
        footer(f"slowest median: {medians[slowest]:.1f} ms ({slowest}); target <= {TARGET_MS:.0f} ms "
               f"{'met' if medians[slowest] <= TARGET_MS else 'NOT met'}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
