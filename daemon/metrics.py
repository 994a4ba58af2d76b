"""Prometheus metrics: what the daemon counts, and the HTTP endpoint that serves them.

Counters live at module level so any part of the daemon can record without wiring:
`metrics.job_finished(...)`, `metrics.record_progress(...)`, `metrics.intake_rejections`,
`metrics.oom_downgrades`, `metrics.webhook_deliveries`. Database and GPU figures are read when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.logs import get_logger
from daemon.db.tables import JobState

log = get_logger("i2vd.metrics")

# A job takes seconds with the tiny model and up to hours for a large preset on a small GPU.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, float("inf"))
OUTCOMES = ("succeeded", "failed", "interrupted", "cancelled")

info = Info("i2vd", "The running daemon: version, model, device and dtype.")
job_duration = Histogram("i2vd_job_duration_seconds", "Wall time of one job attempt, by outcome.",
                         ["outcome"], buckets=DURATION_BUCKETS)
denoising_steps = Counter("i2vd_denoising_steps", "Denoising steps completed.")
denoising_rate = Gauge("i2vd_denoising_steps_per_second", "Denoising speed of the running (or last) job.")
oom_downgrades = Counter("i2vd_oom_downgrades", "Steps down the OOM ladder after CUDA ran out of memory.")
model_swaps = Counter("i2vd_model_swaps", "Jobs that ran on another model than the job before them.")
intake_rejections = Counter("i2vd_intake_rejections", "Dropped inputs moved to failed/, by error code.",
                            ["code"])
webhook_deliveries = Counter("i2vd_webhook_deliveries", "Webhook POSTs by outcome: delivered, failed (tried "
                             "again later), gave_up (retried for webhook_give_up_hours).", ["outcome"])
for _outcome in ("delivered", "failed", "gave_up"):
    webhook_deliveries.labels(_outcome)
for _outcome in OUTCOMES:  # present as 0 from the start, so rate() and alerts work before the first job
    job_duration.labels(_outcome)

_denoising_since: float | None = None


def job_finished(outcome: str, seconds: float) -> None:
    """Record one finished job run: outcome is succeeded, failed, interrupted or cancelled."""
    job_duration.labels(outcome).observe(seconds)


def record_progress(phase: str, step: int | None) -> None:
    """Count a denoising step and update the job's steps per second (worker thread only)."""
    global _denoising_since
    if phase != "denoising" or step is None:
        return
    now = time.monotonic()
    if step == 0:
        _denoising_since = now
        return
    denoising_steps.inc()
    if _denoising_since is not None and now > _denoising_since:
        denoising_rate.set(step / (now - _denoising_since))


class QueueCollector(Collector):
    """Jobs by state and queue depth, read from the database at scrape time."""

    def __init__(self, counts: Callable[[], dict[JobState, int]]) -> None:
        self.counts = counts

    def collect(self):
        try:
            counts = self.counts()
        except Exception as exc:  # a scrape must not fail because the database is busy or gone
            log.warning("metrics_queue_unavailable", error=f"{type(exc).__name__}: {exc}")
            return
        jobs = GaugeMetricFamily("i2vd_jobs", "Jobs in the database, by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("i2vd_queue_depth", "Jobs queued and waiting for a worker.",
                                value=counts.get(JobState.QUEUED, 0))


class GpuCollector(Collector):
    """GPU memory of this process on its CUDA device (nothing on CPU or in an intake-only daemon)."""

    def __init__(self, device) -> None:
        self.device = device

    def collect(self):
        if self.device is None or self.device.type != "cuda":
            return
        import torch

        if not torch.cuda.is_initialized():
            return
        labels = [str(self.device)]
        for name, doc, value in (
            ("used", "GPU memory held by tensors now.", torch.cuda.memory_allocated(self.device)),
            ("reserved", "GPU memory reserved by PyTorch's allocator (what nvidia-smi shows).",
             torch.cuda.memory_reserved(self.device)),
            ("peak", "Most GPU memory held by tensors during the current (or last) attempt.", torch.cuda.max_memory_allocated(self.device)),
            ("total", "GPU memory on the device.", torch.cuda.get_device_properties(self.device).total_memory),
        ):
            family = GaugeMetricFamily(f"i2vd_gpu_memory_{name}_bytes", doc, labels=["device"])
            family.add_metric(labels, value)
            yield family


class MetricsServer:
    """The /metrics endpoint and the collectors that need the daemon's queue and device."""

    def __init__(self, host: str, port: int, counts: Callable[[], dict[JobState, int]], device) -> None:
        self.collectors = [QueueCollector(counts), GpuCollector(device)]
        for collector in self.collectors:
            REGISTRY.register(collector)
        try:
            self._server: WSGIServer = start_http_server(port, addr=host)[0]
        except OSError:
            self._unregister()
            raise
        self.host, self.port = host, self._server.server_address[1]  # the real port when 0 was asked

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._unregister()

    def _unregister(self) -> None:
        for collector in self.collectors:
            REGISTRY.unregister(collector)
