"""The video encoder the worker uses, chosen once from the settings at start-up."""

from __future__ import annotations

from daemon.errors import ConfigError
from daemon.logs import get_logger
from daemon.settings import Settings
from pipeline.errors import EncoderUnavailable
from pipeline.video import EncoderOptions, choose_encoder, encoder_threads

log = get_logger("i2vd.encoding")


def video_encoder(settings: Settings, device_type: str) -> EncoderOptions:
    """The encoder and knobs the settings ask for; ConfigError, in one line, when it cannot work here.

    `device_type` is where the worker generates ("cuda", "cpu"): x264 gets the cores it leaves free.
    """
    threads = settings.video_threads or encoder_threads(worker_cores(device_type))
    try:
        options = choose_encoder(settings.video_encoder, preset=settings.video_preset, crf=settings.video_crf,
                                 threads=threads)
    except EncoderUnavailable as exc:
        raise ConfigError(f"video_encoder={settings.video_encoder}: {exc}") from None
    log.info("video_encoder_chosen", requested=settings.video_encoder, **options.to_dict())
    return options


def worker_cores(device_type: str) -> int:
    """CPU cores the worker keeps busy: one to drive a GPU, torch's threads when it computes on the CPU."""
    if device_type != "cpu":
        return 1
    import torch  # only a worker asks, and it has torch loaded already

    return torch.get_num_threads()
