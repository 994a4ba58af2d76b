"""The daemon process: wires settings, database, model, intake, watcher and worker together."""

from __future__ import annotations

import signal
import threading
import time
from datetime import timedelta

from daemon import __version__
from daemon.db import make_engine, session_factory, sqlite_path, upgrade
from daemon.intake import Intake
from daemon.logs import get_logger
from daemon.queue import JobQueue
from daemon.recovery import recover_jobs, sweep_outputs
from daemon.settings import Settings
from daemon.watcher import choose_mode, filesystem_type, needs_polling, start_observer
from daemon.worker import Worker
from daemon.workers import WorkerRegistry, this_process
from pipeline.generate import VideoGenerator
from pipeline.loader import load_pipeline, resolve_placement
from pipeline.tiny import ensure_tiny_model

log = get_logger("i2vd.service")

MAX_LOOP_SLEEP = 1.0  # seconds; the main loop never sleeps longer (signals, rescans, recovery)
RECOVERY_INTERVAL = 15.0


def load_generator(settings: Settings) -> VideoGenerator:
    """Load the configured model once; the tiny smoke-test model is built on first use."""
    placement = resolve_placement(settings.device, settings.dtype)
    model = settings.model
    if settings.is_tiny_model:
        model = str(ensure_tiny_model(settings.state_dir / "models" / "tiny-i2vgen-xl"))
        log.warning("smoke_test_model", detail="I2VD_MODEL=tiny: a tiny random model; videos are noise")
    elif placement.device.type == "cpu":
        log.warning("cpu_generation_slow", detail="no CUDA GPU: generation with a real model on CPU takes "
                    "hours per video; set I2VD_DEVICE=cuda on a GPU machine")
    log.info("model_loading", model=settings.model, device=str(placement.device),
             dtype=str(placement.dtype).removeprefix("torch."))
    started = time.monotonic()
    generator = VideoGenerator(load_pipeline(model, placement), placement)
    log.info("model_loaded", model=settings.model, seconds=round(time.monotonic() - started, 2))
    return generator


class Daemon:
    """One i2vd process: an intake loop in the main thread and one worker thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.loop_wake = threading.Event()
        self.worker_wake = threading.Event()

    def request_stop(self, signum: int | None = None, _frame=None) -> None:
        if not self.stop.is_set():
            log.info("daemon_stopping", signal=signal.Signals(signum).name if signum else None)
        self.stop.set()
        self.loop_wake.set()
        self.worker_wake.set()

    def run(self) -> int:
        s = self.settings
        for directory in (s.inbox_dir, s.outputs_dir, s.state_dir, s.done_dir, s.failed_dir):
            directory.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        log.info("daemon_starting", version=__version__, inbox=str(s.inbox_dir), outputs=str(s.outputs_dir),
                 database=_redact(s.database_url))

        db_file = sqlite_path(s.database_url)
        if db_file is not None and needs_polling(fs := filesystem_type(db_file.parent)):
            log.warning("database_on_network_fs", path=str(db_file), filesystem=fs,
                        detail="SQLite's locking is not safe on network filesystems; keep the database "
                               "on local disk, and use PostgreSQL to share one inbox between hosts")
        engine = make_engine(s.database_url)
        upgrade(engine)
        queue = JobQueue(session_factory(engine))
        generator = load_generator(s)
        if self.stop.is_set():
            return 0

        recover_jobs(queue)
        sweep_outputs(queue, s.outputs_dir)
        intake = Intake(s, queue, on_queued=self.worker_wake.set)
        intake.recover()
        mode = choose_mode(s.observer, s.inbox_dir)

        def on_event(path: str) -> None:
            intake.notify(path)
            self.loop_wake.set()

        observer = start_observer(s.inbox_dir, mode, s.poll_interval_seconds, on_event)
        intake.scan()
        registry = WorkerRegistry(session_factory(engine), this_process(), s.lease_seconds)
        worker = Worker(s, queue, generator, registry.register(str(generator.placement.device)))
        registry.start()
        worker_thread = threading.Thread(target=worker.run, args=(self.stop, self.worker_wake),
                                         name="worker", daemon=True)
        worker_thread.start()
        log.info("daemon_ready", observer=mode, settle_seconds=s.settle_seconds)

        next_rescan = time.monotonic() + s.rescan_seconds
        # With several daemons, another host's lost job waits for this pass: keep it within a lease.
        recovery_interval = min(RECOVERY_INTERVAL, s.lease_seconds)
        next_recovery = time.monotonic() + recovery_interval
        try:
            while not self.stop.is_set():
                due = intake.tick()
                now = time.monotonic()
                if now >= next_rescan:
                    intake.scan()
                    next_rescan = now + s.rescan_seconds
                if now >= next_recovery:
                    recover_jobs(queue)
                    intake.recover(older_than=timedelta(seconds=s.lease_seconds))
                    next_recovery = now + recovery_interval
                self.loop_wake.wait(min(due, MAX_LOOP_SLEEP))
                self.loop_wake.clear()
        finally:
            observer.stop()
            self._stop_worker(worker, worker_thread)
            registry.stop()
            observer.join(timeout=5)
            engine.dispose()
        log.info("daemon_stopped")
        return 0

    def _stop_worker(self, worker: Worker, thread: threading.Thread) -> None:
        """Let the running job finish within the grace time, else stop it at its next step."""
        thread.join(self.settings.stop_grace_seconds)
        if thread.is_alive():
            log.info("job_interrupting", job_id=worker.current_job)
            worker.interrupt.set()
            thread.join()


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
