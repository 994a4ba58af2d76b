"""The one logger set-up: structlog events as JSON lines in a rotating log file, and on the console
readable on a TTY, as JSON lines on stdout for journald under systemd, else as JSON lines on stderr.

Every line, ours or a library's, passes `redact` last: no credentials, query strings or bearer tokens
reach the file or the journal (a webhook URL like https://user:pass@host/hook?token=... stays secret).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from pathlib import Path

import structlog

_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


# URL credentials and query strings (absolute URLs, and paths like those of an HTTP request line), and
# Authorization header values.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#@'\"<>]*@")
_QUERY = re.compile(r"(/[^\s?#'\"<>]*)\?[^\s#'\"<>]+")
_AUTHORIZATION = re.compile(r"(?i)(\bbearer\s+|\bauthorization['\"]?\s*[:=]\s*['\"]?(?:basic\s+|bearer\s+)?)"
                            r"[a-z0-9._~+/=-]{8,}")
REDACTED = "[redacted]"

# syslog priorities; journald reads a "<N>" line prefix on stdout as the line's priority.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def configure(log_file: Path | None, level: str = "info", *, console: bool = True, max_bytes: int = 0,
              backup_count: int = 1) -> None:
    """Route structlog through stdlib logging to a JSON file (rotated at max_bytes) and the console."""
    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        file_handler.setFormatter(_formatter(structlog.processors.JSONRenderer()))
        handlers.append(file_handler)
    if console:
        if sys.stderr.isatty():  # a person is watching, even inside a systemd-started terminal
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(_formatter(structlog.dev.ConsoleRenderer(colors=True)))
        elif under_systemd():
            stream = logging.StreamHandler(sys.stdout)
            stream.setFormatter(_formatter(structlog.processors.JSONRenderer(), _JournalFormatter))
        else:
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(_formatter(structlog.processors.JSONRenderer()))
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
    logging.getLogger("diffusers").setLevel(logging.ERROR)  # deprecation notices of the pipelines
    # A line per request at INFO, full URL included: our own webhook events say what matters.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)

    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def set_level(level: str) -> None:
    """Change the level of every handler at once; safe while the daemon runs."""
    logging.getLogger().setLevel(level.upper())


def redact(text: str) -> str:
    """`text` without URL credentials, query strings or Authorization values."""
    text = _USERINFO.sub(r"\1", text)
    text = _QUERY.sub(rf"\1?{REDACTED}", text)
    return _AUTHORIZATION.sub(rf"\1{REDACTED}", text)


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    shown = repr(value)  # what the renderers would show; replaced only where it holds a secret
    return value if redact(shown) == shown else redact(shown)


def _redact_event(_logger: object, _name: str, event_dict: dict) -> dict:
    return {key: _redact_value(value) for key, value in event_dict.items()}


def under_systemd() -> bool:
    """True when a service manager started us (its output then goes to the journal)."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


class _JournalFormatter(structlog.stdlib.ProcessorFormatter):
    """One JSON line per event, prefixed with its syslog priority so `journalctl -p` works."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


def _formatter(renderer: object, cls: type = structlog.stdlib.ProcessorFormatter):
    return cls(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_event,  # after the traceback became text: exception messages carry URLs too
            renderer,
        ],
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
