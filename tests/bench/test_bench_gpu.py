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


def test_all_backends_default_jobs_at_toy_size_are_projected_and_recorded(capsys, tmp_path):
    """`make gpu-bench`'s code path: every backend's default job, projected, appended to RESULTS.md."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark notes\n")
    assert main(["--all", "--toy", "--repeats", "1", "--steps", "2", "--record", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "toy smoke test: 5 of 5 default jobs completed on cpu"
    projected = lines[lines.index(next(line for line in lines if line.startswith("projected"))) + 2:]
    for backend in ("i2vgen-xl", "svd", "wan", "ltx", "cogvideox"):
        row = next(line for line in projected if line.startswith(f"{backend} toy"))
        assert "%" in row  # MFU and step MFU from counted FLOPs
    recorded = results.read_text()
    assert recorded.startswith("# Benchmark notes\n\n### `make gpu-bench`, ")
    assert "toy smoke test: 5 of 5 default jobs completed on cpu\n```\n" in recorded


def test_first_block_cache_is_offered_only_to_denoisers_that_have_it():
    """SVD's UNet has no CacheMixin: its FirstBlockCache variant always failed, so it is skipped."""
    from diffusers import UNetSpatioTemporalConditionModel, WanTransformer3DModel

    from bench.gpu import block_cache

    assert not hasattr(UNetSpatioTemporalConditionModel, "enable_cache") and not block_cache("svd")
    assert hasattr(WanTransformer3DModel, "enable_cache") and block_cache("wan")


def test_ltx_full_pipeline_schedules_its_steps_without_mu():
    """The scheduler LTX-Video's checkpoints ship: LTXConditionPipeline passes sigmas and no `mu`."""
    from diffusers.pipelines.ltx.pipeline_ltx_condition import (
        linear_quadratic_schedule,
        retrieve_timesteps,
    )

    from bench.full_models import FULL

    pipe = FULL["ltx"].pipeline(torch.device("meta"), torch.bfloat16)
    timesteps, steps = retrieve_timesteps(pipe.scheduler, 8, "cpu", linear_quadratic_schedule(8) * 1000)
    assert steps == 8 and len(timesteps) == 8


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
    assert "params   ltx: transformer 13." in out  # the 0.9.8 13B distilled default
    assert "ltx distilled (768x512, 121 frames, 8 steps, guidance 1)" in out
    assert "denoiser step (batch 1)" in out  # guidance 1: no unconditional half
    assert out.splitlines()[-1].startswith("ltx distilled: ")


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
