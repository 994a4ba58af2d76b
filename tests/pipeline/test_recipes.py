"""Each backend follows its model authors' recipe: framing, schedulers, text length, negative prompts, fps
conditioning and the VAE's dtype, checked on the tiny models through the backends' own code."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import PIL.Image
import pytest
import torch

from pipeline.backends import RULES, get_backend
from pipeline.backends.base import MemoryOptions
from pipeline.framing import centre_crop, fit_size, plan
from pipeline.params import GenerationParams
from pipeline.runtime import Placement

CPU = Placement(torch.device("cpu"), torch.float32)
PARAMS = GenerationParams(prompt="a cat on the sea", negative_prompt="blurry", width=32, height=32, num_frames=9,
                          fps=8, steps=2, guidance_scale=3.0, seed=7)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def thirds(width: int, height: int) -> PIL.Image.Image:
    """Red, green and blue thirds from left to right."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for i in range(3):
        pixels[:, i * width // 3:(i + 1) * width // 3, i] = 255
    return PIL.Image.fromarray(pixels)


def noise(width: int, height: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def loaded(tmp_path_factory, name: str, placement: Placement = CPU):
    """The backend's tiny model saved and loaded back through its own load(), as a real model is."""
    directory = tmp_path_factory.mktemp(f"tiny-{name}")
    get_backend(name).build_tiny().save_pretrained(directory)
    return get_backend(name).load(str(directory), placement), directory


# -- aspect ratio (framing) --------------------------------------------------------------------------


def test_a_preset_size_is_a_budget_in_the_image_aspect_ratio():
    """Wan's 1280x704 budget: a portrait photo makes a portrait video, a 16:9 one a 16:9 video."""
    wan = RULES["wan"]
    budget = replace(PARAMS, width=1280, height=704, keep_aspect=True)
    for source, expected_aspect in (((1080, 1920), 9 / 16), ((1920, 1080), 16 / 9), ((1000, 1000), 1.0)):
        width, height = plan(source, budget, wan).size
        assert width % 32 == 0 and height % 32 == 0 and width * height <= 1280 * 704
        assert abs(width / height / expected_aspect - 1) < 0.05, (source, width, height)
    assert plan((1080, 1920), budget, wan).size == (704, 1248)


def test_explicit_size_wins_and_is_centre_cropped_never_stretched():
    framing = plan((96, 32), replace(PARAMS, width=32, height=32, keep_aspect=False), RULES["wan"])
    assert framing.size == (32, 32) and framing.crop == (32, 0, 64, 32)
    pixels = np.asarray(framing.apply(thirds(96, 32)))
    assert pixels.shape == (32, 32, 3)
    assert pixels[..., 1].mean() > 250 and pixels[..., 0].max() == 0 and pixels[..., 2].max() == 0  # green only


def test_i2vgen_xl_keeps_the_size_asked_as_its_authors_do():
    """VGen centre-crops to the size it generates: a wide image does not make a wide I2VGen-XL video."""
    framing = plan((96, 32), replace(PARAMS, width=64, height=64, keep_aspect=True), RULES["i2vgen-xl"])
    assert framing.size == (64, 64) and framing.crop == (32, 0, 64, 32)


def test_fit_size_stays_within_the_backend_limits():
    assert fit_size(10.0, 1024 * 576, 8, 32, 1280) == (1280, 240)  # nearer 10:1 than 1280x456
    assert fit_size(0.01, 1024 * 576, 8, 32, 1280) == (72, 1280)
    assert centre_crop((100, 50), (100, 50)) == (0, 0, 100, 50)


def test_intake_marks_a_preset_size_as_a_budget_and_an_explicit_one_as_exact():
    from daemon.intake.sidecar import Sidecar, resolve

    wan = RULES["wan"]
    preset = resolve(Sidecar.model_validate({"prompt": "x"}), wan, default_preset="standard")
    scaled = resolve(Sidecar.model_validate({"prompt": "x", "resolution": 512}), wan, default_preset="standard")
    exact = resolve(Sidecar.model_validate({"prompt": "x", "width": 640, "height": 640}), wan,
                    default_preset="standard")
    assert preset.keep_aspect and scaled.keep_aspect and not exact.keep_aspect
    assert (exact.width, exact.height) == (640, 640)
    assert GenerationParams.from_dict({k: v for k, v in exact.to_dict().items() if k != "keep_aspect"}) \
        .keep_aspect is False  # a job queued before this field runs as it always did


@pytest.fixture(scope="module")
def svd(tmp_path_factory):
    return loaded(tmp_path_factory, "svd")[0]


def test_svd_video_takes_the_image_aspect_ratio_and_framing_says_so(svd):
    """A 2:1 image with a 48x48 budget: a 64x32 video (was a stretched 48x48), and `framing` reports it."""
    backend = get_backend("svd")
    params = replace(PARAMS, prompt=None, width=48, height=48, num_frames=2, keep_aspect=True)
    frames = backend.generate(svd, noise(96, 48), params, lambda _p: None, MemoryOptions())
    assert frames.shape == (2, 32, 64, 3)
    assert backend.framing(svd, (96, 48), params).to_dict() == {
        "source": [96, 48], "crop": [0, 0, 96, 48], "width": 64, "height": 32}


# -- SVD's vae_slicing rung ---------------------------------------------------------------------------


def test_svd_vae_slicing_rung_runs_and_halves_the_decode_chunk(svd):
    """Its temporal decoder has no slicing or tiling (enabling them raised), and a chunk of 1 flickers."""
    from pipeline.generate import VideoGenerator

    chunks: list[int] = []
    hook = svd.vae.decoder.register_forward_pre_hook(lambda _m, args: chunks.append(args[0].shape[0]))
    try:
        generator = VideoGenerator(svd, CPU, backend=get_backend("svd"), decode_chunk_size=8)
        frames = generator.generate(noise(48, 40), replace(PARAMS, prompt=None, num_frames=8),
                                    memory=MemoryOptions(vae_slicing=True))
    finally:
        hook.remove()
    assert frames.shape == (8, 32, 32, 3)
    assert chunks == [4, 4]


# -- CogVideoX ----------------------------------------------------------------------------------------


def test_cogvideox_samples_with_the_authors_scheduler(tmp_path_factory):
    from diffusers import CogVideoXDPMScheduler

    pipe, _ = loaded(tmp_path_factory, "cogvideox")
    assert type(pipe.scheduler).__name__ == "CogVideoXDDIMScheduler"  # what the checkpoints ship
    frames = get_backend("cogvideox").generate(pipe, noise(48, 40), PARAMS, lambda _p: None, MemoryOptions())
    assert frames.shape == (9, 32, 32, 3)
    assert isinstance(pipe.scheduler, CogVideoXDPMScheduler)
    assert pipe.scheduler.config.timestep_spacing == "trailing"


# -- LTX-Video ----------------------------------------------------------------------------------------


def test_ltx_encodes_256_prompt_tokens_in_every_pipeline(tmp_path_factory):
    """LTX-Video 0.9.0/0.9.1 run through LTXImageToVideoPipeline, whose own default is 128 tokens."""
    from diffusers import LTXImageToVideoPipeline

    pipe, _ = loaded(tmp_path_factory, "ltx")
    old = LTXImageToVideoPipeline(**pipe.components)
    old.set_progress_bar_config(disable=True)
    lengths: list[int] = []
    hook = old.text_encoder.register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[1]))
    try:
        get_backend("ltx").generate(old, noise(48, 40), replace(PARAMS, prompt="waves " * 300),
                                    lambda _p: None, MemoryOptions())
    finally:
        hook.remove()
    assert lengths and set(lengths) == {256}


def test_ltx_distilled_checkpoint_samples_its_own_8_step_schedule(tmp_path_factory):
    """A folder named as Lightricks names its distilled checkpoints gets their timesteps; others do not."""
    import shutil

    from pipeline.backends.ltx import DISTILLED_TIMESTEPS

    _, directory = loaded(tmp_path_factory, "ltx")
    distilled_dir = directory.parent / "LTX-Video-0.9.8-13B-distilled"
    shutil.copytree(directory, distilled_dir)
    backend = get_backend("ltx")
    for folder, expected in ((distilled_dir, True), (directory, False)):
        pipe = backend.load(str(folder), CPU)
        frames = backend.generate(pipe, noise(48, 40), replace(PARAMS, steps=8, guidance_scale=1.0),
                                  lambda _p: None, MemoryOptions())
        assert frames.shape == (9, 32, 32, 3)
        schedule = [round(float(t), 2) for t in pipe.scheduler.timesteps]
        assert (schedule == list(DISTILLED_TIMESTEPS)) is expected, (folder.name, schedule)


# -- Wan ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wan_bf16(tmp_path_factory):
    return loaded(tmp_path_factory, "wan", Placement(torch.device("cpu"), torch.bfloat16))


def test_wan_vae_is_loaded_in_float32_not_rounded_through_half(wan_bf16):
    from diffusers import AutoencoderKLWan

    pipe, directory = wan_bf16
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    saved = AutoencoderKLWan.from_pretrained(directory / "vae").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in pipe.vae.state_dict().items())


def test_wan_uses_the_authors_negative_prompt_when_the_job_has_none(wan_bf16):
    from pipeline.backends.wan import NEGATIVE_PROMPT

    pipe, _ = wan_bf16
    backend = get_backend("wan")

    def video(negative):
        return backend.generate(pipe, noise(48, 40), replace(PARAMS, num_frames=5, negative_prompt=negative),
                                lambda _p: None, MemoryOptions())

    none = video(None)
    assert np.array_equal(none, video(NEGATIVE_PROMPT))
    assert not np.array_equal(none, video("blurry"))


def test_wan_flow_shift_follows_the_resolution(wan_bf16):
    from pipeline.backends.wan import flow_shift_for, set_flow_shift

    assert flow_shift_for(832, 480) == 3.0 and flow_shift_for(1280, 704) == flow_shift_for(704, 1280) == 5.0
    pipe, _ = wan_bf16
    set_flow_shift(pipe, 5.0)
    assert pipe.scheduler.config.flow_shift == 5.0
    get_backend("wan").generate(pipe, noise(48, 40), replace(PARAMS, num_frames=5), lambda _p: None,
                                MemoryOptions())
    assert pipe.scheduler.config.flow_shift == 3.0  # a small job samples with the 480p shift


def test_wan_presets_are_the_checkpoints_supported_size():
    presets = RULES["wan"].presets
    assert {(p.width, p.height) for p in presets.values()} == {(1280, 704)}
    standard = presets["standard"]
    assert (standard.num_frames, standard.steps, standard.fps, standard.guidance_scale) == (121, 50, 24, 5.0)
    assert presets["preview"].num_frames < standard.num_frames and presets["preview"].steps < standard.steps


# -- I2VGen-XL ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def i2vgen():
    return get_backend("i2vgen-xl").build_tiny()


def test_i2vgen_xl_conditions_on_16_fps_whatever_the_mp4_rate(i2vgen):
    backend = get_backend("i2vgen-xl")
    params = replace(PARAMS, num_frames=8)
    at_8 = backend.generate(i2vgen, noise(48, 40), params, lambda _p: None, MemoryOptions())
    at_24 = backend.generate(i2vgen, noise(48, 40), replace(params, fps=24), lambda _p: None, MemoryOptions())
    assert np.array_equal(at_8, at_24)


def test_i2vgen_xl_uses_the_authors_negative_prompt_when_the_job_has_none(i2vgen):
    from pipeline.backends.i2vgen_xl import NEGATIVE_PROMPT

    backend = get_backend("i2vgen-xl")

    def video(negative):
        return backend.generate(i2vgen, noise(48, 40), replace(PARAMS, num_frames=8, negative_prompt=negative),
                                lambda _p: None, MemoryOptions())

    assert np.array_equal(video(None), video(NEGATIVE_PROMPT))



# -- the daemon records the framing -------------------------------------------------------------------


def test_metadata_records_the_crop(dirs, run_daemon):
    """A 48x40 image made into a 32x32 video: the metadata says which 40x40 middle the model saw."""
    import json

    from support.daemons import daemon_env, wait_for
    from support.files import probe, write_image

    inbox, outputs = dirs["inbox"], dirs["outputs"]
    write_image(inbox / ".scene.png.tmp", size=(48, 40), fmt="PNG").rename(inbox / "scene.png")
    sidecar = {"width": 32, "height": 32, "num_frames": 2, "steps": 2, "fps": 8}
    (inbox / ".scene.json.tmp").write_text(json.dumps(sidecar))
    (inbox / ".scene.json.tmp").rename(inbox / "scene.json")
    daemon = run_daemon(daemon_env(dirs, I2VD_MODEL="tiny:svd"))
    daemon.wait_ready(timeout=120)
    video = wait_for(lambda: next(iter(outputs.glob("scene_*.mp4")), None), timeout=120, what="the MP4")
    assert probe(video)[2] == (32, 32)
    metadata = json.loads(video.with_suffix(".json").read_text())
    assert metadata["framing"] == {"source": [48, 40], "crop": [4, 0, 44, 40], "width": 32, "height": 32}
    assert daemon.stop() == 0
