"""Errors the pipeline raises. Each class's docstring is its default message.

Each class carries the job error `code` it maps to and whether another attempt could change the outcome
(`retryable`): the daemon decides from these, not from the class names.
"""


class PipelineError(Exception):
    """Video generation failed."""

    code = "generation_error"
    retryable = True

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ModelUnavailable(PipelineError):
    """The model weights could not be loaded."""

    code = "model_unavailable"


class GenerationInterrupted(PipelineError):
    """Generation was stopped at a denoising step on request."""


class EncodeError(PipelineError):
    """ffmpeg did not produce a complete, playable video."""

    code = "encode_error"


class NonFiniteOutput(PipelineError):
    """The model produced NaN/Inf or constant frames (a numerics problem, often the wrong dtype)."""

    code = "nonfinite_output"
    retryable = False


class EncoderUnavailable(PipelineError):
    """The configured video encoder does not work with this ffmpeg on this machine."""

    code = "encode_error"
    retryable = False
