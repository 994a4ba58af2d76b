"""What the daemon benchmarks share: a scratch set-up, `i2vd run` as a subprocess, /proc readings.

The daemon runs as users run it (`python -m daemon.cli.main run`, its own process, settings from I2VD_*
variables) on real folders of the local disk, and the benchmarks drop real files into its inbox.
Only the benchmark's own process imports nothing heavy, so that it steals little CPU from the
daemon it measures.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import PIL.Image

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "bench"  # git-ignored; keeps the tiny model between runs
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# `i2vd run` with the worker thread parked: the daemon loads the model, watches the inbox and queues
# pairs, but runs no job. Intake benchmarks use it so that their figures are not mixed with the tiny
# model's generation, which on this machine competes for the same CPU cores (on a GPU machine the
# worker thread mostly waits for the device).
PARKED_WORKER = (
    "import sys, daemon.worker.runner as w; w.Worker.run = lambda self, stop, wake: stop.wait(); "
    "from daemon.cli.main import main; sys.exit(main())"
)


def tiny_model(backend: str = "i2vgen-xl") -> Path:
    """`backend`'s tiny smoke-test model, built once into build/bench/."""
    from pipeline.tiny import ensure_tiny_model

    return ensure_tiny_model(CACHE / f"tiny-{backend}", backend)


class Scratch:
    """inbox/, outputs/ and state/ in a fresh temporary folder, with `backend`'s tiny model in state/
    (where `I2VD_MODEL=tiny:BACKEND` finds it)."""

    def __init__(self, label: str, backend: str = "i2vgen-xl") -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"i2vd-bench-{label}-"))
        self.inbox, self.outputs, self.state = (self.root / n for n in ("inbox", "outputs", "state"))
        self.staging = self.root / "staging"  # files are prepared here, then renamed into the inbox
        for path in (self.inbox, self.outputs, self.state, self.staging):
            path.mkdir()
        shutil.copytree(tiny_model(backend), self.state / "models" / f"tiny-{backend}")

    @property
    def done(self) -> Path:
        return self.inbox / "done"

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Daemon:
    """`i2vd run` in its own process, with the tiny model and the given I2VD_* settings."""

    def __init__(self, scratch: Scratch, *, startup: str | None = None, env: dict[str, str] | None = None,
                 **settings: object) -> None:
        """`settings` become I2VD_* variables (intake_only=True: a daemon with no worker and no model).

        `startup`: Python code run instead of `python -m daemon.cli` that ends in daemon.cli.main's main()
        (PARKED_WORKER, or a change made in the daemon's process before it starts)."""
        self.log_file = scratch.state / "i2vd.log"
        extra_env = env or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
        env.update({"I2VD_INBOX_DIR": str(scratch.inbox), "I2VD_OUTPUTS_DIR": str(scratch.outputs),
                    "I2VD_STATE_DIR": str(scratch.state), "I2VD_MODEL": "tiny", "HF_HUB_OFFLINE": "1",
                    "I2VD_METRICS_ADDRESS": "127.0.0.1:0"})  # any free port: never another daemon's
        env.update({f"I2VD_{key.upper()}": str(value) for key, value in settings.items()})
        env.update(extra_env)
        code = ["-c", startup] if startup else ["-m", "daemon.cli"]
        self._console = open(scratch.root / "daemon-console.log", "wb")
        self.proc = subprocess.Popen([sys.executable, *code, "run"], env=env, cwd=REPO,
                                     stdout=self._console, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def events(self, name: str | None = None) -> list[dict]:
        """The daemon's log events so far (JSON lines), all or those called `name`."""
        if not self.log_file.exists():
            return []
        events = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if name is None or event.get("event") == name:
                events.append(event)
        return events

    def wait_ready(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.events("daemon_ready"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(self._console.name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the daemon did not become ready:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._console.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def event_time(event: dict) -> float:
    """A log event's timestamp as seconds since the epoch (structlog writes ISO 8601 UTC)."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


@dataclass(frozen=True)
class ProcSample:
    cpu_seconds: float  # user + system, all threads, since the process started
    rss_bytes: int
    peak_rss_bytes: int  # VmHWM: the high-water mark since the process started


def sample(pid: int) -> ProcSample:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    utime, stime = int(fields[11]), int(fields[12])
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    kib = lambda key: int(status[key].split()[0]) * 1024  # noqa: E731
    return ProcSample((utime + stime) / CLOCK_TICKS, kib("VmRSS"), kib("VmHWM"))


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` (the main thread's id is the pid)."""
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # the thread ended
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def write_image(path: Path, rng: np.random.Generator, size: int = 128) -> None:
    """A small picture that is not trivial to compress: a colour gradient with noise (PNG or JPEG)."""
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = rng.uniform(0, 255, 3).astype(np.float32)
    pixels = base + 120 * ramp[None, :, None] * rng.uniform(-1, 1, 3) + 60 * ramp[:, None, None]
    pixels += rng.normal(0, 12, (size, size, 3))
    PIL.Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)


# -- what every benchmark prints ---------------------------------------------------------------


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node()}: {cpu}, {len(os.sched_getaffinity(0))} cores, {mem_gib:.0f} GiB, "
            f"Linux {platform.release()}, Python {platform.python_version()}, torch {version('torch')}")


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def header(title: str, module: str) -> None:
    """Date, machine, command and load: the context RESULTS.md records with each figure."""
    command = " ".join([".venv/bin/python -m", module, *sys.argv[1:]])
    print(f"# {title}")
    print(f"date     {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine  {machine()}")
    print(f"code     {git_revision()}")
    print(f"command  {command}")
    print(f"load     {loadavg()} (1, 5, 15 min) at start", flush=True)


def footer(figure: str) -> None:
    """The load when the run ended, then the figure, last."""
    print(f"load     {loadavg()} at end")
    print(figure, flush=True)
