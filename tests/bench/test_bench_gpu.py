"""bench/gpu.py at toy size on the CPU: the GPU benchmark's code runs in CI, not only on a lent GPU."""

from __future__ import annotations

import pytest
import torch

from bench.gpu import TOY, Bench, Setup, main, toy_shapes


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a busy machine: two OpenMP threads mostly wait for each other (seconds, not ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_toy_run_prints_the_figure_last(capsys):
    assert main(["--toy", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("toy smoke test: 2 of 2 runs completed on cpu")
    assert any(line.startswith("FLOPs    toy:") for line in lines)


def test_every_change_the_variants_make_runs_on_the_tiny_model():
    """All the CPU-capable changes at once: attention, guidance, memory format, QKV fusion, timesteps."""
    bench = Bench(torch.device("cpu"), toy=True, repeats=1)
    setup = Setup(dtype=torch.bfloat16, attention="classic", split_guidance=True, channels_last=True,
                  fused_qkv=True, cpu_timesteps=True, decode_chunk=1)
    result = bench.run("everything", TOY, setup)
    assert result.error is None
    assert result.timing.seconds > 0 and result.timing.step_seconds > 0
    outside, per_step = bench.flops["toy"]
    assert outside > 0 and per_step > 0 and result.flops == outside + per_step * TOY.steps


def test_flops_per_job_are_counted_from_the_models(capsys):
    assert main(["--flops", "--toy"]) == 0
    out = capsys.readouterr().out
    assert "unet step (guidance batch of 2)" in out and "vae decode (all frames)" in out
    assert out.splitlines()[-1].startswith("toy: ")


def test_every_backend_runs_through_the_timing_code_at_toy_size(capsys):
    assert main(["--toy", "--backend", "svd", "wan", "ltx", "cogvideox", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("toy smoke test: 4 of 4 runs completed on cpu")
    for backend in ("svd", "wan", "ltx", "cogvideox"):
        row = next(line for line in lines if line.startswith(f"{backend} toy"))
        assert "%" in row  # MFU and step MFU were computed from counted FLOPs


def test_diffusers_accelerations_apply_to_a_transformer_backend():
    """Attention backend, FirstBlockCache and VAE tiling on the tiny Wan (compilation is CUDA-only).

    Wan's because FirstBlockCache needs two blocks at least (the tiny LTX-Video has one)."""
    bench = Bench(torch.device("cpu"), toy=True, repeats=1, backend="wan")
    setup = Setup(dtype=torch.float32, attention_backend="native", first_block_cache=0.05, vae_tiling=True)
    shape = toy_shapes("wan")[0]
    result = bench.run("accelerated", shape, setup)
    assert result.error is None and result.timing.step_seconds > 0
    assert result.step_flops == bench.flops["toy"][1] > 0


def test_flops_of_a_backend_default_job_on_the_meta_device(capsys):
    assert main(["--flops", "--backend", "ltx"]) == 0
    out = capsys.readouterr().out
    assert "params   ltx: transformer 1.923 B" in out
    assert "ltx distilled (768x512, 121 frames, 8 steps, guidance 1)" in out
    assert "denoiser step (batch 1)" in out and "denoiser step (batch 2)" in out
    assert out.splitlines()[-1].startswith("ltx standard: ")


def test_full_size_pipelines_are_built_as_a_gpu_run_builds_them_on_the_meta_device():
    """What a lent GPU would run, built without memory: the classes the backends serve, bf16 weights."""
    from bench.full_models import FULL
    from pipeline.backends import backend_for_class

    for name, full in FULL.items():
        pipe = full.pipeline(torch.device("meta"), torch.bfloat16)
        assert backend_for_class(type(pipe).__name__) == name
        denoiser = getattr(pipe, full.denoiser)
        assert denoiser.dtype == torch.bfloat16
        assert pipe.vae.dtype == (torch.float32 if name == "wan" else torch.bfloat16), name
    fp32 = [n for n, p in FULL["wan"].pipeline(torch.device("meta"), torch.bfloat16).transformer.named_parameters()
            if p.dtype == torch.float32]
    assert fp32 and all(any(k in n for k in ("norm", "time_embedder", "scale_shift_table")) for n in fp32)
