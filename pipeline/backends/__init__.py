"""The registry of image-to-video backends, and how a model value picks its backend.

Every module here except `base` is one backend: it defines `RULES` (a BackendRules) and `Backend`
(a VideoBackend). Modules are found by listing the package, so adding a backend is adding its file.
Importing this package loads no torch: each backend imports the model stack inside its methods.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.backends.base import BackendRules, VideoBackend, looks_like_path
from pipeline.errors import ModelUnavailable

if TYPE_CHECKING:
    from pipeline.runtime import Placement

DEFAULT_BACKEND = "i2vgen-xl"
TINY = "tiny"
"""Model value `tiny` or `tiny:<backend>`: a tiny random pipeline built offline (smoke tests)."""


def _discover() -> tuple[dict[str, BackendRules], dict[str, str]]:
    rules: dict[str, BackendRules] = {}
    modules: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        rules[module.RULES.name] = module.RULES
        modules[module.RULES.name] = module.__name__
    return rules, modules


RULES, _MODULES = _discover()


@functools.cache
def get_backend(name: str) -> VideoBackend:
    if name not in RULES:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(RULES)}")
    return importlib.import_module(_MODULES[name]).Backend()


def backend_for_class(class_name: str) -> str:
    """The backend serving a diffusers pipeline class (model_index.json `_class_name`)."""
    for rules in RULES.values():
        if class_name in rules.pipeline_classes:
            return rules.name
    raise LookupError(f"no backend serves the pipeline class {class_name}; i2vd serves "
                      + ", ".join(c for r in RULES.values() for c in r.pipeline_classes))


def load_pipeline(model: str, placement: Placement, backend: str | None = None):
    """The pipeline of a hub id or local folder, loaded by `backend` (detected when not given)."""
    if backend is None:
        try:
            backend = parse_model(model).backend
        except LookupError as exc:
            raise ModelUnavailable(f"model {model!r}: {exc}") from None
    return get_backend(backend).load(model, placement)


def detect_backend(model_dir: str | Path, backend: str | None = None) -> str:
    """The backend of a diffusers folder, from model_index.json's `_class_name` (or `backend`, checked).

    LookupError when no backend serves it, a text-only checkpoint included.
    """
    path = Path(model_dir).expanduser() / "model_index.json"
    try:
        index = json.loads(path.read_text())
        class_name = index["_class_name"]
    except FileNotFoundError:
        raise LookupError(f"{path.parent} has no model_index.json (not a diffusers pipeline folder)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LookupError(f"cannot read the pipeline class from {path}: {exc}") from None
    backend = backend or backend_for_class(class_name)
    refusal = RULES[backend].refusal(index) if class_name in RULES[backend].pipeline_classes else None
    if refusal:
        raise LookupError(f"{path.parent} is {refusal}")
    return backend


@dataclass(frozen=True)
class ModelSource:
    """What one model value means: which backend runs it, and from where it loads."""

    backend: str
    source: str  # hub id or local folder; for a tiny model, the backend name
    tiny: bool = False
    dtype: str | None = None  # from a `;<dtype>` suffix; None: I2VD_DTYPE, else the backend's default

    @property
    def value(self) -> str:
        """The canonical model value (what metadata records as the model id)."""
        return f"{TINY}:{self.backend}" if self.tiny else self.source


DTYPES = ("float16", "bfloat16", "float32")


def parse_model(value: str) -> ModelSource:
    """`tiny[:<backend>]`, `<backend>` (its default weights), `<backend>:<hub id or folder>`,
    a local diffusers folder (detected from model_index.json), or a hub id (from the local hub
    cache's model_index.json, else from the backends' known hub ids); any of them optionally followed
    by `;float16`, `;bfloat16` or `;float32` (its dtype). LookupError says what to write.
    """
    value, _, dtype = (part.strip() for part in value.partition(";"))
    if dtype and dtype not in DTYPES:
        raise LookupError(f"unknown dtype {dtype!r} after ';': write {', '.join(DTYPES)}")
    return replace(_parse_value(value), dtype=dtype or None)


def _parse_value(value: str) -> ModelSource:
    prefix, sep, rest = value.partition(":")
    if value == TINY or (sep and prefix == TINY):
        backend = rest or DEFAULT_BACKEND
        _known(backend)
        return ModelSource(backend, backend, tiny=True)
    if value in RULES:
        return _checked(ModelSource(value, RULES[value].default_model))
    if sep and prefix in RULES:
        return _checked(ModelSource(prefix, rest))
    if looks_like_path(value):
        return ModelSource(detect_backend(value), value)
    cached = _cached_model_index(value)
    if cached is not None:
        return ModelSource(detect_backend(cached.parent), value)
    for rules in RULES.values():
        if any(value.lower().startswith(p.lower()) for p in rules.hub_prefixes):
            return ModelSource(rules.name, value)
    raise LookupError(f"cannot tell which backend runs {value!r}: name it as <backend>:{value} "
                      f"(backends: {', '.join(RULES)})")


def _checked(source: ModelSource) -> ModelSource:
    """`source`, when its checkpoint (a folder, or a hub id's copy in the local cache) suits its backend."""
    if looks_like_path(source.source):
        if (Path(source.source).expanduser() / "model_index.json").is_file():  # a missing one fails at load
            detect_backend(source.source, source.backend)
    elif (cached := _cached_model_index(source.source)) is not None:
        detect_backend(cached.parent, source.backend)
    return source


def _known(backend: str) -> None:
    if backend not in RULES:
        raise LookupError(f"unknown backend {backend!r}; known: {', '.join(RULES)}")


def _cached_model_index(repo_id: str) -> Path | None:
    """model_index.json of a hub id in the local Hugging Face cache, without any network access."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "model_index.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None


def cached_revision(repo_id: str) -> str | None:
    """The commit hash of a hub id's snapshot in the local cache (the one `main` points at), or None."""
    found = _cached_model_index(repo_id)
    # .../models--org--name/snapshots/<commit>/model_index.json
    return found.parent.name if found is not None and found.parent.parent.name == "snapshots" else None
