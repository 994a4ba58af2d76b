"""Throughput of 1, 2 and 4 i2vd daemons sharing one inbox and one PostgreSQL database.

Each run gets a fresh database and fresh folders, starts N `i2vd run` processes with the tiny model
on the CPU (one torch thread each: a "CPU worker" stands in for a GPU), waits until all are ready,
drops the same tiny job (32x32, 8 frames, 10 steps) JOBS times, and times the first drop to the
last succeeded job. Prints jobs/minute per worker count, the scaling ratio against the first
count, the median seconds one job took, how many CPU cores the daemons had between them (their
CPU time over the wall time), and jobs/minute per core used: when that stays flat while the
cores used stop growing with the workers, the machine, not the queue, is the limit. It first
measures how many cores that many busy processes get: on a shared machine, fewer than it has.

    .venv/bin/python bench/throughput.py [--workers 1 2 4] [--jobs 16]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Record the figures in bench/RESULTS.md with the date, the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from daemon.db.engine import make_engine, session_factory, upgrade
from daemon.db.tables import JobState
from daemon.jobs.queue import JobQueue
from pipeline.tiny import ensure_tiny_model

JOB = {"prompt": "bench", "width": 32, "height": 32, "num_frames": 8, "steps": 10, "fps": 8, "seed": 1}


@dataclass(frozen=True)
class Result:
    seconds: float  # first drop to last success
    job_seconds: float  # median, one attempt's start to finish
    cpu_seconds: float  # all daemons together, over the same span


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL database to create the throwaway benchmark databases from")
    args = parser.parse_args()

    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"CPU cores available to {max(args.workers)} busy processes: {available_cores(max(args.workers)):.2f}")
    with tempfile.TemporaryDirectory(prefix="i2vd-bench-") as tmp:
        state = Path(tmp) / "state"
        ensure_tiny_model(state / "models" / "tiny-i2vgen-xl")  # built once, shared by every run
        results = {}
        for workers in args.workers:
            results[workers] = r = run(Path(tmp) / f"run{workers}", state, args.admin_url, workers, args.jobs)
            print(f"{workers} worker(s): {args.jobs} jobs in {r.seconds:.1f} s", flush=True)
    base = args.jobs / results[args.workers[0]].seconds
    print(f"\n{'workers':>7}  {'jobs/min':>8}  {'scaling':>7}  {'s/job':>6}  {'CPU cores used':>14}  "
          f"{'jobs/min per core':>17}")
    for workers, r in results.items():
        rate, cores = args.jobs / r.seconds, r.cpu_seconds / r.seconds
        print(f"{workers:>7}  {rate * 60:>8.1f}  {rate / base:>6.2f}x  {r.job_seconds:>6.1f}  {cores:>14.2f}  "
              f"{rate * 60 / cores:>17.1f}")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


def run(root: Path, state: Path, admin_url: str, workers: int, jobs: int) -> Result:
    """`jobs` tiny jobs through `workers` daemons, timed from the first drop to the last success."""
    admin = make_url(admin_url)
    name = f"i2vd_bench_{secrets.token_hex(4)}"
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = admin.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
        engine = make_engine(url)
        daemons: list[subprocess.Popen] = []
        try:
            upgrade(engine)  # once, before the daemons race to do it
            queue = JobQueue(session_factory(engine))
            inbox, outputs = root / "inbox", root / "outputs"
            for n in range(workers):
                daemons.append(start_daemon(root / f"daemon{n}", inbox, outputs, state, url, n))
            for n in range(workers):
                wait_for_log(root / f"daemon{n}" / "i2vd.log", "daemon_ready", daemons[n])
            cpu_before, started = cpu_seconds(daemons), time.monotonic()
            for i in range(jobs):
                drop(inbox, f"bench{i:03}")
            while queue.counts()[JobState.SUCCEEDED] < jobs:
                if queue.counts()[JobState.FAILED]:
                    raise SystemExit("a benchmark job failed; see the daemon logs under " + str(root))
                time.sleep(0.2)
            seconds, cpu = time.monotonic() - started, cpu_seconds(daemons) - cpu_before
            attempts = [a for job in queue.recent(jobs) for a in job.attempts]
            job_seconds = statistics.median((a.finished_at - a.started_at).total_seconds() for a in attempts)
            return Result(seconds, job_seconds, cpu)
        finally:
            for daemon in daemons:
                daemon.send_signal(signal.SIGTERM)
            for daemon in daemons:
                daemon.wait(60)
            engine.dispose()
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def available_cores(processes: int, seconds: float = 3.0) -> float:
    with multiprocessing.Pool(processes) as pool:
        started = time.monotonic()
        cpu = sum(pool.map(busy_loop, [seconds] * processes))
        return cpu / (time.monotonic() - started)


def busy_loop(seconds: float) -> float:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return time.process_time()


def cpu_seconds(daemons: list[subprocess.Popen]) -> float:
    """User + system CPU time of the daemons and their finished children so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for daemon in daemons:
        fields = Path(f"/proc/{daemon.pid}/stat").read_text().rpartition(")")[2].split()
        total += sum(int(f) for f in fields[11:15]) / ticks  # utime, stime, and of waited children (ffmpeg)
    return total


def start_daemon(workdir: Path, inbox: Path, outputs: Path, state: Path, url: str, n: int) -> subprocess.Popen:
    workdir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
    env.update({
        "I2VD_INBOX_DIR": str(inbox), "I2VD_OUTPUTS_DIR": str(outputs), "I2VD_STATE_DIR": str(state),
        "I2VD_DATABASE_URL": url, "I2VD_LOG_FILE": str(workdir / "i2vd.log"), "I2VD_MODEL": "tiny",
        "I2VD_DEVICE": "cpu", "I2VD_SETTLE_SECONDS": "0.3", "CUDA_VISIBLE_DEVICES": str(n),
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
    })
    with open(workdir / "stderr.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "daemon.cli", "run"], cwd=workdir, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def wait_for_log(log_file: Path, event: str, daemon: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"a daemon exited early; see {log_file.parent / 'stderr.log'}")
        if log_file.exists() and any(json.loads(line)["event"] == event
                                     for line in log_file.read_text().splitlines()):
            return
        time.sleep(0.2)
    raise SystemExit(f"no {event} in {log_file} after {timeout:g} s")


def drop(inbox: Path, stem: str) -> None:
    """An image and its sidecar, written under hidden names and renamed into place."""
    inbox.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("RGB", (48, 40), (200, 120, 40)).save(inbox / f".{stem}.png.tmp", format="PNG")
    (inbox / f".{stem}.json.tmp").write_text(json.dumps(JOB))
    os.rename(inbox / f".{stem}.png.tmp", inbox / f"{stem}.png")
    os.rename(inbox / f".{stem}.json.tmp", inbox / f"{stem}.json")


if __name__ == "__main__":
    sys.exit(main())
