"""The video encoder setting: what `auto` picks, an encoder that cannot work refused at start-up, the knobs
reaching ffmpeg. Real ffmpeg; NVENC cannot work in a wrapper that hides every CUDA device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError
from support.daemons import daemon_env, wait_for
from support.files import drop_pair, probe
from support.video import ffmpeg_wrapper, noise, x264_options

from daemon.worker.encoder import worker_cores
from daemon.settings import Settings
from pipeline.errors import EncoderUnavailable
from pipeline.video import EncoderOptions, choose_encoder, encode_mp4, encoder_threads

NO_GPU = 'CUDA_VISIBLE_DEVICES= exec "$FFMPEG" "$@"'  # the CUDA driver then sees no device


def no_gpu_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(ffmpeg_wrapper(tmp_path, NO_GPU)))


# -- the knobs reach ffmpeg ------------------------------------------------------------------------

def test_preset_crf_and_threads_are_what_x264_encoded_with(tmp_path):
    fast = encode_mp4(noise(8, 32, 32), tmp_path / "fast.mp4", fps=8,
                      options=EncoderOptions(preset="ultrafast", crf=30, threads=1))
    slow = encode_mp4(noise(8, 32, 32), tmp_path / "slow.mp4", fps=8,
                      options=EncoderOptions(preset="slower", crf=12, threads=2))
    fast_options, slow_options = x264_options(fast.path), x264_options(slow.path)
    assert (fast_options["crf"], fast_options["threads"]) == ("30.0", "1")
    assert (slow_options["crf"], slow_options["threads"]) == ("12.0", "2")
    # What the presets differ in, as x264 documents them: ultrafast has no CABAC and a diamond search.
    assert (fast_options["cabac"], fast_options["me"], fast_options["subme"]) == ("0", "dia", "0")
    assert (slow_options["cabac"], slow_options["me"], slow_options["subme"]) == ("1", "umh", "9")
    assert fast.encoder.to_dict() == {"encoder": "libx264", "preset": "ultrafast", "crf": 30, "threads": 1}


def test_the_default_encode_is_x264_medium_at_crf_18():
    assert EncoderOptions() == EncoderOptions("libx264", "medium", 18, 0)


@pytest.mark.parametrize("field, value, message", [
    ("encoder", "h264_qsv", "must be one of libx264, h264_nvenc"), ("preset", "quick", "x264 preset"),
    ("crf", 52, "between 0 and 51"), ("threads", -1, "0 \\(automatic\\) or more")])
def test_options_outside_what_the_encoders_take_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        EncoderOptions(**{field: value})


# -- auto, and an encoder that cannot work ---------------------------------------------------------

def test_auto_picks_libx264_where_nvenc_cannot_work(tmp_path, monkeypatch):
    no_gpu_ffmpeg(tmp_path, monkeypatch)
    chosen = choose_encoder("auto", preset="fast", crf=20, threads=3)
    assert chosen == EncoderOptions("libx264", "fast", 20, 3, auto=True)
    assert probe(encode_mp4(noise(8, 32, 32), tmp_path / "v.mp4", fps=8, options=chosen).path)[0] == 8


def test_small_videos_go_to_libx264_only_where_auto_chose_nvenc():
    # NVENC refuses frames below a size that depends on the GPU; tiny smoke-test videos must still encode.
    chosen = EncoderOptions("h264_nvenc", auto=True)
    assert chosen.for_size(32, 32).encoder == "libx264" and chosen.for_size(256, 144).encoder == "libx264"
    assert chosen.for_size(512, 288).encoder == "h264_nvenc"
    assert EncoderOptions("h264_nvenc").for_size(32, 32).encoder == "h264_nvenc"  # asked for by name: tried


def test_nvenc_named_where_it_cannot_work_is_refused_in_one_line(tmp_path, monkeypatch):
    no_gpu_ffmpeg(tmp_path, monkeypatch)
    with pytest.raises(EncoderUnavailable) as info:
        choose_encoder("h264_nvenc")
    message = str(info.value)
    assert message.startswith("ffmpeg's h264_nvenc encoder does not work here (it needs an NVIDIA GPU and "
                              "driver): exit status") and "\n" not in message


def test_an_encoder_this_ffmpeg_lacks_is_refused(tmp_path, monkeypatch):
    # An ffmpeg built without libx264 (a distribution's LGPL build): it is not in `-encoders`.
    body = 'case "$*" in *-encoders*) "$FFMPEG" "$@" | grep -v libx264;; *) exec "$FFMPEG" "$@";; esac'
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(ffmpeg_wrapper(tmp_path, body)))
    with pytest.raises(EncoderUnavailable, match=r"^the ffmpeg in use \(.*ffmpeg-wrapper\) has no libx264 encoder$"):
        choose_encoder("libx264")


def test_an_unknown_encoder_name_is_a_settings_error(tmp_path):
    with pytest.raises(ValidationError, match="video_encoder"):
        Settings(state_dir=tmp_path, video_encoder="h264_qsv")
    with pytest.raises(ValidationError, match="video_crf"):
        Settings(state_dir=tmp_path, video_crf=60)


def test_x264_gets_the_cores_the_worker_leaves_free(monkeypatch):
    import torch

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert encoder_threads(worker_cores("cuda")) == 15  # one core drives the GPU
    monkeypatch.setattr(torch, "get_num_threads", lambda: 12)
    assert encoder_threads(worker_cores("cpu")) == 4  # torch computes on 12
    assert encoder_threads(16) == 1  # never none


def doctor_line(env: dict[str, str], check: str) -> tuple[int, str]:
    doctor = subprocess.run([sys.executable, "-m", "daemon.cli", "doctor"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    [line] = [line for line in doctor.stdout.splitlines() if line[6:].startswith(f"{check} ")]
    return doctor.returncode, line


def test_doctor_says_which_encoder_auto_picks(dirs, tmp_path):
    _, line = doctor_line(daemon_env(dirs, IMAGEIO_FFMPEG_EXE=str(ffmpeg_wrapper(tmp_path, NO_GPU)),
                                              I2VD_VIDEO_PRESET="veryfast"), "encoder")
    assert line == "ok    encoder   videos are encoded with libx264 (auto): preset veryfast, crf 18."


def test_doctor_and_run_refuse_nvenc_where_it_cannot_work(dirs, tmp_path):
    env = daemon_env(dirs, I2VD_VIDEO_ENCODER="h264_nvenc",
                     IMAGEIO_FFMPEG_EXE=str(ffmpeg_wrapper(tmp_path, NO_GPU)))
    returncode, line = doctor_line(env, "encoder")
    assert returncode == 1, line
    assert line.startswith("FAIL") and "video_encoder=h264_nvenc: ffmpeg's h264_nvenc encoder does not work " \
                                      "here" in line and line.endswith("set I2VD_VIDEO_ENCODER=auto or libx264.")

    run = subprocess.run([sys.executable, "-m", "daemon.cli", "run"], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("i2vd: video_encoder=h264_nvenc: ffmpeg's h264_nvenc encoder does not work here")
    assert "Traceback" not in run.stderr and "model_loading" not in run.stderr  # refused before the load


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="auto picks NVENC where a GPU is present")
def test_a_daemon_encodes_with_the_configured_preset_and_crf(dirs, run_daemon):
    daemon = run_daemon(daemon_env(dirs, I2VD_VIDEO_PRESET="ultrafast", I2VD_VIDEO_CRF="30"))
    daemon.wait_ready()
    drop_pair(dirs["inbox"], "tide", prompt="the tide comes in", seed=11)
    metadata_path = wait_for(lambda: next(iter(dirs["outputs"].glob("tide_*.json")), None), what="the metadata")
    assert daemon.stop() == 0
    encoder = json.loads(metadata_path.read_text())["encoder"]
    written = x264_options(metadata_path.with_suffix(".mp4"))
    assert (written["crf"], written["me"], written["threads"]) == ("30.0", "dia", str(encoder["threads"]))
    assert encoder == {"encoder": "libx264", "preset": "ultrafast", "crf": 30, "threads": encoder["threads"]}
    assert encoder["threads"] >= 1  # the cores the worker leaves free, at least one
