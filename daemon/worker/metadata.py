"""The metadata JSON written beside each video: parameters, model, timings, inputs, attempts, versions."""

from __future__ import annotations

import functools
import platform
from importlib.metadata import version
from pathlib import Path

from daemon import __version__
from daemon.db.tables import Job, utcnow
from daemon.models.pool import LoadedModel
from pipeline.oom import Rung
from pipeline.params import GenerationParams


def job_metadata(job: Job, attempts, attempt_id: int, params: GenerationParams, video: Path, shape,
                 model: dict, timings: dict) -> dict:
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
        "model": model,
        "timings": {
            "queued_at": job.created_at.isoformat(),
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "finished_at": finished.isoformat(),
            **timings,
        },
        "attempts": [_attempt_summary(a, finished if a.id == attempt_id else None) for a in attempts],
        "versions": dict(package_versions()),
    }


def model_metadata(loaded: LoadedModel) -> dict:
    """The model that made the video: name, id, backend, pipeline class, revision, placement."""
    served, generator = loaded.model, loaded.generator
    return {
        "name": served.name,
        "id": served.value if served.source.tiny else served.source.source,  # hub id or folder
        "backend": served.source.backend,
        "pipeline_class": type(generator.pipe).__name__,
        "revision": loaded.revision,
        "smoke_test": served.source.tiny,
        "device": str(generator.placement.device),
        "dtype": str(generator.placement.dtype).removeprefix("torch."),
    }


def downgrade(requested: GenerationParams, rung: Rung) -> dict:
    """What the OOM ladder changed from the request."""
    produced = rung.params
    return {
        "rung": rung.name,
        "memory": {"vae_slicing": rung.memory.vae_slicing, "cpu_offload": rung.memory.cpu_offload,
                   "sequential_offload": rung.memory.sequential_offload},
        "from": {"width": requested.width, "height": requested.height, "num_frames": requested.num_frames},
        "to": {"width": produced.width, "height": produced.height, "num_frames": produced.num_frames},
    }


@functools.cache
def package_versions() -> dict[str, str]:
    """Read once: the metadata files on disk may change under a running daemon, its loaded code cannot."""
    versions = {"i2vd": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers"):
        versions[name] = version(name)
    return versions


def _attempt_summary(a, succeeded_at=None) -> dict:
    """One attempt for the metadata; `succeeded_at` for the attempt whose set this is, not yet closed."""
    finished_at = succeeded_at or a.finished_at
    return {"number": a.number, "worker": a.worker, "gpu": a.worker_record.gpu if a.worker_record else None,
            "rung": a.rung, "params": a.params,
            "outcome": "succeeded" if succeeded_at else a.outcome, "error": a.error_message,
            "started_at": a.started_at.isoformat(),
            "finished_at": finished_at.isoformat() if finished_at else None}
