"""The interpolation factor from sidecar and settings into job parameters; the output settings."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from daemon.errors import InputRejected
from daemon.settings import Settings
from daemon.intake.sidecar import parse_sidecar, resolve
from pipeline.backends import RULES
from pipeline.params import GenerationParams


def resolved(default_interpolate: int = 1, **fields) -> GenerationParams:
    sidecar = parse_sidecar(json.dumps({"prompt": "waves", **fields}).encode())
    return resolve(sidecar, RULES["i2vgen-xl"], default_preset="preview", default_fps=8,
                   default_interpolate=default_interpolate)


def test_the_sidecar_asks_for_interpolation_else_the_setting_decides():
    assert resolved(interpolate=4).interpolate == 4
    assert resolved(default_interpolate=2).interpolate == 2
    assert resolved(default_interpolate=2, interpolate=1).interpolate == 1  # 1 turns it off for one job
    assert resolved().interpolate == 1


@pytest.mark.parametrize("value", [3, 0, True, 2.0, "2"])
def test_an_interpolation_factor_other_than_1_2_or_4_is_rejected(value):
    with pytest.raises(InputRejected) as info:
        resolved(interpolate=value)
    assert info.value.code == "invalid_sidecar" and "interpolate" in str(info.value)


def test_params_queued_before_interpolation_existed_still_load():
    old = {"prompt": "p", "width": 32, "height": 32, "num_frames": 8, "fps": 8, "steps": 10,
           "guidance_scale": 9.0, "seed": 1, "negative_prompt": None}
    assert GenerationParams.from_dict(old).interpolate == 1


def test_output_settings_defaults_and_environment(tmp_path, monkeypatch):
    settings = Settings(state_dir=tmp_path)
    assert (settings.poster, settings.preview, settings.default_interpolate, settings.keep_raw_video) == (
        True, True, 1, False)
    monkeypatch.setenv("I2VD_DEFAULT_INTERPOLATE", "4")
    monkeypatch.setenv("I2VD_PREVIEW", "false")
    settings = Settings(state_dir=tmp_path)
    assert settings.default_interpolate == 4 and settings.preview is False
    with pytest.raises(ValidationError, match="must be 1, 2 or 4"):
        Settings(state_dir=tmp_path, default_interpolate=3)
