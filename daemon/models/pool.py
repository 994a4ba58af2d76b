"""The loaded models of one worker: load on demand, keep resident what fits, evict the least recently used.

One GPU, several models: a job for a model that is not loaded loads it, first evicting the least
recently used model when `max_loaded` is reached or when the load itself runs out of GPU memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from daemon import metrics
from daemon.models.catalog import ModelCatalog, ServedModel
from daemon.logs import get_logger
from pipeline.generate import VideoGenerator
from pipeline.oom import free_memory, is_oom

log = get_logger("i2vd.pool")


@dataclass(frozen=True)
class LoadedModel:
    model: ServedModel
    generator: VideoGenerator
    revision: str | None  # hub commit of the loaded snapshot, when known


class ModelPool:
    """Loaded models by name, least recently used first."""

    def __init__(self, catalog: ModelCatalog, load: Callable[[ServedModel], LoadedModel], device: str,
                 max_loaded: int = 0) -> None:
        self.catalog = catalog
        self._load = load
        self.device = device  # where every model is placed: cuda:0, cpu
        self.max_loaded = max_loaded  # 0: as many as fit
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._last: str | None = None

    @property
    def resident(self) -> list[str]:
        return list(self._loaded)

    def get(self, name: str) -> LoadedModel:
        """The loaded model `name`, loading it first if needed; a switch from another model is a swap."""
        loaded = self._loaded.get(name)
        was_resident = loaded is not None
        evicted: list[str] = []
        if loaded is None:
            while self.max_loaded and len(self._loaded) >= self.max_loaded:
                evicted.append(self._evict())
            while True:
                try:
                    loaded = self._load(self.catalog.get(name))
                    break
                except Exception as exc:
                    if not (is_oom(exc) and self._loaded):
                        raise
                evicted.append(self._evict())  # outside the except block, whose traceback pins memory
            self._loaded[name] = loaded
        self._loaded.move_to_end(name)
        if self._last is not None and self._last != name:
            log.info("model_swapped", previous=self._last, model=name, loaded=not was_resident,
                     evicted=evicted)
            metrics.model_swaps.inc()
        self._last = name
        return loaded

    def _evict(self) -> str:
        name = next(iter(self._loaded))
        del self._loaded[name]  # the last reference to its pipeline, so free_memory can release it
        free_memory()
        log.info("model_evicted", model=name)
        return name
