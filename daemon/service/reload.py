"""SIGHUP: re-read the settings and apply those a running daemon can take without a restart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.settings import Settings, load_settings

# Read afresh by intake, the worker and the main loop each time they are used. Everything else
# (folders, database, model, device, log file, metrics endpoint) is fixed for the process' life.
LIVE_SETTINGS = frozenset({
    "log_level",
    "default_preset", "default_negative_prompt", "default_fps", "default_prompt", "output_prefix",
    "settle_seconds", "pair_timeout_seconds", "observer", "poll_interval_seconds", "rescan_seconds",
    "max_image_bytes", "max_image_pixels", "follow_symlinks",
    "lease_seconds", "worker_poll_seconds", "stop_grace_seconds",
    "default_interpolate", "poster", "preview", "keep_raw_video",
    # Webhook senders read these at each try, and start or stop with webhook_urls (events.background).
    "webhook_urls", "webhook_secret", "webhook_events", "webhook_timeout_seconds", "webhook_backoff_seconds",
    "webhook_backoff_max_seconds", "webhook_give_up_hours", "webhook_poll_seconds",
})


@dataclass(frozen=True)
class Reloaded:
    applied: dict[str, object]  # setting -> its new value, now in effect
    restart_required: list[str]  # changed, but only a restart applies them


def reload_settings(current: Settings, config_file: Path | None) -> Reloaded:
    """Apply changed live settings to `current` in place; raises when the new settings are invalid."""
    new = load_settings(config_file)  # everything is validated before anything changes
    changed = [name for name in Settings.model_fields if getattr(new, name) != getattr(current, name)]
    applied = {}
    for name in changed:
        if name in LIVE_SETTINGS:
            # In place: intake, worker and loop share this object, so all see the change at once.
            setattr(current, name, getattr(new, name))
            applied[name] = getattr(new, name)
    return Reloaded(applied, sorted(set(changed) - LIVE_SETTINGS))
