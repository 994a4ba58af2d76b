"""Image normalisation: orientation and colour modes become upright RGB."""

from __future__ import annotations

import PIL.Image
import pytest

from daemon.intake.images import load_rgb


@pytest.mark.parametrize("mode,color,fmt,expected", [
    ("L", 128, "PNG", (128, 128, 128)),
    ("LA", (0, 0), "PNG", (255, 255, 255)),           # fully transparent -> white
    ("RGBA", (255, 0, 0, 0), "PNG", (255, 255, 255)),
    ("RGBA", (255, 0, 0, 255), "PNG", (255, 0, 0)),
    ("P", 0, "PNG", (0, 0, 0)),
    ("CMYK", (0, 0, 0, 0), "JPEG", (255, 255, 255)),
    ("I;16", 65535, "PNG", (255, 255, 255)),
    ("RGB", (10, 200, 30), "WEBP", None),
])
def test_modes_become_rgb(tmp_path, mode, color, fmt, expected):
    path = tmp_path / f"img.{fmt.lower()}"
    PIL.Image.new(mode, (16, 8), color).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (16, 8)
    pixel = img.getpixel((3, 3))
    assert pixel == (expected or color) if fmt != "JPEG" else max(abs(a - b) for a, b in zip(pixel, expected)) <= 3


def test_exif_orientation_is_applied(tmp_path):
    img = PIL.Image.new("RGB", (40, 20), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_rgb(path).size == (20, 40)
