"""The models this daemon serves: their names, backends and parameter rules (torch-free).

Built from settings (`models`, or `model` alone). Intake validates a sidecar against the rules of the
model it names (or its subfolder names, or the default); the worker loads models by name; a job row
records the name, so daemons sharing a database must give their models the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.errors import ConfigError
from daemon.settings import Settings
from pipeline.backends import ModelSource, parse_model
from pipeline.backends.base import BackendRules
from pipeline.tiny import tiny_rules
from pipeline.native import native_rules


@dataclass(frozen=True)
class ServedModel:
    name: str  # what sidecars, subfolders and the jobs table call it
    value: str  # as configured
    source: ModelSource

    @property
    def rules(self) -> BackendRules:
        """This checkpoint's native presets (fps, frames, steps its configs imply); a tiny model's are tiny."""
        rules = native_rules(self.source)
        return tiny_rules(rules) if self.source.tiny else rules

    def tiny_dir(self, state_dir: Path) -> Path:
        """Where the tiny model of this backend is saved (state/models/tiny-<backend>)."""
        return state_dir / "models" / f"tiny-{self.source.backend}"


class ModelCatalog:
    """The served models in settings order; the first is the default."""

    def __init__(self, models: list[ServedModel]) -> None:
        self.models = models
        self._by_name = {m.name: m for m in models}

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalog:
        """Every configured model, its backend detected; ConfigError names the model that cannot be served."""
        models: list[ServedModel] = []
        for name, value in settings.model_entries:
            try:
                source = parse_model(value)
            except LookupError as exc:
                raise ConfigError(f"model {value!r}: {exc}") from None
            models.append(ServedModel(name or source.backend, value, source))
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"several models would be called {', '.join(duplicates)}: name them in the "
                            "models setting, e.g. NAME=VALUE")
        return cls(models)

    @property
    def default(self) -> ServedModel:
        return self.models[0]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str) -> ServedModel:
        return self._by_name[name]

    def find(self, wanted: str) -> ServedModel | None:
        """A served model by its name, its configured value or its canonical value (hub id, tiny:<backend>)."""
        if wanted in self._by_name:
            return self._by_name[wanted]
        return next((m for m in self.models if wanted in (m.value, m.source.value, m.source.source)), None)

    def describe(self) -> str:
        """For error messages: 'NAME (default), NAME, ...'."""
        return ", ".join(f"{m.name} (default)" if m is self.default else m.name for m in self.models)
