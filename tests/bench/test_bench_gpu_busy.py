"""bench/gpu_busy.py: what can run without a GPU.

The utilisation readers (NVML, nvidia-smi) need a GPU and its driver, so here only their pure parts are
tested: parsing nvidia-smi's lines, the mean over the jobs' window, the window from the daemon's events.
The daemon run with the random-weights loader is tested end to end at toy size on the CPU.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import torch

from bench.gpu_busy import Reading, busy_fraction, job_window, main, parse_smi_line


def test_nvidia_smi_lines_are_read_with_their_own_timestamps():
    reading = parse_smi_line("2026/12/06 03:20:11.250, 87\n")
    assert reading == Reading(datetime(2026, 12, 6, 3, 20, 11, 250000).timestamp(), 87.0)
    assert parse_smi_line("2026/12/06 03:20:11.350, [N/A]") is None
    assert parse_smi_line("No devices were found") is None
    assert parse_smi_line("") is None


def test_busy_fraction_is_the_mean_utilisation_inside_the_window_only():
    readings = [Reading(t, p) for t, p in [(9.9, 0), (10.0, 100), (11.0, 90), (12.0, 80), (12.1, 0)]]
    assert busy_fraction(readings, 10.0, 12.0) == pytest.approx(0.9)  # ends included, idle outside left out
    assert busy_fraction(readings, 13.0, 14.0) is None


def test_the_window_runs_from_the_first_start_to_the_last_generation_end():
    def event(name: str, second: int) -> dict:
        return {"event": name, "timestamp": datetime(2026, 12, 6, 3, 0, second, tzinfo=timezone.utc).isoformat()}

    events = [event("job_started", 5), event("job_generated", 8), event("job_started", 8),
              event("job_generated", 11), event("job_succeeded", 12), event("job_queued", 1)]
    start, end = job_window(events)
    assert end - start == 6.0
    assert start == datetime(2026, 12, 6, 3, 0, 5, tzinfo=timezone.utc).timestamp()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_fails_with_one_line(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "no CUDA GPU" in err


def test_toy_jobs_run_through_the_daemon_with_the_random_weights_loader(capsys):
    """The daemon serves `ltx` (its default weights' hub id, never downloaded) from the replaced loader."""
    assert main(["--toy", "--jobs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("jobs     generation median") for line in lines)
    assert lines[-1].startswith("toy smoke test: 2 of 2 jobs through the daemon")
