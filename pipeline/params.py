"""The validated parameters of one generation, and their persisted (versioned) form."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

PresetName = Literal["preview", "standard", "high", "max"]
PRESET_NAMES: tuple[PresetName, ...] = get_args(PresetName)
"""Preset names; what each means comes from the backend that runs the job (BackendRules.presets)."""

RungName = Literal["vae_slicing", "cpu_offload", "sequential_offload", "fewer_frames", "lower_resolution"]
LADDER_RUNGS: tuple[RungName, ...] = get_args(RungName)
"""Every OOM rung i2vd knows, cheapest loss first: memory modes cost only time, the last two cost output."""

VERSION = 3
"""Version of the persisted dict. 1: unversioned, prompt always set (before backends). 2: "version"
key; prompt may be None (backends that take no text). 3: "keep_aspect" (a preset's size is a pixel
budget). Bump it with an upgrade step in `_UPGRADES` whenever a field is added, changes meaning or
becomes required, so jobs queued before an upgrade still run, and an older i2vd sharing the database
refuses newer jobs in one line instead of failing on an unknown field."""


def _from_v1(data: dict) -> dict:
    return data  # same fields; v1 simply had no "version" key


def _from_v2(data: dict) -> dict:
    return {**data, "keep_aspect": False}  # v2 jobs ran at exactly the size asked


_UPGRADES = {1: _from_v1, 2: _from_v2}  # version n -> n+1


INTERPOLATION_FACTORS = (1, 2, 4)
"""Frame interpolation factors: 1 keeps the generated frames as they are."""


@dataclass(frozen=True)
class GenerationParams:
    """Everything the model needs besides the image; already validated by the caller."""

    prompt: str | None
    width: int
    height: int
    num_frames: int
    fps: int
    steps: int
    guidance_scale: float
    seed: int
    negative_prompt: str | None = None
    interpolate: int = 1  # applied when encoding: k*num_frames frames at k*fps (pipeline.video)
    keep_aspect: bool = False
    """width x height is a pixel budget (the size came from a preset): where the backend's authors keep the
    image's aspect ratio, the video takes it within that budget (pipeline.framing). False: exactly as asked."""

    def to_dict(self) -> dict:
        return {"version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> GenerationParams:
        """From a persisted dict of this or any older version (a job queued before an upgrade)."""
        data = dict(data)
        version = data.pop("version", 1)
        if not isinstance(version, int) or not 1 <= version <= VERSION:
            raise ValueError(f"job parameters have version {version!r}; this i2vd reads 1 to {VERSION} "
                             "(was the job queued by a newer i2vd?)")
        while version < VERSION:
            data = _UPGRADES[version](data)
            version += 1
        return cls(**data)
