"""The validated parameters of one generation."""

from __future__ import annotations

from dataclasses import asdict, dataclass

INTERPOLATION_FACTORS = (1, 2, 4)
"""Frame interpolation factors: 1 keeps the generated frames as they are."""


@dataclass(frozen=True)
class GenerationParams:
    """Everything the model needs besides the image; already validated by the caller."""

    prompt: str
    width: int
    height: int
    num_frames: int
    fps: int
    steps: int
    guidance_scale: float
    seed: int
    negative_prompt: str | None = None
    interpolate: int = 1  # applied when encoding: k*num_frames frames at k*fps (pipeline.video)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GenerationParams:
        return cls(**data)
