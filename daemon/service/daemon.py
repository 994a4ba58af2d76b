"""The daemon process: wires settings, database, model, intake, watcher and worker together."""

from __future__ import annotations

import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from daemon import __version__, logs, metrics
from daemon.models.catalog import ModelCatalog
from daemon.models.loading import load_models, placement_for
from daemon.db.engine import cannot_write, make_engine, session_factory, sqlite_path, unwritable_reason, upgrade
from daemon.errors import I2vdError
from daemon.events.background import EventServices
from daemon.intake.ingest import Intake
from daemon.logs import get_logger
from daemon.metrics import MetricsServer
from daemon.db.tables import JobState
from daemon.service.notify import Notifier, StartupKeepalive
from daemon.jobs.queue import JobQueue
from daemon.jobs.recovery import recover_jobs, sweep_outputs
from daemon.service.reload import reload_settings
from daemon.settings import Settings, describe_error, split_host_port
from daemon.intake.watcher import InboxEvent, choose_mode, filesystem_type, needs_polling, start_observer
from daemon.worker.registry import WorkerRegistry, this_process

if TYPE_CHECKING:
    from daemon.models.pool import ModelPool
    from daemon.worker.runner import Worker
    from pipeline.video import EncoderOptions

log = get_logger("i2vd.service")

MAX_LOOP_SLEEP = 1.0  # seconds; the main loop never sleeps longer (signals, rescans, recovery)
RECOVERY_INTERVAL = 15.0
STATUS_INTERVAL = 1.0  # seconds between STATUS= updates to systemd (sent only when the text changed)


class Daemon:
    """One i2vd process: an intake loop in the main thread and one worker thread (none if intake_only).

    The model stack (torch, diffusers) is imported only for the worker: an intake-only daemon stays
    small (see bench/RESULTS.md).
    """

    def __init__(self, settings: Settings, config_file: Path | None = None) -> None:
        self.settings = settings
        self.config_file = config_file  # re-read on SIGHUP
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.loop_wake = threading.Event()
        self.worker_wake = threading.Event()
        self.worker_crashed = False
        self.notifier = Notifier()
        self._status = ""
        self._job_names: dict[int, str] = {}

    def request_stop(self, signum: int | None = None, _frame=None) -> None:
        if not self.stop.is_set():
            log.info("daemon_stopping", signal=signal.Signals(signum).name if signum else None)
        self.stop.set()
        self.loop_wake.set()
        self.worker_wake.set()

    def request_reload(self, _signum: int | None = None, _frame=None) -> None:
        self.reload_requested.set()
        self.loop_wake.set()

    def run(self) -> int:
        s = self.settings
        for directory in (s.inbox_dir, s.outputs_dir, s.state_dir, s.done_dir, s.failed_dir):
            directory.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)  # before the slow start-up: HUP must not kill us
        log.info("daemon_starting", version=__version__, inbox=str(s.inbox_dir), outputs=str(s.outputs_dir),
                 database=s.resolved_database_url)  # the log redacts a password
        catalog = ModelCatalog.from_settings(s)
        self.notifier.status("Starting: database migrations" if s.intake_only
                             else f"Starting: database migrations, then loading model "
                                  f"{catalog.default.value}")

        db_file = sqlite_path(s.resolved_database_url)
        if db_file is not None and needs_polling(fs := filesystem_type(db_file.parent)):
            log.warning("database_on_network_fs", path=str(db_file), filesystem=fs,
                        detail="SQLite's locking is not safe on network filesystems; keep the database "
                               "on local disk, and use PostgreSQL to share one inbox between hosts")
        engine = make_engine(s.resolved_database_url)
        metrics_server = None
        try:
            with StartupKeepalive(self.notifier, s.startup_timeout_seconds):
                self._migrate(engine)
                queue = JobQueue(session_factory(engine))
                if s.intake_only:
                    pool = encoder = None
                    metrics_server = self._start_metrics(queue, None)
                    metrics.info.info({"version": __version__, "role": "intake"})
                else:
                    from daemon.worker.encoder import video_encoder
                    from pipeline.runtime import dtype_name, resolve_placement

                    device = resolve_placement(s.device).device
                    encoder = video_encoder(s, device.type)  # before the load: a wrong one fails fast
                    # Before the load: a taken port fails fast.
                    metrics_server = self._start_metrics(queue, device)
                    self.notifier.status(f"Starting: loading model {catalog.default.value}")
                    pool = load_models(s, device, catalog)
                    served = ", ".join(m.value for m in catalog.models)
                    metrics.info.info({"version": __version__, "role": "worker", "model": served,
                                       "device": str(device),
                                       "dtype": dtype_name(placement_for(s, device, catalog.default).dtype)})
            if self.stop.is_set():
                self.notifier.stopping("Stopped during start-up")
                return 0
            return self._serve(queue, catalog, pool, session_factory(engine), encoder)
        finally:
            if metrics_server is not None:
                metrics_server.close()
            engine.dispose()
            self.notifier.close()

    def _migrate(self, engine) -> None:
        """Migrate, and make sure the database takes writes before the slow model load."""
        try:
            upgrade(engine)
            problem = unwritable_reason(engine)
        except (OperationalError, OSError) as exc:  # e.g. a read-only file whose schema is behind
            problem = cannot_write(engine, exc)
        if problem:
            log.error("database_unwritable", detail=problem)
            raise I2vdError(problem)

    def _start_metrics(self, queue: JobQueue, device) -> MetricsServer | None:
        s = self.settings
        if not s.metrics_enabled:
            return None
        host, port = split_host_port(s.metrics_address)
        try:
            server = MetricsServer(host, port, queue.counts, device)
        except OSError as exc:
            message = (f"cannot serve metrics on {s.metrics_address} ({exc.strerror or exc}); set "
                       "I2VD_METRICS_ADDRESS to a free address or I2VD_METRICS_ENABLED=false")
            log.error("metrics_bind_failed", address=s.metrics_address, detail=message)  # the log file too
            raise I2vdError(message) from None
        log.info("metrics_serving", url=f"http://{s.metrics_address.rpartition(':')[0]}:{server.port}/metrics")
        return server

    def _serve(self, queue: JobQueue, catalog: ModelCatalog, pool: ModelPool | None,
               sessions: sessionmaker[Session], encoder: EncoderOptions | None) -> int:
        s = self.settings
        recover_jobs(queue, s.max_crash_attempts)
        sweep_outputs(queue, s.outputs_dir)
        intake = Intake(s, queue, on_queued=self.worker_wake.set, catalog=catalog)
        intake.recover()

        def on_event(event: InboxEvent) -> None:
            intake.notify(event)
            self.loop_wake.set()

        mode = choose_mode(s.observer, s.inbox_dir)
        observer = start_observer(s.inbox_dir, mode, s.poll_interval_seconds, on_event)
        intake.scan()
        worker = worker_thread = registry = None
        if pool is not None:
            from daemon.worker.faults import Faults
            from daemon.worker.runner import Worker

            registry = WorkerRegistry(sessions, this_process(), s.lease_seconds)
            worker = Worker(s, queue, pool, registry.register(pool.device, catalog.names), encoder,
                            Faults.from_settings(s))
            registry.start()
            worker_thread = threading.Thread(target=self._run_worker, args=(worker,), name="worker", daemon=True)
            worker_thread.start()
        events = EventServices(s, sessions)  # webhook delivery and pruning, in their own threads
        events.start()
        self._status = self._status_line(queue, worker)
        self.notifier.ready(self._status)
        log.info("daemon_ready", observer=mode, settle_seconds=s.settle_seconds, intake_only=worker is None)

        ping_every = self.notifier.watchdog_interval
        now = time.monotonic()
        next_rescan = now + s.rescan_seconds
        # With several daemons, another host's lost job waits for this pass: keep it within a lease.
        recovery_interval = min(RECOVERY_INTERVAL, s.lease_seconds)
        next_recovery = now + recovery_interval
        next_status = now + STATUS_INTERVAL
        next_ping = now
        try:
            while not self.stop.is_set():
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    if self._reload(queue, worker):
                        observer.stop()
                        observer.join(timeout=5)
                        mode = choose_mode(s.observer, s.inbox_dir)
                        observer = start_observer(s.inbox_dir, mode, s.poll_interval_seconds, on_event)
                        log.info("observer_restarted", observer=mode, poll_interval_seconds=s.poll_interval_seconds)
                        intake.scan()  # whatever happened while no observer was watching
                due = MAX_LOOP_SLEEP
                now = time.monotonic()
                try:
                    due = intake.tick()
                    if now >= next_rescan:
                        next_rescan = now + s.rescan_seconds
                        intake.scan()
                    if now >= next_recovery:
                        next_recovery = now + recovery_interval
                        recover_jobs(queue, s.max_crash_attempts)
                        intake.recover(older_than=timedelta(seconds=s.lease_seconds))
                    if now >= next_status:
                        next_status = now + STATUS_INTERVAL
                        self._update_status(queue, worker)  # reads the queue: inside the try too
                except Exception:  # e.g. the database briefly unreachable: log, keep serving
                    log.exception("loop_error")
                wait = min(due, MAX_LOOP_SLEEP)
                if ping_every is not None:
                    # Pinged from this loop, not a helper thread: a loop that hangs stops the pings.
                    if now >= next_ping:
                        self.notifier.watchdog()
                        next_ping = now + ping_every
                    wait = min(wait, max(next_ping - now, 0.0))
                self.loop_wake.wait(wait)
                self.loop_wake.clear()
        finally:
            self.stop.set()  # also when the loop itself failed: the worker thread must end, not wait forever
            self.notifier.stopping(self._stopping_line(worker))
            observer.stop()
            if worker is not None and worker_thread is not None and registry is not None:
                self._stop_worker(worker, worker_thread)
                registry.stop()
            events.stop()
            observer.join(timeout=5)
        log.info("daemon_stopped")
        return 1 if self.worker_crashed else 0

    def _run_worker(self, worker: Worker) -> None:
        """The worker thread; if it dies, the whole daemon stops with an error so systemd restarts it."""
        try:
            worker.run(self.stop, self.worker_wake)
        except Exception:
            log.exception("worker_crashed", job_id=worker.current_job)
            self.worker_crashed = True
            self.request_stop()

    def _reload(self, queue: JobQueue, worker: Worker | None) -> bool:
        """Apply live settings; True when the inbox observer must restart to take them."""
        self.notifier.reloading()
        restart_observer = False
        try:
            result = reload_settings(self.settings, self.config_file)
        except (ValueError, OSError) as exc:  # invalid TOML or values, missing file: keep the old settings
            log.error("reload_failed", error=describe_error(exc))
        else:
            if "log_level" in result.applied:
                logs.set_level(self.settings.log_level)
            log.info("settings_reloaded", changed=result.applied, restart_required=result.restart_required)
            if result.restart_required:
                log.warning("restart_required", settings=result.restart_required,
                            detail="these settings apply only at start: systemctl restart i2vd")
            restart_observer = bool({"observer", "poll_interval_seconds"} & result.applied.keys())
        self._status = self._status_line(queue, worker)
        self.notifier.ready(self._status)  # READY=1 ends the reload
        return restart_observer

    def _status_line(self, queue: JobQueue, worker: Worker | None) -> str:
        """What `systemctl status` shows: the running job and its step, and the queue depth."""
        queued = queue.counts()[JobState.QUEUED]
        if worker is None:
            return f"Intake only; {queued} queued"
        job_id, progress = worker.current_job, worker.current_progress
        if job_id is None:
            return f"Idle; {queued} queued"
        if job_id not in self._job_names:
            job = queue.get(job_id)
            self._job_names = {job_id: job.output_stem if job else "?"}
        doing = progress.phase.replace("_", " ") if progress else "starting"
        if progress and progress.total:
            doing += f" step {progress.step}/{progress.total}"
        return f"Job #{job_id} {self._job_names[job_id]}: {doing}; {queued} queued"

    def _update_status(self, queue: JobQueue, worker: Worker | None) -> None:
        if not self.notifier.enabled:
            return
        line = self._status_line(queue, worker)
        if line != self._status:
            self.notifier.status(line)
            self._status = line

    def _stopping_line(self, worker: Worker | None) -> str:
        if worker is None or worker.current_job is None:
            return "Stopping"
        return (f"Stopping: job #{worker.current_job} has {self.settings.stop_grace_seconds:g} s to finish, "
                "then it is requeued")

    def _stop_worker(self, worker: Worker, thread: threading.Thread) -> None:
        """Let the running job finish within the grace time, else stop it at its next step."""
        deadline = time.monotonic() + self.settings.stop_grace_seconds
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(min(1.0, max(deadline - time.monotonic(), 0.0)))
            self.notifier.watchdog()  # still alive while the job winds down
        if thread.is_alive():
            log.info("job_interrupting", job_id=worker.current_job)
            worker.interrupt.set()
            while thread.is_alive():
                thread.join(1.0)
                self.notifier.watchdog()
