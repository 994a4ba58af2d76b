"""Reading dropped images safely: size limits before decoding, then orientation and RGB."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import PIL.Image
import PIL.ImageOps

from daemon.errors import InputRejected
from daemon.jobs.codes import ErrorCode

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FORMATS = ("PNG", "JPEG", "WEBP")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def check_image(path: Path, *, max_bytes: int, max_pixels: int, decode: bool = True) -> tuple[int, int]:
    """Validate a dropped image fully (header, size limits, complete decode); return (width, height).

    `decode=False` checks the header only (the web, which must stay small; the worker decodes later).
    """
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise InputRejected(ErrorCode.SYMLINK, f"{path.name} is a symbolic link; i2vd does not follow links.",
                            hint="Copy the file itself into the inbox, or set follow_symlinks.")
    if stat.S_ISDIR(info.st_mode):
        raise InputRejected(ErrorCode.NOT_A_FILE, f"{path.name} is a directory, not an image file.",
                            hint="Drop image files, not folders, under image names.")
    if not stat.S_ISREG(info.st_mode):
        raise InputRejected(ErrorCode.NOT_A_FILE, f"{path.name} is not a regular file.",
                            hint="Drop a plain image file.")
    if info.st_size == 0:
        raise InputRejected(ErrorCode.EMPTY_FILE, f"{path.name} is empty (0 bytes).",
                            hint="The copy may have failed; drop the file again.")
    if info.st_size > max_bytes:
        raise InputRejected(ErrorCode.IMAGE_TOO_LARGE, f"{path.name} is {info.st_size} bytes; the limit is {max_bytes}.",
                            hint="Shrink the image or raise max_image_bytes.")
    with warnings.catch_warnings():
        # Our own pixel limit decides below; Pillow still refuses outright beyond twice its own.
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
        try:
            with PIL.Image.open(path, formats=FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise InputRejected(
                        ErrorCode.IMAGE_TOO_MANY_PIXELS,
                        f"{path.name} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}.",
                        hint="Downscale the image or raise max_image_pixels.",
                    )
                if decode:
                    img.load()
        except InputRejected:
            raise
        except PIL.Image.DecompressionBombError as exc:
            raise InputRejected(ErrorCode.IMAGE_TOO_MANY_PIXELS, f"{path.name} is too large to decode safely ({exc}).",
                                hint="Downscale the image or raise max_image_pixels.") from None
        except FileNotFoundError:
            raise  # moved away meanwhile (another daemon took the pair): not a fault of the file
        except PIL.UnidentifiedImageError:
            raise InputRejected(ErrorCode.NOT_AN_IMAGE, f"{path.name} is not a PNG, JPEG or WEBP image.",
                                hint="Check that the file really is an image and not renamed text.") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputRejected(ErrorCode.IMAGE_UNREADABLE, f"{path.name} could not be decoded: {exc}.",
                                hint="The file may be truncated; drop it again once fully copied.") from None
    return width, height


def load_rgb(path: Path) -> PIL.Image.Image:
    """The image upright (EXIF orientation) and in RGB; transparency is composited on white."""
    with PIL.Image.open(path, formats=FORMATS) as img:
        return to_rgb(PIL.ImageOps.exif_transpose(img))


def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """RGB from L, LA, P, RGBA, CMYK, I;16 and friends."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")  # 16-bit grey to 8-bit
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = PIL.Image.new("RGBA", img.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")
