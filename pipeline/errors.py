"""Errors the pipeline raises. Each class's docstring is its default message."""


class PipelineError(Exception):
    """Video generation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ModelUnavailable(PipelineError):
    """The model weights could not be loaded."""


class GenerationInterrupted(PipelineError):
    """Generation was stopped at a denoising step on request."""


class EncodeError(PipelineError):
    """ffmpeg did not produce a complete, playable video."""
