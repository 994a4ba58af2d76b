"""The worker: claims one job at a time, generates it down the OOM ladder, hands the frames on to publish."""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from daemon import metrics
from daemon.db.tables import Attempt, Job
from daemon.errors import InputRejected, LadderExhausted
from daemon.intake.images import load_rgb
from daemon.jobs.codes import ErrorCode
from daemon.jobs.queue import JobQueue
from daemon.process import worker_identity
from daemon.jobs.retry import RetryPolicy
from daemon.logs import get_logger
from daemon.models.pool import ModelPool
from daemon.settings import Settings
from daemon.worker.faults import NO_FAULTS, Faults
from daemon.worker.handoff import PublishStage
from daemon.db.engine import DATABASE_UNAVAILABLE
from daemon.worker.lease import Heartbeat, StopFlags, first_line
from daemon.worker.metadata import model_metadata
from daemon.worker.outcome import Outcomes
from daemon.worker.progress import ProgressRows
from daemon.worker.publish import Generated, Publisher
from pipeline.backends.base import Progress
from pipeline.errors import GenerationInterrupted
from pipeline.oom import OomLadder, Rung, free_memory, is_oom, peak_memory_bytes
from pipeline.params import GenerationParams
from pipeline.video import EncoderOptions

log = get_logger("i2vd.worker")


class Worker:
    """Runs queued jobs one at a time on a pipeline that stays loaded."""

    def __init__(self, settings: Settings, queue: JobQueue, models: ModelPool,
                 worker_id: int | None = None, encoder: EncoderOptions | None = None,
                 faults: Faults = NO_FAULTS) -> None:
        self.settings = settings
        self.queue = queue
        self.models = models
        self.faults = faults
        self.owner = worker_identity()
        self.worker_id = worker_id  # this process's row in the worker registry
        self.outcomes = Outcomes(queue, self.owner, RetryPolicy(settings.max_retries, settings.retry_backoff_seconds))
        self.publisher = Publisher(settings, queue, self.owner, faults, self.outcomes, encoder or EncoderOptions())
        self.interrupt = threading.Event()  # stop the running job at its next step
        self.current_job: int | None = None
        self.current_attempt: Attempt | None = None  # the running try's attempt row; None between OOM rungs
        self.current_progress: Progress | None = None

    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        """Take jobs until `stop` is set; `wake` cuts the idle wait short. Returns once all is published."""
        backlog = self.settings.publish_backlog
        with PublishStage(self.publisher, backlog) if backlog else nullcontext() as stage:
            while not stop.is_set():
                try:
                    if (job := self._claim()) is not None:
                        self.execute(job, stage)
                        continue
                except Exception:  # nothing must end the worker thread
                    log.exception("worker_error")
                wake.wait(self.settings.worker_poll_seconds)
                wake.clear()

    def _claim(self) -> Job | None:
        try:
            return self.queue.claim(self.owner, self.settings.lease_seconds, self.models.catalog.names,
                                    self.models.resident)
        except DATABASE_UNAVAILABLE as exc:  # away for a while: the next poll tries again
            log.warning("claim_failed", error=first_line(exc))
            return None

    def execute(self, job: Job, stage: PublishStage | None = None) -> None:
        """Generate the job's frames, then publish them here or hand them to `stage`.

        The job's lease is renewed from the claim until its set is published, wherever that happens.
        """
        self.current_job = job.id
        heartbeat = Heartbeat(self.queue, job.id, self.owner, self.settings.lease_seconds)
        heartbeat.start()
        stop = StopFlags(self.interrupt, heartbeat.lost)
        started = time.monotonic()
        done = None
        try:
            done = self._generate(job, stop, started, heartbeat)
        except GenerationInterrupted:
            attempt, lost = self.current_attempt, heartbeat.lost.is_set()
            heartbeat.wait_for_database(lambda: self.outcomes.interrupted(
                job.id, attempt, cancelled=stop.cancelled, lease_lost=lost), "interrupted")
            metrics.job_finished("cancelled" if stop.cancelled else "interrupted", time.monotonic() - started)
        except Exception as exc:
            attempt = self.current_attempt
            heartbeat.wait_for_database(partial(self.outcomes.failed, job.id, attempt, exc), "failed")
            metrics.job_finished("failed", time.monotonic() - started)
        finally:
            if done is None:
                heartbeat.stop()
            self.current_job = self.current_attempt = self.current_progress = None
        if done is not None:
            if stage is None:
                self.publisher.run(done)
            else:
                stage.submit(done)

    def _generate(self, job: Job, stop: StopFlags, started: float, lease: Heartbeat) -> Generated:
        """The frames, down the OOM ladder as far as needed."""
        requested = GenerationParams.from_dict(job.params)
        loaded = self.models.get(job.model or self.models.catalog.default.name)
        image = self._load_image(job)
        with ProgressRows(self.queue, job.id, self.owner, stop) as rows:
            on_progress = self._on_progress(job, stop, rows)
            tried: list[Rung] = []
            for rung in OomLadder(loaded.generator.backend.rules, self.settings.oom_ladder).walk(requested):
                attempt = lease.wait_for_database(partial(self.queue.start_attempt, job.id, self.owner,
                                                          rung.params.to_dict(), rung.name, self.worker_id),
                                                  "start_attempt")
                self.current_attempt = attempt
                log.info("job_started", job_id=job.id, attempt=attempt.number, rung=rung.name,
                         width=rung.params.width, height=rung.params.height,
                         num_frames=rung.params.num_frames, steps=rung.params.steps)
                try:
                    self.faults.before_generate(rung.params)
                    frames = loaded.generator.generate(image, rung.params, on_progress, rung.memory)
                    log.info("job_generated", job_id=job.id, attempt=attempt.number,
                             seconds=round(time.monotonic() - started, 3))
                    framing = loaded.generator.backend.framing(loaded.generator.pipe, image.size, rung.params)
                    return Generated(job, attempt, requested, rung, bool(tried), frames, model_metadata(loaded),
                                     framing.to_dict(),
                                     started, time.monotonic(), peak_memory_bytes(), lease)
                except ValueError as exc:  # the backend's own input checks (diffusers' check_inputs)
                    raise InputRejected(
                        ErrorCode.INPUT_REFUSED, f"The model refused the job's parameters: {exc}",
                        hint="Change the sidecar's fields; the same request fails the same way.") from exc
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                    lease.wait_for_database(partial(self.queue.finish_attempt, attempt.id, "oom",
                                                    error_type=type(exc).__name__, error_message=str(exc),
                                                    peak_gpu_memory_bytes=peak_memory_bytes()), "finish_attempt")
                    log.warning("job_oom", job_id=job.id, attempt=attempt.number, rung=rung.name)
                    metrics.oom_downgrades.inc()
                    tried.append(rung)
                    self.current_attempt = None
                free_memory()  # outside the except block, whose traceback would pin the tensors
            raise LadderExhausted(_exhausted_message(requested, tried))

    def _load_image(self, job: Job):
        path = Path(job.image_path)
        if not path.exists():
            raise InputRejected(ErrorCode.INPUT_MISSING, f"The image {path} is gone from done/.",
                                hint="Drop the pair again.")
        return load_rgb(path)

    def _on_progress(self, job: Job, stop: StopFlags, rows: ProgressRows):
        """The generation's callback: its rows go to `rows`' thread; a stop request ends it at this step."""
        prompt = job.params.get("prompt")

        def on_progress(progress: Progress) -> None:
            self.current_progress = progress
            metrics.record_progress(progress.phase, progress.step)
            self.faults.at_step(prompt, progress.step)
            rows.report(progress)
            if stop.should_stop:
                raise GenerationInterrupted()

        return on_progress


def _exhausted_message(requested: GenerationParams, tried: list[Rung]) -> str:
    last = tried[-1].params
    return (f"out of GPU memory on every rung ({', '.join(r.name for r in tried)}), down to "
            f"{last.width}x{last.height}, {last.num_frames} frames; asked for {requested.width}x"
            f"{requested.height}, {requested.num_frames} frames. Use a smaller preset or resolution, "
            "fewer frames, or a GPU with more memory")
