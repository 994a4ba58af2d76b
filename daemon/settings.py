"""The one settings object: environment (I2VD_*), an optional TOML file, then defaults."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pipeline.params import INTERPOLATION_FACTORS, LADDER_RUNGS, PRESET_NAMES, PresetName, RungName
from pipeline.backends import DEFAULT_BACKEND, TINY

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DONE_DIR, FAILED_DIR = "done", "failed"  # inside the inbox
RESERVED_NAMES = frozenset({*PRESET_NAMES, DONE_DIR, FAILED_DIR})


class Settings(BaseSettings):
    """Everything i2vd can be told; see README's Settings table."""

    model_config = SettingsConfigDict(env_prefix="I2VD_", extra="forbid", validate_default=True)

    # Folders
    inbox_dir: Path = Field(Path("inbox"), description="Folder watched for image + sidecar pairs.")
    outputs_dir: Path = Field(Path("outputs"), description="Where MP4s and their metadata JSON go.")
    state_dir: Path = Field(Path("state"), description="Database, smoke-test model and default log file.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite file in state_dir.")
    log_file: Path | None = Field(None, description="JSON-lines log; default state_dir/i2vd.log.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_max_bytes: int = Field(50 * 1024 * 1024, ge=0, description="Rotate the log file at this size; 0 never.")
    log_backup_count: int = Field(5, ge=1, description="Rotated log files kept (i2vd.log.1 ...).")

    # Model
    model: str = Field(DEFAULT_BACKEND, description="The one model served when `models` is empty: a hub id, "
                       "local folder, backend name (its default weights), backend:id, or tiny[:backend].")
    models: tuple[str, ...] = Field((), description="Models served, the first the default; each a `model` "
                                    "value, optionally NAME=VALUE (the name sidecars and subfolders use).")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"

    # Generation defaults (a sidecar overrides them)
    default_preset: PresetName = "standard"
    default_negative_prompt: str | None = None
    default_fps: int | None = Field(None, ge=1, le=120, description="When a sidecar gives none; default: "
                                    "the backend's preset (used only where the backend allows it).")
    output_prefix: str = Field("", description="Prepended to every output file name.")
    default_interpolate: int = Field(1, description="Frame interpolation factor (1, 2 or 4) when the sidecar "
                                     "gives none: k times the frames at k times the fps.")

    # Extra outputs beside each video
    poster: bool = Field(True, description="Write NAME.jpg, the video's middle frame.")
    preview: bool = Field(True, description="Write NAME.preview.webp, a small looping animation.")
    keep_raw_video: bool = Field(False, description="With interpolation, also keep the video as generated, "
                                 "NAME.raw.mp4.")

    # Video encoding (restart to change; `i2vd doctor` says which encoder `auto` picks here)
    video_encoder: Literal["auto", "libx264", "h264_nvenc"] = Field(
        "auto", description="H.264 encoder: auto (h264_nvenc where this ffmpeg has it and an NVIDIA GPU is "
        "present, else libx264), libx264, or h264_nvenc (refused at start-up where it cannot work).")
    video_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                          "veryslow"] = Field("medium", description="libx264's preset: speed against file size.")
    video_crf: int = Field(18, ge=0, le=51, description="Constant quality, lower is better: libx264's CRF, "
                           "NVENC's -cq.")
    video_threads: int = Field(0, ge=0, description="libx264 threads; 0: the cores the worker does not use.")

    # Intake
    settle_seconds: float = Field(3.0, gt=0, description="A file is ready once unchanged this long.")
    pair_timeout_seconds: float = Field(600.0, gt=0, description="How long a lone image or sidecar waits.")
    default_prompt: str | None = Field(None, description="Prompt for an image whose sidecar never came.")
    observer: Literal["auto", "inotify", "polling"] = "auto"
    poll_interval_seconds: float = Field(5.0, gt=0)
    rescan_seconds: float = Field(60.0, gt=0, description="Full inbox rescan, the safety net for lost events.")
    max_image_bytes: int = Field(100 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(64_000_000, gt=0, description="Larger images are refused undecoded.")
    follow_symlinks: bool = False

    # Worker
    intake_only: bool = Field(False, description="Queue pairs but run no jobs and load no model; another "
                              "i2vd on the same database runs them.")
    lease_seconds: float = Field(60.0, gt=0, description="A running job's lease, renewed by a heartbeat.")
    worker_poll_seconds: float = Field(1.0, gt=0, description="How often an idle worker looks for jobs.")
    stop_grace_seconds: float = Field(10.0, ge=0, description="On SIGTERM, time the running job may finish.")
    max_crash_attempts: int = Field(3, ge=1, description="Crashes of the worker on one job before it is failed.")
    max_retries: int = Field(2, ge=0, description="Retries of a job after a transient failure.")
    retry_backoff_seconds: float = Field(30.0, ge=0, description="First retry delay; doubles each time.")
    oom_ladder: tuple[RungName, ...] = LADDER_RUNGS
    max_loaded_models: int = Field(0, ge=0, description="Models kept loaded at once (0: as many as fit; "
                                   "the least recently used is evicted when a load runs out of GPU memory).")
    decode_chunk_size: int = Field(8, ge=1, description="Frames the VAE decodes at once (before the ladder).")
    publish_backlog: int = Field(1, ge=0, description="Generated jobs that may wait for the publisher thread "
                                 "while the next one generates (0: publish each job before claiming the next).")

    # Fault injection, for tests on machines without a GPU
    fault_oom_above: int | None = Field(None, description="Raise CUDA OOM above width*height*frames.")
    fault_crash_prompt: str | None = Field(None, description="SIGKILL the worker mid-job on prompts with this.")
    fault_crash_publish: str | None = Field(None, description="SIGKILL the worker between placing a video and "
                                            "its metadata, on prompts with this.")
    fault_hold_publish: Path | None = Field(None, description="Hold every publish until this file exists.")

    # Service
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics on metrics_address.")
    metrics_address: str = Field("127.0.0.1:9731", description="host:port of /metrics; port 0 picks a free one.")
    startup_timeout_seconds: float = Field(
        3600.0, gt=0, description="Under systemd: how long migrations plus model download and load may take.")

    # Events: webhooks and retention (URLs are checked by `i2vd doctor` and skipped with an error, never fatal)
    webhook_urls: list[str] = Field([], description="POST each event, signed, to these URLs (JSON list).")
    webhook_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key of X-I2VD-Signature.")
    webhook_events: list[str] = Field([], description="Event types or globs (job.*) to POST; default all "
                                      "but job.progress.")
    webhook_timeout_seconds: float = Field(5.0, gt=0, description="One POST's limit, connecting included.")
    webhook_backoff_seconds: float = Field(2.0, gt=0, description="First retry delay; doubles, with jitter.")
    webhook_backoff_max_seconds: float = Field(600.0, gt=0, description="Longest wait between two tries.")
    webhook_give_up_hours: float = Field(24.0, gt=0, description="Stop retrying an event this long after it.")
    webhook_poll_seconds: float = Field(1.0, gt=0, description="How often new events are looked for.")
    retention_days: float | None = Field(None, gt=0, description="Delete finished jobs and their events after "
                                         "this many days (daily, and `i2vd prune`); default: keep.")
    retention_delete_outputs: bool = Field(False, description="Pruning also deletes the jobs' videos and "
                                           "metadata files.")

    # Web page (`i2vd web`, a process of its own)
    web_address: str = Field("127.0.0.1:7860", description="host:port of the web page and API; any address "
                             "but loopback needs web_token.")
    web_token: SecretStr | None = Field(None, min_length=16, description="Bearer token for the API and the "
                                        "page's login; required off loopback.")
    web_session_hours: float = Field(12.0, gt=0, description="A page login lasts this long (or until logout "
                                     "or a restart of the web).")
    predict_timeout_seconds: float = Field(600.0, gt=0, description="How long POST /api/predict waits for its "
                                           "job; then 504 with the job's id, the job running on.")

    @field_validator("inbox_dir", "outputs_dir", "state_dir", "log_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().absolute()

    @field_validator("web_token", mode="before")
    @classmethod
    def _web_token(cls, value: object) -> object:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str):
            if not text.strip():
                raise ValueError("must not be blank")
            if text != text.strip():
                raise ValueError("must not begin or end with spaces (a bearer header could never match it)")
            if len(text) < 16:
                raise ValueError("must be at least 16 characters long")
        return value

    @field_validator("default_interpolate")
    @classmethod
    def _interpolation_factor(cls, value: int) -> int:
        if value not in INTERPOLATION_FACTORS:
            raise ValueError("must be 1, 2 or 4")
        return value

    @field_validator("metrics_address", "web_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        if self.models and "model" in self.model_fields_set:
            raise ValueError("set either model (one model) or models (several), not both")
        names = [name for name, _ in self.model_entries if name is not None]
        for name in names:
            if not MODEL_NAME.match(name) or name in RESERVED_NAMES:
                raise ValueError(f"model name {name!r}: use lower-case letters, digits, '.', '_' and '-', "
                                 f"and none of {', '.join(sorted(RESERVED_NAMES))}")
        if len(set(names)) != len(names):
            raise ValueError("two models have the same name")
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.state_dir / 'i2vd.sqlite3'}"
        if self.log_file is None:
            self.log_file = self.state_dir / "i2vd.log"
        if self.database_url.startswith("sqlite:///"):
            db_path = Path(self.database_url.removeprefix("sqlite:///")).absolute()
            if db_path.is_relative_to(self.inbox_dir):
                raise ValueError("database_url must not point inside inbox_dir")
        return self

    @property
    def resolved_database_url(self) -> str:
        """database_url once validation filled in its default (the SQLite file in state_dir)."""
        if self.database_url is None:  # only a Settings built without validation (model_construct)
            raise RuntimeError("Settings.database_url was never resolved: build Settings through validation")
        return self.database_url

    @property
    def resolved_log_file(self) -> Path:
        """log_file once validation filled in its default (state_dir/i2vd.log)."""
        if self.log_file is None:  # only a Settings built without validation (model_construct)
            raise RuntimeError("Settings.log_file was never resolved: build Settings through validation")
        return self.log_file

    @property
    def done_dir(self) -> Path:
        return self.inbox_dir / DONE_DIR

    @property
    def failed_dir(self) -> Path:
        return self.inbox_dir / FAILED_DIR

    @property
    def model_entries(self) -> list[tuple[str | None, str]]:
        """(name or None, value) of each served model, the default first."""
        entries: list[tuple[str | None, str]] = []
        for entry in self.models or (self.model,):
            name, sep, value = entry.partition("=")
            entries.append((name.strip(), value.strip()) if sep else (None, entry.strip()))
        return entries

    @property
    def only_tiny_models(self) -> bool:
        """Every served model is a tiny smoke-test one (no GPU needed)."""
        return all(value.partition(":")[0] == TINY for _, value in self.model_entries)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def split_host_port(address: str) -> tuple[str, int]:
    """'host:port' or '[v6 address]:port' as (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not host:port (e.g. 127.0.0.1:9731 or [::1]:9731)")
    return host.removeprefix("[").removesuffix("]"), int(port)


def describe_error(exc: Exception) -> str:
    """A settings error on one line, naming each bad setting."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
    return str(exc)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from overrides, I2VD_* variables, the TOML file (--config or I2VD_CONFIG), defaults."""
    path = config_file or os.environ.get("I2VD_CONFIG")
    if path is None:
        return Settings(**overrides)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    return _FromFile(**overrides)
