"""The one logger set-up: structlog events as JSON lines in the log file, readable on a TTY."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(log_file: Path | None, level: str = "info", *, console: bool = True) -> None:
    """Route structlog through stdlib logging to a JSON file and the console."""
    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(_formatter(structlog.processors.JSONRenderer()))
        handlers.append(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        renderer = (
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
            if sys.stderr.isatty()
            else structlog.processors.JSONRenderer()
        )
        stream.setFormatter(_formatter(renderer))
        handlers.append(stream)

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    set_level(level)
    # Third-party chatter (diffusers deprecation notices, hub retries) only when it matters.
    for noisy in ("transformers", "huggingface_hub", "watchdog", "alembic", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("diffusers").setLevel(logging.ERROR)  # I2VGenXLPipeline's deprecation notice

    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def _formatter(renderer: object) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
