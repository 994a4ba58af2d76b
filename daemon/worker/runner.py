"""The worker: claims one job at a time, runs it on the warm pipeline, publishes the outputs."""

from __future__ import annotations

import functools
import os
import platform
import signal
import threading
import time
import traceback
from importlib.metadata import version
from pathlib import Path

from daemon import __version__, metrics
from daemon.errors import InputRejected, LadderExhausted
from daemon.intake.images import load_rgb
from daemon.logs import get_logger
from daemon.db.tables import Job, utcnow
from daemon.jobs.outputs import (POSTER, PREVIEW, RAW_VIDEO, VIDEO, OutputName, OutputPaths, StagedOutputs,
                            discard_set, finish_set)
from daemon.jobs.queue import JobQueue, worker_identity
from daemon.jobs.retry import RetryPolicy
from daemon.models.pool import LoadedModel, ModelPool
from daemon.settings import Settings
from daemon.periodic import PeriodicTask
from pipeline.backends.base import Progress
from pipeline.errors import GenerationInterrupted, PipelineError
from pipeline.oom import OomLadder, Rung, free_memory, is_oom, peak_memory_bytes
from pipeline.params import GenerationParams
from pipeline.previews import write_poster, write_preview
from pipeline.video import EncodedVideo, EncoderOptions, encode_mp4, plan_interpolation, video_tags

log = get_logger("i2vd.worker")

PROGRESS_WRITE_INTERVAL = 0.5  # seconds between progress rows; phases are always written


class Worker:
    """Runs queued jobs one at a time on a pipeline that stays loaded."""

    def __init__(self, settings: Settings, queue: JobQueue, models: ModelPool,
                 worker_id: int | None = None, encoder: EncoderOptions | None = None) -> None:
        self.settings = settings
        # Chosen at start-up (daemon.encoding), used unchanged for every video.
        self.encoder = encoder or EncoderOptions()
        self.queue = queue
        self.models = models
        self.loaded: LoadedModel | None = None  # the running job's model
        self.image_size: tuple[int, int] | None = None  # the running job's image, for its framing
        self.retry_policy = RetryPolicy(settings.max_retries, settings.retry_backoff_seconds)
        self.owner = worker_identity()
        self.worker_id = worker_id  # this process's row in the worker registry
        self.interrupt = threading.Event()  # stop the running job at its next step
        self.current_job: int | None = None
        self.current_progress: Progress | None = None

    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        """Take jobs until `stop` is set; `wake` cuts the idle wait short."""
        while not stop.is_set():
            try:
                job = self.queue.claim(self.owner, self.settings.lease_seconds, self.models.catalog.names,
                                       self.models.resident)
                if job is not None:
                    self.execute(job)
                    continue
            except Exception:  # a database hiccup must not end the worker thread
                log.exception("worker_error")
            wake.wait(self.settings.worker_poll_seconds)
            wake.clear()

    def execute(self, job: Job) -> None:
        requested = GenerationParams.from_dict(job.params)
        self.current_job = job.id
        heartbeat = _Heartbeat(self.queue, job.id, self.owner, self.settings.lease_seconds)
        heartbeat.start()
        stop = _StopFlags(self.interrupt, heartbeat.lost)
        attempt = None
        started = time.monotonic()
        try:
            self.loaded = self.models.get(job.model or self.models.catalog.default.name)
            generator = self.loaded.generator
            image = self._load_image(job)
            self.image_size = image.size
            tried: list[Rung] = []
            for rung in OomLadder(generator.backend.rules, self.settings.oom_ladder).walk(requested):
                attempt = self.queue.start_attempt(job.id, self.owner, rung.params.to_dict(), rung.name,
                                                   self.worker_id)
                log.info("job_started", job_id=job.id, attempt=attempt.number, rung=rung.name,
                         width=rung.params.width, height=rung.params.height,
                         num_frames=rung.params.num_frames, steps=rung.params.steps)
                try:
                    frames = generator.generate(image, rung.params, self._progress_writer(job, stop),
                                                rung.memory)
                    break
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                    self.queue.finish_attempt(attempt.id, "oom", error_type=type(exc).__name__,
                                              error_message=str(exc), peak_gpu_memory_bytes=peak_memory_bytes())
                    log.warning("job_oom", job_id=job.id, attempt=attempt.number, rung=rung.name)
                    metrics.oom_downgrades.inc()
                    tried.append(rung)
                    attempt = None
                free_memory()  # outside the except block, whose traceback would pin the tensors
            else:
                raise LadderExhausted(_exhausted_message(requested, tried))
            self._publish(job, attempt, requested, rung, tried, frames, started, heartbeat.lost)
        except GenerationInterrupted:
            self._interrupted(job, attempt, stop, heartbeat)
            metrics.job_finished("cancelled" if stop.cancelled else "interrupted", time.monotonic() - started)
        except Exception as exc:
            self._failed(job, attempt, exc)
            metrics.job_finished("failed", time.monotonic() - started)
        finally:
            heartbeat.stop()
            self.loaded = None
            self.current_job = None
            self.current_progress = None

    def _publish(self, job: Job, attempt, requested: GenerationParams, rung: Rung, tried: list[Rung],
                 frames, started: float, lease_lost: threading.Event) -> None:
        generated = time.monotonic()
        self.queue.progress(job.id, "encoding_video", owner=self.owner)
        if self._finish_earlier_set(job, attempt):
            metrics.job_finished("succeeded", time.monotonic() - started)
            return
        params = rung.params
        name = OutputName(self.settings.outputs_dir / job.output_subdir, self.settings.output_prefix,
                          job.output_stem, job.created_at.astimezone())
        with StagedOutputs(job.id, name) as staged:
            video, extras = self._write_files(job, params, frames, staged)
            encoded = time.monotonic()
            timings = {"generation_seconds": round(generated - started, 3),
                       "encoding_seconds": round(encoded - generated, 3)}

            def metadata(paths: OutputPaths) -> dict:
                document = self._metadata(job, attempt.id, params, paths.video, frames.shape, timings)
                document["downgrade"] = _downgrade(requested, rung) if tried else None
                document.update(frames=video.info.frames, fps=video.interpolation.fps,
                                interpolation=video.interpolation.to_dict(), encoder=video.encoder.to_dict(),
                                extras={kind: paths.path(suffix).name for kind, suffix in extras.items()})
                return document

            def record(paths: OutputPaths) -> bool:
                return self.queue.set_outputs(job.id, str(paths.video), str(paths.metadata), self.owner)

            paths = staged.publish(metadata, record, self._fault_before_commit(job))
        if paths is None:  # another worker took the job over meanwhile and makes its set
            lease_lost.set()
            raise GenerationInterrupted("the lease was lost before the video was published")
        self.queue.finish_attempt(attempt.id, "succeeded", peak_gpu_memory_bytes=peak_memory_bytes())
        timings = {**timings, "total_seconds": round(time.monotonic() - started, 3)}
        if not self.queue.succeed(job.id, self.owner, rung=rung.name, timings=timings):
            log.warning("job_success_not_recorded", job_id=job.id, reason="the lease was lost; recovery finishes it")
            return
        metrics.job_finished("succeeded", time.monotonic() - started)
        log.info("job_succeeded", job_id=job.id, output=str(paths.video), rung=rung.name,
                 seconds=round(time.monotonic() - started, 3))

    def _write_files(self, job: Job, params: GenerationParams, frames,
                     staged: StagedOutputs) -> tuple[EncodedVideo, dict[str, str]]:
        """The verified video and the extras the settings ask for, under the set's temporary names."""
        def tags(interpolate: int) -> dict[str, str]:
            return video_tags(job.output_stem, params, model=self._model_metadata()["id"], version=__version__,
                              interpolation=plan_interpolation(len(frames), params.fps, interpolate))

        video = encode_mp4(frames, staged.temp(VIDEO), params.fps, tags=tags(params.interpolate),
                           interpolate=params.interpolate, options=self.encoder)
        extras = {}
        if params.interpolate > 1 and self.settings.keep_raw_video:
            encode_mp4(frames, staged.temp(RAW_VIDEO), params.fps, tags=tags(1), options=self.encoder)
            extras["raw_video"] = RAW_VIDEO
        if self.settings.poster:
            write_poster(frames, staged.temp(POSTER))
            extras["poster"] = POSTER
        if self.settings.preview:
            write_preview(frames, staged.temp(PREVIEW), params.fps)
            extras["preview"] = PREVIEW
        return video, extras

    def _finish_earlier_set(self, job: Job, attempt) -> bool:
        """An earlier attempt recorded a set (then crashed or failed): finish it, or remove what it left."""
        earlier = OutputPaths.recorded(job.output_path, job.metadata_path)
        if earlier is None:
            return False
        if finish_set(job.id, earlier):
            self.queue.finish_attempt(attempt.id, "succeeded",
                                      error_message="an earlier attempt's output set was complete; kept it")
            self.queue.succeed(job.id, self.owner, rung=attempt.rung)
            log.info("job_succeeded", job_id=job.id, output=str(earlier.video), earlier_attempt=True)
            return True
        for path in discard_set(job.id, earlier):
            log.info("output_discarded", job_id=job.id, path=str(path))
        return False

    def _fault_before_commit(self, job: Job):
        crash = self.settings.fault_crash_publish
        if not crash or crash not in job.params.get("prompt", ""):
            return None
        return lambda: os.kill(os.getpid(), signal.SIGKILL)  # fault injection: a crash between renames

    def _interrupted(self, job: Job, attempt, stop: _StopFlags, heartbeat: _Heartbeat) -> None:
        if stop.cancelled:
            self.queue.finish_attempt(attempt.id, "cancelled", error_message="cancelled by request")
            self.queue.mark_cancelled(job.id, self.owner)
            log.info("job_cancelled", job_id=job.id)
            return
        self.queue.finish_attempt(attempt.id, "interrupted", error_type="GenerationInterrupted",
                                  error_message="lease lost" if heartbeat.lost.is_set() else "daemon stopping")
        self.queue.requeue(job.id, self.owner, reason="lease_lost" if heartbeat.lost.is_set() else "daemon_stopping")
        log.info("job_interrupted", job_id=job.id, lease_lost=heartbeat.lost.is_set())

    def _failed(self, job: Job, attempt, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if attempt is not None:
            self.queue.finish_attempt(attempt.id, "failed", error_type=type(exc).__name__,
                                      error_message=str(exc), error_traceback=traceback.format_exc(),
                                      peak_gpu_memory_bytes=peak_memory_bytes())
        earlier = sum(1 for a in self.queue.get(job.id).attempts
                      if a.outcome == "failed" and (attempt is None or a.id != attempt.id))
        decision = self.retry_policy.decide(exc, earlier)
        if decision.retry:
            self.queue.schedule_retry(job.id, self.owner, decision.delay_seconds, message)
            log.warning("job_retry_scheduled", job_id=job.id, error=message, delay_seconds=decision.delay_seconds)
            return
        code = exc.code if isinstance(exc, (InputRejected, PipelineError)) else (
            "out_of_memory" if isinstance(exc, LadderExhausted) else "generation_error")
        self.queue.fail(job.id, code, message, owner=self.owner)
        log.error("job_failed", job_id=job.id, error_code=code, error=message)

    def _load_image(self, job: Job):
        path = Path(job.image_path)
        if not path.exists():
            raise InputRejected("input_missing", f"The image {path} is gone from done/.",
                                hint="Drop the pair again.")
        return load_rgb(path)

    def _progress_writer(self, job: Job, stop: _StopFlags):
        last = {"phase": None, "at": 0.0}
        crash = self.settings.fault_crash_prompt
        crash_here = bool(crash) and crash in (job.params.get("prompt") or "")

        def on_progress(progress: Progress) -> None:
            self.current_progress = progress
            metrics.record_progress(progress.phase, progress.step)
            if crash_here and progress.step == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection: a worker crash mid-denoise
            now = time.monotonic()
            if progress.phase != last["phase"] or now - last["at"] >= PROGRESS_WRITE_INTERVAL \
                    or progress.step == progress.total:
                if self.queue.progress(job.id, progress.phase, progress.step, progress.total, owner=self.owner):
                    stop.cancelled = True
                last["phase"], last["at"] = progress.phase, now
            if stop.should_stop:
                raise GenerationInterrupted()

        return on_progress

    def _metadata(self, job: Job, attempt_id: int, params: GenerationParams, video: Path, shape,
                  timings: dict) -> dict:
        """The set's JSON; it lists the attempt that made the set as succeeded, as the database will."""
        finished = utcnow()
        return {
            "job_id": job.id,
            "video": video.name,
            "frames": int(shape[0]),
            "width": int(shape[2]),
            "height": int(shape[1]),
            "fps": params.fps,
            "params": params.to_dict(),
            "inputs": {
                "name": job.output_stem,  # in full: the file names may be cut to fit the file system
                "image": Path(job.source_image).name,
                "sidecar": Path(job.source_sidecar).name if job.source_sidecar else None,
                "image_path": job.image_path,
                "sidecar_path": job.sidecar_path,
            },
            "framing": self.loaded.generator.backend.framing(self.loaded.generator.pipe, self.image_size,
                                                             params).to_dict(),
            "model": self._model_metadata(),
            "timings": {
                "queued_at": job.created_at.isoformat(),
                "started_at": job.started_at.isoformat() if job.started_at else None,
                "finished_at": finished.isoformat(),
                **timings,
            },
            "attempts": [_attempt_summary(a, finished if a.id == attempt_id else None)
                         for a in self.queue.get(job.id).attempts],
            "versions": dict(package_versions()),
        }

    def _model_metadata(self) -> dict:
        served, generator = self.loaded.model, self.loaded.generator
        return {
            "name": served.name,
            "id": served.value if served.source.tiny else served.source.source,  # hub id or folder
            "backend": served.source.backend,
            "pipeline_class": type(generator.pipe).__name__,
            "revision": self.loaded.revision,
            "smoke_test": served.source.tiny,
            "device": str(generator.placement.device),
            "dtype": str(generator.placement.dtype).removeprefix("torch."),
        }


def _attempt_summary(a, succeeded_at=None) -> dict:
    """One attempt for the metadata; `succeeded_at` for the attempt whose set this is, not yet closed."""
    finished_at = succeeded_at or a.finished_at
    return {"number": a.number, "worker": a.worker, "gpu": a.worker_record.gpu if a.worker_record else None,
            "rung": a.rung, "params": a.params,
            "outcome": "succeeded" if succeeded_at else a.outcome, "error": a.error_message,
            "started_at": a.started_at.isoformat(),
            "finished_at": finished_at.isoformat() if finished_at else None}


def _exhausted_message(requested: GenerationParams, tried: list[Rung]) -> str:
    last = tried[-1].params
    return (f"out of GPU memory on every rung ({', '.join(r.name for r in tried)}), down to "
            f"{last.width}x{last.height}, {last.num_frames} frames; asked for {requested.width}x"
            f"{requested.height}, {requested.num_frames} frames. Use a smaller preset or resolution, "
            "fewer frames, or a GPU with more memory")


def _downgrade(requested: GenerationParams, rung: Rung) -> dict:
    produced = rung.params
    return {
        "rung": rung.name,
        "memory": {"vae_slicing": rung.memory.vae_slicing, "cpu_offload": rung.memory.cpu_offload,
                   "sequential_offload": rung.memory.sequential_offload},
        "from": {"width": requested.width, "height": requested.height, "num_frames": requested.num_frames},
        "to": {"width": produced.width, "height": produced.height, "num_frames": produced.num_frames},
    }


class _StopFlags:
    """Why the running job should stop at its next step, if it should."""

    def __init__(self, shutdown: threading.Event, lease_lost: threading.Event) -> None:
        self.shutdown, self.lease_lost, self.cancelled = shutdown, lease_lost, False

    @property
    def should_stop(self) -> bool:
        return self.cancelled or self.shutdown.is_set() or self.lease_lost.is_set()


@functools.cache
def package_versions() -> dict[str, str]:
    """Read once: the metadata files on disk may change under a running daemon, its loaded code cannot."""
    versions = {"i2vd": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers"):
        versions[name] = version(name)
    return versions


class _Heartbeat:
    """Renews a running job's lease; a lost lease stops the job at its next step.

    A failed renewal (the database briefly away) is retried with backoff; only once renewals have
    failed for a whole lease, when another worker may already have taken the job over, is the job
    stopped as if its lease were lost.
    """

    def __init__(self, queue: JobQueue, job_id: int, owner: str, lease_seconds: float) -> None:
        self.queue, self.job_id, self.owner, self.lease_seconds = queue, job_id, owner, lease_seconds
        self.lost = threading.Event()
        self._task = PeriodicTask(f"heartbeat-{job_id}", self._renew, lease_seconds / 3,
                                  escalate_after=lease_seconds, on_escalate=self._give_up, job_id=job_id)

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stop()

    def _renew(self) -> bool:
        if self.queue.heartbeat(self.job_id, self.owner, self.lease_seconds):
            return True
        log.warning("lease_lost", job_id=self.job_id)
        self.lost.set()
        return False

    def _give_up(self, _exc: BaseException) -> bool:
        log.warning("lease_lost", job_id=self.job_id, reason="no renewal for a whole lease")
        self.lost.set()
        return False
