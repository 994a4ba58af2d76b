"""The daemon's exception tree. Each class's docstring is its default message."""

from __future__ import annotations


class I2vdError(Exception):
    """i2vd failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InputRejected(I2vdError):
    """The dropped input cannot be used."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        hint: str | None = None,
        field_errors: list[dict] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint
        self.field_errors = field_errors or []


class ConfigError(I2vdError):
    """The settings are invalid."""


class LadderExhausted(I2vdError):
    """Every rung of the OOM downgrade ladder ran out of GPU memory."""
