"""pipeline/ with the tiny model through the real save_pretrained / from_pretrained path."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import PIL.Image
import pytest
import torch

from support.daemons import daemon_env, wait_for
from support.files import drop_pair, probe
from pipeline.errors import GenerationInterrupted, ModelUnavailable, NonFiniteOutput
from pipeline.backends.i2vgen_xl import encode_prompt
from pipeline.generate import VideoGenerator
from pipeline.backends import load_pipeline
from pipeline.runtime import choose_dtype, resolve_placement
from pipeline.params import GenerationParams
from pipeline.video import encode_mp4

PARAMS = GenerationParams(prompt="a lighthouse in a storm", negative_prompt="blurry", width=32, height=32,
                          num_frames=8, fps=8, steps=10, guidance_scale=9.0, seed=1)


@pytest.fixture(scope="module")
def generator(tiny_model_dir) -> VideoGenerator:
    placement = resolve_placement("cpu", "float32")
    return VideoGenerator(load_pipeline(str(tiny_model_dir), placement), placement)


def test_prompt_embeddings_are_the_penultimate_layer_after_the_final_norm(generator):
    """Reference: the same text encoder cut to N-1 layers; its last_hidden_state is normed layer N-1."""
    from transformers import CLIPTextModel

    pipe = generator.pipe
    encoder = pipe.text_encoder
    config = encoder.config.__class__(**{**encoder.config.to_dict(), "num_hidden_layers":
                                         encoder.config.num_hidden_layers - 1})
    truncated = CLIPTextModel(config).eval()
    missing, unexpected = truncated.load_state_dict(encoder.state_dict(), strict=False)
    assert not missing and all(".layers.1." in key for key in unexpected)

    ids = pipe.tokenizer(["a lighthouse in a storm"], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        reference = truncated(ids).last_hidden_state
        ours = encode_prompt(pipe, "a lighthouse in a storm", torch.device("cpu"))
        last_layer = encoder(ids).last_hidden_state
    assert pipe.tokenizer.model_max_length == 77
    assert torch.allclose(ours, reference, atol=1e-6)
    assert not torch.allclose(ours, last_layer, atol=1e-3)  # not clip_skip=None semantics


def test_upstream_clip_skip_path_still_broken_so_the_shim_is_needed(generator):
    """If this starts passing, diffusers/transformers fixed it and the shim can go."""
    with pytest.raises(AttributeError, match="text_model"):
        generator.pipe(prompt="x", image=PIL.Image.new("RGB", (32, 32)), height=32, width=32,
                       num_frames=8, num_inference_steps=1)


def test_generate_reports_steps_and_is_seeded(generator):
    image = PIL.Image.new("RGB", (64, 48), (10, 120, 200))
    seen = []
    frames = generator.generate(image, PARAMS, seen.append)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    steps = [p.step for p in seen if p.phase == "denoising"]
    assert steps == list(range(0, 11))
    assert [p.phase for p in seen][0] == "encoding_prompt" and seen[-1].phase == "decoding"
    torch.rand(3)  # whatever else the process draws from the global generator in between
    again = generator.generate(image, PARAMS)
    assert np.array_equal(frames, again)  # same seed, same video
    other_seed = generator.generate(image, dataclasses.replace(PARAMS, seed=2))
    assert np.abs(frames.astype(int) - other_seed).mean() > 10


def test_progress_callback_can_stop_generation(generator):
    def stop_at_three(progress):
        if progress.step == 3:
            raise GenerationInterrupted()

    with pytest.raises(GenerationInterrupted):
        generator.generate(PIL.Image.new("RGB", (32, 32)), PARAMS, stop_at_three)
    # the scheduler is restored: a later job counts from zero again
    seen = []
    generator.generate(PIL.Image.new("RGB", (32, 32)), PARAMS, seen.append)
    assert max(p.step or 0 for p in seen) == 10


def test_encode_mp4_has_requested_frames_fps_and_size(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (12, 40, 56, 3), dtype=np.uint8)
    encode_mp4(frames, tmp_path / "v.mp4", fps=12)
    assert probe(tmp_path / "v.mp4") == (12, 12.0, (56, 40))
    with pytest.raises(ValueError, match="even"):
        encode_mp4(frames[:, :39], tmp_path / "odd.mp4", fps=8)


def test_missing_model_is_one_clear_error(tmp_path, monkeypatch):
    placement = resolve_placement("cpu", "float32")
    with pytest.raises(ModelUnavailable, match="no model_index.json"):
        load_pipeline(str(tmp_path), placement)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelUnavailable, match="I2VD_MODEL") as info:
        load_pipeline("ali-vilab/i2vgen-xl", placement)
    assert "\n" not in str(info.value)


def test_cuda_requested_without_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelUnavailable, match="no CUDA GPU"):
        resolve_placement("cuda", "auto")
    assert resolve_placement("auto", "auto").dtype == torch.float32


# -- numerics: NaN/Inf or a constant stack is a failure, never a video -----------------------------


@pytest.fixture
def fresh_generator(tiny_model_dir) -> VideoGenerator:
    """A pipeline of its own: the fault-injection tests break its weights."""
    placement = resolve_placement("cpu", "float32")
    return VideoGenerator(load_pipeline(str(tiny_model_dir), placement), placement)


def test_nan_in_the_denoiser_fails_at_the_step_it_appears(fresh_generator):
    with torch.no_grad():
        fresh_generator.pipe.unet.conv_out.weight.fill_(float("nan"))
    seen = []
    with pytest.raises(NonFiniteOutput) as info:
        fresh_generator.generate(PIL.Image.new("RGB", (32, 32), (90, 30, 10)), PARAMS, seen.append)  # 10 steps
    assert "latents after denoising step 1" in str(info.value) and "float32" in str(info.value)
    assert max(p.step or 0 for p in seen) <= 1  # stopped at once, not after ten steps and a decode
    assert info.value.code == "nonfinite_output" and not info.value.retryable


def test_nan_or_constant_frames_from_the_decoder_fail(fresh_generator):
    image, params = PIL.Image.new("RGB", (32, 32), (90, 30, 10)), dataclasses.replace(PARAMS, steps=2)
    conv_out = fresh_generator.pipe.vae.decoder.conv_out
    with torch.no_grad():
        conv_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteOutput, match="NaN/Inf in the decoded frames"):
        fresh_generator.generate(image, params)
    with torch.no_grad():  # a decoder that ignores its input: every pixel the same grey
        conv_out.weight.zero_()
        conv_out.bias.zero_()
    with pytest.raises(NonFiniteOutput, match="constant frame stack"):
        fresh_generator.generate(image, params)


def test_auto_dtype_is_the_backends_on_cuda_and_float32_on_the_cpu():
    from pipeline.backends import RULES

    defaults = {name: rules.default_dtype for name, rules in RULES.items()}
    assert defaults == {"cogvideox": "bfloat16", "i2vgen-xl": "float16", "ltx": "bfloat16", "svd": "float16",
                        "wan": "bfloat16"}
    assert choose_dtype("cuda", "auto", "bfloat16") == "bfloat16"
    assert choose_dtype("cuda", "float16", "bfloat16") == "float16"  # I2VD_DTYPE or the model's own option
    assert choose_dtype("cpu", "auto", "bfloat16") == "float32"
    assert resolve_placement("cpu", "auto", "bfloat16").dtype == torch.float32


def test_a_model_that_makes_nan_fails_the_job_as_nonfinite_output_and_publishes_nothing(
        tiny_model_dir, tmp_path, dirs, run_daemon):
    """A real NaN from the pipeline (a broken denoiser weight) through the daemon: a failed job with its
    code, never a black MP4 published as a success."""
    placement = resolve_placement("cpu", "float32")
    broken = load_pipeline(str(tiny_model_dir), placement)
    with torch.no_grad():
        broken.unet.conv_out.weight.fill_(float("nan"))
    broken.save_pretrained(tmp_path / "nan-model")
    drop_pair(dirs["inbox"], "scene")
    daemon = run_daemon(daemon_env(dirs, I2VD_MODEL=str(tmp_path / "nan-model"), I2VD_MAX_RETRIES="0"))
    daemon.wait_ready(timeout=120)
    failed = wait_for(lambda: next((line for line in map(json.loads, (dirs["state"] / "i2vd.log").read_text()
                                                         .splitlines()) if line["event"] == "job_failed"), None),
                      timeout=180, what="job_failed")
    assert failed["error_code"] == "nonfinite_output" and "float32" in failed["error"]
    assert daemon.stop() == 0
    assert list(dirs["outputs"].rglob("*.mp4")) == []
