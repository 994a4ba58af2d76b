"""The worker: claims one job at a time, runs it on the warm pipeline, publishes the outputs."""

from __future__ import annotations

import platform
import threading
import time
import traceback
from importlib.metadata import version
from pathlib import Path

from daemon import __version__
from daemon.errors import InputRejected
from daemon.images import load_rgb
from daemon.logs import get_logger
from daemon.models import Job, utcnow
from daemon.outputs import choose_paths, encode_video, publish_outputs
from daemon.queue import JobQueue, worker_identity
from daemon.settings import Settings
from pipeline.errors import GenerationInterrupted
from pipeline.generate import Progress, VideoGenerator
from pipeline.params import GenerationParams

log = get_logger("i2vd.worker")

PROGRESS_WRITE_INTERVAL = 0.5  # seconds between progress rows; phases are always written


class Worker:
    """Runs queued jobs one at a time on a pipeline that stays loaded."""

    def __init__(self, settings: Settings, queue: JobQueue, generator: VideoGenerator,
                 worker_id: int | None = None) -> None:
        self.settings = settings
        self.queue = queue
        self.generator = generator
        self.owner = worker_identity()
        self.worker_id = worker_id  # this process's row in the worker registry
        self.interrupt = threading.Event()  # stop the running job at its next step
        self.current_job: int | None = None
        self.current_progress: Progress | None = None

    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        """Take jobs until `stop` is set; `wake` cuts the idle wait short."""
        while not stop.is_set():
            job = self.queue.claim(self.owner, self.settings.lease_seconds)
            if job is None:
                wake.wait(self.settings.worker_poll_seconds)
                wake.clear()
                continue
            self.execute(job)

    def execute(self, job: Job) -> None:
        params = GenerationParams.from_dict(job.params)
        attempt = self.queue.start_attempt(job.id, self.owner, job.params, self.worker_id)
        self.current_job = job.id
        log.info("job_started", job_id=job.id, attempt=attempt.number, width=params.width,
                 height=params.height, num_frames=params.num_frames, steps=params.steps)
        heartbeat = _Heartbeat(self.queue, job.id, self.owner, self.settings.lease_seconds)
        heartbeat.start()
        started = time.monotonic()
        try:
            image = self._load_image(job)
            frames = self.generator.generate(image, params, self._progress_writer(job.id, heartbeat.lost))
            generated = time.monotonic()
            self.queue.progress(job.id, "encoding_video")
            paths = choose_paths(self.settings.outputs_dir, job.output_subdir, self.settings.output_prefix,
                                 job.output_stem, job.created_at.astimezone())
            tmp = encode_video(job.id, frames, params.fps, paths.video.parent)
            encoded = time.monotonic()
            if not self.queue.set_outputs(job.id, str(paths.video), str(paths.metadata), self.owner):
                tmp.unlink(missing_ok=True)  # another worker took the job over meanwhile and makes its video
                heartbeat.lost.set()
                raise GenerationInterrupted("the lease was lost before the video was published")
            self.queue.finish_attempt(attempt.id, "succeeded")
            metadata = self._metadata(job, params, paths.video, frames.shape, {
                "generation_seconds": round(generated - started, 3),
                "encoding_seconds": round(encoded - generated, 3),
            })
            publish_outputs(tmp, paths, metadata)
            self.queue.succeed(job.id)
            log.info("job_succeeded", job_id=job.id, output=str(paths.video),
                     seconds=round(time.monotonic() - started, 3))
        except GenerationInterrupted as exc:
            self.queue.finish_attempt(attempt.id, "interrupted", error_type="GenerationInterrupted",
                                      error_message=str(exc))
            self.queue.requeue(job.id, self.owner)
            log.info("job_interrupted", job_id=job.id, lease_lost=heartbeat.lost.is_set())
        except InputRejected as exc:
            self._fail(job, attempt.id, exc, exc.code)
        except Exception as exc:
            self._fail(job, attempt.id, exc, "generation_error")
        finally:
            heartbeat.stop()
            self.current_job = None
            self.current_progress = None

    def _fail(self, job: Job, attempt_id: int, exc: Exception, code: str) -> None:
        message = f"{type(exc).__name__}: {exc}"
        self.queue.finish_attempt(attempt_id, "failed", error_type=type(exc).__name__,
                                  error_message=str(exc), error_traceback=traceback.format_exc())
        self.queue.fail(job.id, code, message)
        log.error("job_failed", job_id=job.id, error_code=code, error=message)

    def _load_image(self, job: Job):
        path = Path(job.image_path)
        if not path.exists():
            raise InputRejected("input_missing", f"The image {path} is gone from done/.",
                                hint="Drop the pair again.")
        return load_rgb(path)

    def _progress_writer(self, job_id: int, lease_lost: threading.Event):
        last = {"phase": None, "at": 0.0}

        def on_progress(progress: Progress) -> None:
            self.current_progress = progress
            if self.interrupt.is_set() or lease_lost.is_set():
                raise GenerationInterrupted()
            now = time.monotonic()
            if progress.phase != last["phase"] or now - last["at"] >= PROGRESS_WRITE_INTERVAL \
                    or progress.step == progress.total:
                self.queue.progress(job_id, progress.phase, progress.step, progress.total)
                last["phase"], last["at"] = progress.phase, now

        return on_progress

    def _metadata(self, job: Job, params: GenerationParams, video: Path, shape, timings: dict) -> dict:
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
                "image": Path(job.source_image).name,
                "sidecar": Path(job.source_sidecar).name if job.source_sidecar else None,
                "image_path": job.image_path,
                "sidecar_path": job.sidecar_path,
            },
            "model": {
                "id": self.settings.model,
                "smoke_test": self.settings.is_tiny_model,
                "device": str(self.generator.placement.device),
                "dtype": str(self.generator.placement.dtype).removeprefix("torch."),
            },
            "timings": {
                "queued_at": job.created_at.isoformat(),
                "started_at": job.started_at.isoformat() if job.started_at else None,
                "finished_at": finished.isoformat(),
                **timings,
            },
            "attempts": [
                {"number": a.number, "worker": a.worker, "gpu": a.worker_record.gpu if a.worker_record else None,
                 "outcome": a.outcome, "error": a.error_message,
                 "started_at": a.started_at.isoformat(),
                 "finished_at": a.finished_at.isoformat() if a.finished_at else None}
                for a in self.queue.get(job.id).attempts
            ],
            "versions": package_versions(),
        }


def package_versions() -> dict[str, str]:
    versions = {"i2vd": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers"):
        versions[name] = version(name)
    return versions


class _Heartbeat:
    """Renews a running job's lease; a lost lease stops the job at its next step."""

    def __init__(self, queue: JobQueue, job_id: int, owner: str, lease_seconds: float) -> None:
        self.queue, self.job_id, self.owner, self.lease_seconds = queue, job_id, owner, lease_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            if not self.queue.heartbeat(self.job_id, self.owner, self.lease_seconds):
                log.warning("lease_lost", job_id=self.job_id)
                self.lost.set()
                return
