"""Publishing one job's output set: video (encoded, verified), poster, preview and metadata, in place."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from daemon import __version__, metrics
from daemon.db.tables import Attempt, Job
from daemon.jobs.outputs import (
    POSTER,
    PREVIEW,
    RAW_VIDEO,
    VIDEO,
    OutputName,
    OutputPaths,
    StagedOutputs,
    discard_set,
    finish_set,
)
from daemon.jobs.queue import JobQueue
from daemon.logs import get_logger
from daemon.settings import Settings
from daemon.worker.faults import Faults
from daemon.db.engine import DATABASE_UNAVAILABLE
from daemon.worker.lease import Heartbeat, LeaseLost, first_line
from daemon.worker.metadata import downgrade, job_metadata
from daemon.worker.outcome import Outcomes
from pipeline.oom import Rung
from pipeline.params import GenerationParams
from pipeline.previews import write_poster, write_preview
from pipeline.video import EncodedVideo, EncoderOptions, encode_mp4, plan_interpolation, video_tags

log = get_logger("i2vd.worker")


@dataclass(frozen=True, eq=False)
class Generated:
    """A finished generation, waiting to be published: its frames and everything its metadata records."""

    job: Job
    attempt: Attempt  # the row of the try that made the frames
    requested: GenerationParams
    rung: Rung
    downgraded: bool  # the OOM ladder went below the request
    frames: np.ndarray
    model: dict  # see metadata.model_metadata
    framing: dict  # how the image became the video's frame (pipeline.framing)
    started: float  # time.monotonic() when the job began
    generated: float  # ... and when its frames were ready
    peak_gpu_memory_bytes: int | None  # of the generation, before the next job resets it
    lease: Heartbeat  # still renewed: the job is ours until its set is published

    @property
    def nbytes(self) -> int:
        return self.frames.nbytes


class Publisher:
    """Turns a `Generated` into a published, fsynced output set and a succeeded job."""

    def __init__(self, settings: Settings, queue: JobQueue, owner: str, faults: Faults,
                 outcomes: Outcomes, encoder: EncoderOptions) -> None:
        self.settings, self.queue, self.owner, self.faults, self.outcomes = settings, queue, owner, faults, outcomes
        self.encoder = encoder  # chosen at start-up (daemon.worker.encoder), used unchanged for every video

    def run(self, done: Generated) -> None:
        """Publish the set and record how that ended; the job's lease is let go only then."""
        job_id, attempt, lease = done.job.id, done.attempt, done.lease
        try:
            self.publish(done)
        except LeaseLost:
            lease.wait_for_database(lambda: self.outcomes.interrupted(job_id, attempt, cancelled=False,
                                                                      lease_lost=True), "interrupted")
            metrics.job_finished("interrupted", time.monotonic() - done.started)
        except Exception as exc:  # an encode error, a full disk: failed or retried like any failure
            lease.wait_for_database(partial(self.outcomes.failed, job_id, attempt, exc), "failed")
            metrics.job_finished("failed", time.monotonic() - done.started)
        finally:
            done.lease.stop()

    def publish(self, done: Generated) -> None:
        """Raises LeaseLost when another worker took the job over before the set was recorded."""
        job, attempt, rung, lease = done.job, done.attempt, done.rung, done.lease
        publishing = time.monotonic()  # later than `done.generated` when it waited for the publisher
        try:
            self.queue.progress(job.id, "encoding_video", owner=self.owner)
        except DATABASE_UNAVAILABLE as exc:  # progress is best effort
            log.warning("progress_not_recorded", job_id=job.id, error=first_line(exc))
        self.faults.before_publish()
        if lease.wait_for_database(lambda: self._finish_earlier_set(job, attempt), "finish_earlier_set"):
            metrics.job_finished("succeeded", time.monotonic() - done.started)
            return
        params = rung.params
        name = OutputName(self.settings.outputs_dir / job.output_subdir, self.settings.output_prefix,
                          job.output_stem, job.created_at.astimezone())
        with StagedOutputs(job.id, name) as staged:
            video, extras = self._write_files(done, staged)
            encoded = time.monotonic()
            timings = {"generation_seconds": round(done.generated - done.started, 3),
                       "encoding_seconds": round(encoded - publishing, 3)}

            def metadata(paths: OutputPaths) -> dict:
                attempts = lease.wait_for_database(lambda: _attempts(self.queue, job.id), "read_attempts")
                document = job_metadata(job, attempts, attempt.id, params, paths.video, done.frames.shape,
                                        done.model, timings)
                document["downgrade"] = downgrade(done.requested, rung) if done.downgraded else None
                document.update(frames=video.info.frames, fps=video.interpolation.fps, framing=done.framing,
                                interpolation=video.interpolation.to_dict(), encoder=video.encoder.to_dict(),
                                extras={kind: paths.path(suffix).name for kind, suffix in extras.items()})
                return document

            def record(paths: OutputPaths) -> bool:
                return lease.wait_for_database(lambda: self.queue.set_outputs(
                    job.id, str(paths.video), str(paths.metadata), self.owner), "set_outputs")

            paths = staged.publish(metadata, record, self.faults.before_commit(job.params.get("prompt")))
        if paths is None:  # another worker took the job over meanwhile and makes its set
            raise LeaseLost("the lease was lost before the video was published")
        lease.wait_for_database(lambda: self.queue.finish_attempt(
            attempt.id, "succeeded", peak_gpu_memory_bytes=done.peak_gpu_memory_bytes), "finish_attempt")
        timings = {**timings, "total_seconds": round(time.monotonic() - done.started, 3)}
        if not lease.wait_for_database(lambda: self.queue.succeed(job.id, self.owner, rung=rung.name, timings=timings),
                                       "succeed"):
            log.warning("job_success_not_recorded", job_id=job.id, reason="the lease was lost; recovery finishes it")
            return
        metrics.job_finished("succeeded", time.monotonic() - done.started)
        log.info("job_succeeded", job_id=job.id, output=str(paths.video), rung=rung.name,
                 seconds=round(time.monotonic() - done.started, 3))

    def _write_files(self, done: Generated, staged: StagedOutputs) -> tuple[EncodedVideo, dict[str, str]]:
        """The verified video and the extras the settings ask for, under the set's temporary names."""
        job, params, frames = done.job, done.rung.params, done.frames

        def tags(interpolate: int) -> dict[str, str]:
            return video_tags(job.output_stem, params, model=done.model["id"], version=__version__,
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


def _attempts(queue: JobQueue, job_id: int) -> list[Attempt]:
    job = queue.get(job_id)
    return job.attempts if job else []
