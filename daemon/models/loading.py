"""Loading served models: each one's placement (its dtype from its entry, I2VD_DTYPE or its backend) and pipeline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.logs import get_logger
from daemon.models.catalog import ModelCatalog, ServedModel
from daemon.settings import Settings

if TYPE_CHECKING:
    import torch

    from daemon.models.pool import LoadedModel, ModelPool
    from pipeline.runtime import Placement

log = get_logger("i2vd.service")


def placement_for(settings: Settings, device: torch.device, model: ServedModel) -> Placement:
    """Where and in what dtype `model` runs: its `;<dtype>` suffix, else I2VD_DTYPE, else (auto) its backend's."""
    from pipeline.runtime import resolve_placement

    return resolve_placement(str(device), model.source.dtype or settings.dtype, model.rules.default_dtype)


def load_generator(settings: Settings, device: torch.device, model: ServedModel) -> LoadedModel:
    """Load one served model; a tiny smoke-test model is built on first use."""
    from daemon.models.pool import LoadedModel
    from pipeline.backends import cached_revision, get_backend
    from pipeline.generate import VideoGenerator
    from pipeline.runtime import dtype_name
    from pipeline.tiny import ensure_tiny_model

    placement = placement_for(settings, device, model)
    backend = get_backend(model.source.backend)
    source = model.source.source
    if model.source.tiny:
        source = str(ensure_tiny_model(model.tiny_dir(settings.state_dir), model.source.backend))
        log.warning("smoke_test_model", model=model.name,
                    detail=f"{model.source.value}: a tiny random model; videos are noise")
    elif placement.device.type == "cpu":
        log.warning("cpu_generation_slow", model=model.name, detail="no CUDA GPU: generation with a real "
                    "model on CPU takes hours per video; set I2VD_DEVICE=cuda on a GPU machine")
    log.info("model_loading", model=model.name, id=model.source.value, backend=model.source.backend,
             device=str(placement.device), dtype=dtype_name(placement.dtype))
    started = time.monotonic()
    generator = VideoGenerator(backend.load(source, placement), placement, backend=backend,
                               decode_chunk_size=settings.decode_chunk_size)
    revision = None if model.source.tiny or Path(source).is_dir() else cached_revision(source)
    log.info("model_loaded", model=model.name, seconds=round(time.monotonic() - started, 2))
    return LoadedModel(model, generator, revision)


def load_models(settings: Settings, device: torch.device, catalog: ModelCatalog) -> ModelPool:
    """The worker's model pool on `device`, with the default model loaded now (a broken setup fails at start)."""
    from daemon.models.pool import ModelPool

    pool = ModelPool(catalog, lambda model: load_generator(settings, device, model), str(device),
                     settings.max_loaded_models)
    pool.get(catalog.default.name)
    return pool
