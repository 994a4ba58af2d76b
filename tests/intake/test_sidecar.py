"""The sidecar schema: presets, overrides and errors that name the field (pure logic)."""

from __future__ import annotations

import json

import pytest

from daemon.errors import InputRejected
from daemon.intake.sidecar import parse_sidecar, resolve
from pipeline.backends import RULES

I2VGEN_XL = RULES["i2vgen-xl"]


def params(raw: dict | bytes, preset: str = "standard"):
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    return resolve(parse_sidecar(data), I2VGEN_XL, default_preset=preset, default_fps=8)


def rejected(raw: dict | bytes) -> InputRejected:
    """Rejected when parsed, or when resolved against the backend that would run it (as intake does)."""
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    with pytest.raises(InputRejected) as info:
        resolve(parse_sidecar(data), I2VGEN_XL, default_preset="standard")
    return info.value


@pytest.mark.parametrize("preset,expected", [
    ("preview", (512, 512, 8, 30)), ("standard", (512, 512, 16, 50)),
    ("high", (768, 768, 24, 80)), ("max", (1024, 1024, 32, 100)),
])
def test_presets(preset, expected):
    p = params({"prompt": "waves", "preset": preset})
    assert (p.width, p.height, p.num_frames, p.steps) == expected
    assert p.guidance_scale == 9.0 and p.fps == 8


def test_explicit_fields_override_the_preset_and_folder_default():
    p = params({"prompt": "waves", "preset": "max", "num_frames": 10, "steps": 12, "resolution": "256p",
                "guidance_scale": 5, "fps": 24, "seed": 99, "negative_prompt": "blur"}, preset="preview")
    assert (p.width, p.height, p.num_frames, p.steps, p.guidance_scale, p.fps, p.seed) == \
        (256, 256, 10, 12, 5.0, 24, 99)
    assert p.negative_prompt == "blur"
    assert params({"prompt": "w", "width": 640, "height": 360}).width == 640


def test_seed_is_drawn_when_absent():
    seeds = {params({"prompt": "waves"}).seed for _ in range(5)}
    assert len(seeds) > 1


def test_utf8_bom_is_accepted():
    assert params(b"\xef\xbb\xbf" + json.dumps({"prompt": "bom"}).encode()).prompt == "bom"


@pytest.mark.parametrize("raw,code,field", [
    ({"prompt": ""}, "invalid_sidecar", "prompt"),
    ({"prompt": "   "}, "invalid_sidecar", "prompt"),
    ({}, "invalid_sidecar", "prompt"),
    ({"prompt": "x", "colour": "red"}, "invalid_sidecar", "colour"),
    ({"prompt": "x", "num_frames": "16"}, "invalid_sidecar", "num_frames"),
    ({"prompt": "x", "num_frames": 33}, "invalid_sidecar", "num_frames"),
    ({"prompt": "x", "steps": 9}, "invalid_sidecar", "steps"),
    ({"prompt": "x", "fps": 31}, "invalid_sidecar", "fps"),
    ({"prompt": "x", "guidance_scale": 25}, "invalid_sidecar", "guidance_scale"),
    ({"prompt": "x", "resolution": 600}, "invalid_sidecar", "resolution"),
    ({"prompt": "x", "resolution": "huge"}, "invalid_sidecar", "resolution"),
    ({"prompt": "x", "width": 500, "height": 512}, "invalid_sidecar", "width"),
    ({"prompt": "x", "width": 512}, "invalid_sidecar", "(sidecar)"),
    ({"prompt": "x", "preset": "ultra"}, "invalid_sidecar", "preset"),
    ({"prompt": "x", "seed": -1}, "invalid_sidecar", "seed"),
    ({"prompt": "x", "output_name": "../escape"}, "invalid_sidecar", "output_name"),
    ({"prompt": "x", "output_name": "a/b"}, "invalid_sidecar", "output_name"),
    ({"prompt": "x", "output_name": ".hidden"}, "invalid_sidecar", "output_name"),
    ({"prompt": "x", "output_name": "nul\u0000byte"}, "invalid_sidecar", "output_name"),
])
def test_invalid_fields_are_named(raw, code, field):
    error = rejected(raw)
    assert error.code == code
    assert field in [e["field"] for e in error.field_errors]
    assert field in str(error)


@pytest.mark.parametrize("raw,code", [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe garbage", "invalid_json"),
    (b"[1, 2]", "sidecar_not_object"),
    (b'"just a string"', "sidecar_not_object"),
    (json.dumps({"prompt": "x" * 70_000}).encode(), "sidecar_too_large"),
])
def test_unusable_files(raw, code):
    error = rejected(raw)
    assert error.code == code and error.hint
