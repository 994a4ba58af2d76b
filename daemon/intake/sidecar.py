"""The one place that knows the sidecar schema: parse, validate, resolve presets."""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from daemon.errors import InputRejected
from daemon.jobs.codes import ErrorCode
from daemon.jobs.errors import ModelNotServed
from pipeline.backends.base import BackendRules
from pipeline.params import INTERPOLATION_FACTORS, PRESET_NAMES, GenerationParams, PresetName

if TYPE_CHECKING:
    from daemon.models.catalog import ModelCatalog, ServedModel
    from daemon.settings import Settings

MAX_SIDECAR_BYTES = 64 * 1024
RESOLUTIONS = (256, 512, 768, 1024)
SEED_MAX = 2**63 - 1

PRESETS = PRESET_NAMES

# Path separators, and every C0/C1 control character (NUL, newline, ESC ...) and DEL: they would
# reach file names and the terminals that list them.
_UNSAFE_STEM_CHAR = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")


class Sidecar(BaseModel):
    """NAME.json beside NAME.png: the prompt and optional parameters.

    The bounds here hold for every backend; `resolve` checks the tighter rules of the backend that
    will run the job (size multiple, frame rule, ranges, whether a prompt is needed).
    """

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    prompt: Annotated[str, Field(min_length=1, max_length=4000)] | None = None
    negative_prompt: Annotated[str, Field(max_length=4000)] | None = None
    model: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    preset: PresetName | None = None
    resolution: int | None = None
    width: Annotated[int, Field(ge=8, le=8192)] | None = None
    height: Annotated[int, Field(ge=8, le=8192)] | None = None
    num_frames: Annotated[int, Field(ge=1, le=1000)] | None = None
    fps: Annotated[int, Field(ge=1, le=120)] | None = None
    steps: Annotated[int, Field(ge=1, le=1000)] | None = None
    guidance_scale: Annotated[float, Field(ge=0, le=100)] | None = None
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] | None = None
    output_name: Annotated[str, Field(min_length=1, max_length=120)] | None = None
    priority: Annotated[int, Field(ge=-10, le=10)] = 0
    interpolate: int | None = None

    @field_validator("resolution", mode="before")
    @classmethod
    def _resolution(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip().lower().removesuffix("p")
            if not text.isdigit():
                raise ValueError("must be one of 256, 512, 768, 1024 (\"512p\" is accepted)")
            value = int(text)
        if isinstance(value, int) and not isinstance(value, bool) and value not in RESOLUTIONS:
            raise ValueError("must be one of 256, 512, 768, 1024")
        return value

    @field_validator("interpolate")
    @classmethod
    def _interpolate(cls, value: int | None) -> int | None:
        if value is not None and value not in INTERPOLATION_FACTORS:
            raise ValueError("must be 1, 2 or 4 (frames per generated frame)")
        return value

    @field_validator("output_name")
    @classmethod
    def _output_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if _UNSAFE_STEM_CHAR.search(value) or value.startswith(".") or ".." in value:
            raise ValueError("must be a plain file name: no '/', '\\', '..', control characters or leading dot")
        if any(unicodedata.category(c) == "Cf" for c in value):  # U+202E would show x<RLO>gnp.exe as xexe.png
            raise ValueError("must be a plain file name: no invisible format characters (such as U+202E)")
        return value

    @model_validator(mode="after")
    def _size_is_unambiguous(self) -> Sidecar:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height must be given together")
        if self.width is not None and self.resolution is not None:
            raise ValueError("give either resolution or width/height, not both")
        return self


def parse_sidecar(raw: bytes) -> Sidecar:
    """Decode and validate sidecar bytes; raise InputRejected naming what is wrong."""
    if len(raw) > MAX_SIDECAR_BYTES:
        raise InputRejected(
            ErrorCode.SIDECAR_TOO_LARGE,
            f"The sidecar is {len(raw)} bytes; the limit is {MAX_SIDECAR_BYTES}.",
            hint="A sidecar holds a prompt and a few parameters; check that the right file was dropped.",
        )
    if not raw.strip():
        raise InputRejected(ErrorCode.EMPTY_FILE, "The sidecar is empty.",
                            hint='A minimal sidecar is {"prompt": "waves rolling onto a beach"}.')
    try:
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_unique_keys)
        # JSON allows escapes of half a character ("\ud800"); no text column or file name does.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputRejected(ErrorCode.INVALID_JSON, f"The sidecar is not UTF-8 text ({exc.reason}).",
                            hint="Save the sidecar as UTF-8 JSON.") from None
    except UnicodeEncodeError:
        raise InputRejected(ErrorCode.INVALID_JSON, "The sidecar holds a lone surrogate escape (\\ud800 to \\udfff), "
                            "which is not a character.", hint="Save the sidecar as UTF-8 JSON.") from None
    except json.JSONDecodeError as exc:
        raise InputRejected(
            ErrorCode.INVALID_JSON,
            f"The sidecar is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
            hint='A minimal sidecar is {"prompt": "waves rolling onto a beach"}.',
        ) from None
    except _DuplicateKey as exc:
        raise InputRejected(ErrorCode.INVALID_JSON, f"The sidecar gives {exc.key!r} more than once.",
                            hint="Keep one value for each field.") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits())
        raise InputRejected(ErrorCode.INVALID_JSON, "The sidecar holds a number with too many digits to read.",
                            hint="Numbers in a sidecar are small: check seed, steps and the like.") from None
    except RecursionError:
        raise InputRejected(ErrorCode.INVALID_JSON, "The sidecar nests arrays or objects too deeply to read.",
                            hint='A sidecar is one flat object: {"prompt": "waves rolling onto a beach"}.') from None
    if not isinstance(data, dict):
        raise InputRejected(
            ErrorCode.SIDECAR_NOT_OBJECT,
            f"The sidecar must be a JSON object, not a JSON {type(data).__name__}.",
            hint='A minimal sidecar is {"prompt": "waves rolling onto a beach"}.',
        )
    try:
        return Sidecar.model_validate(data)
    except ValidationError as exc:
        field_errors = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(sidecar)", "message": _message(err)}
            for err in exc.errors(include_url=False)
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in field_errors)
        raise InputRejected(
            ErrorCode.INVALID_SIDECAR,
            f"The sidecar has invalid fields: {summary}.",
            hint="See the sidecar fields in README.md.",
            field_errors=field_errors,
        ) from None


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's object hook: a key given twice is an ambiguity, not "the last one wins"."""
    data: dict = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def _message(err: ErrorDetails) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required field is missing"
    return err["msg"].removeprefix("Value error, ")


@dataclass(frozen=True)
class Route:
    """Which served model runs a job, and the preset its folder asks for."""

    model: ServedModel
    folder_preset: str | None


def route(sidecar: Sidecar, folder: PurePath, catalog: ModelCatalog) -> Route:
    """The sidecar's "model", else a model named by the first subfolder, else the default.

    Subfolders: inbox/<preset>/..., inbox/<model>/..., inbox/<model>/<preset>/...
    """
    parts = folder.parts
    folder_model = catalog.find(parts[0]) if parts and parts[0] in catalog.names else None
    preset_part = parts[1 if folder_model else 0] if len(parts) > (1 if folder_model else 0) else None
    model = folder_model or catalog.default
    if sidecar.model is not None:
        named = catalog.find(sidecar.model)
        if named is None:
            raise _invalid([{"field": "model", "message": str(ModelNotServed(sidecar.model, catalog.describe()))}])
        model = named
    return Route(model, preset_part if preset_part in PRESETS else None)


def params_for(sidecar: Sidecar, folder: PurePath, catalog: ModelCatalog,
               settings: Settings) -> tuple[ServedModel, GenerationParams]:
    """The model a sidecar dropped in `folder` goes to, and its parameters checked against that model."""
    chosen = route(sidecar, folder, catalog)
    params = resolve(
        sidecar,
        chosen.model.rules,
        default_preset=chosen.folder_preset or settings.default_preset,
        default_fps=settings.default_fps,
        default_negative_prompt=settings.default_negative_prompt,
        default_interpolate=settings.default_interpolate,
        model_name=chosen.model.name,
    )
    return chosen.model, params


def resolve(
    sidecar: Sidecar,
    rules: BackendRules,
    *,
    default_preset: str,
    default_fps: int | None = None,
    default_negative_prompt: str | None = None,
    default_interpolate: int = 1,
    model_name: str | None = None,
) -> GenerationParams:
    """Apply the backend's preset, then the sidecar's explicit fields; draw a seed when none is given.

    Raises InputRejected naming each field the backend cannot take.
    """
    preset = rules.presets[sidecar.preset or default_preset]
    width, height = preset.width, preset.height
    if sidecar.resolution is not None:  # the long side; the preset's aspect ratio, rounded to the multiple
        scale = sidecar.resolution / max(preset.width, preset.height)
        width, height = (max(rules.size_multiple, round(side * scale / rules.size_multiple) * rules.size_multiple)
                         for side in (preset.width, preset.height))
    fps = preset.fps
    if default_fps is not None and rules.fps_range[0] <= default_fps <= rules.fps_range[1]:
        fps = default_fps
    params = GenerationParams(
        prompt=sidecar.prompt,
        negative_prompt=sidecar.negative_prompt or default_negative_prompt,
        width=sidecar.width or width,
        height=sidecar.height or height,
        num_frames=sidecar.num_frames or preset.num_frames,
        fps=sidecar.fps or fps,
        steps=sidecar.steps or preset.steps,
        guidance_scale=sidecar.guidance_scale if sidecar.guidance_scale is not None else preset.guidance_scale,
        seed=sidecar.seed if sidecar.seed is not None else secrets.randbelow(2**32),
        interpolate=sidecar.interpolate or default_interpolate,
        keep_aspect=sidecar.width is None,  # a preset's (or resolution's) size: a budget in the image's aspect
    )
    errors = backend_errors(sidecar, params, rules, model_name or rules.name)
    if errors:
        raise _invalid(errors)
    return params


def backend_errors(sidecar: Sidecar, params: GenerationParams, rules: BackendRules, model: str) -> list[dict]:
    """What `rules` forbids in the resolved params, named by the sidecar field that asked for it."""
    errors = []
    size_field = "resolution" if sidecar.resolution is not None else None

    def check(field: str | None, ok: bool, message: str) -> None:
        if not ok and field is not None:
            errors.append({"field": field, "message": f"{message} for model {model}"})

    if rules.prompt_required and params.prompt is None:
        errors.append({"field": "prompt", "message": f"required field is missing (model {model} needs a text "
                                                     "prompt)"})
    low, high, multiple = rules.min_size, rules.max_size, rules.size_multiple
    for name, value in (("width", params.width), ("height", params.height)):
        field = name if getattr(sidecar, name) is not None else size_field
        check(field, low <= value <= high and value % multiple == 0,
              f"must be a multiple of {multiple} between {low} and {high}" + (
                  f" (it gives {params.width}x{params.height})" if field == "resolution" else ""))
    check("num_frames" if sidecar.num_frames is not None else None, rules.frames.valid(params.num_frames),
          f"must be {rules.frames.describe()}")
    for name, (low_, high_) in (("steps", rules.steps_range), ("fps", rules.fps_range),
                                ("guidance_scale", rules.guidance_range)):
        check(name if getattr(sidecar, name) is not None else None, low_ <= getattr(params, name) <= high_,
              f"must be between {low_:g} and {high_:g}")
    # A resolution can fail for width and height alike: name it once.
    return [e for i, e in enumerate(errors) if e not in errors[:i]]


def _invalid(field_errors: list[dict]) -> InputRejected:
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in field_errors)
    return InputRejected(ErrorCode.INVALID_SIDECAR, f"The sidecar has invalid fields: {summary}.",
                         hint="See the sidecar fields and the backends table in README.md.",
                         field_errors=field_errors)
