"""Framing: the video size a job gets for its image, and the centre crop that fits the image to it.

Never a stretch. Where the backend's authors keep the image's aspect ratio (Wan's `best_output_size`,
LTX-Video, CogVideoX 1.5, SVD), a size that came from a preset is a pixel budget: the video takes the
image's aspect ratio within it, rounded to the backend's multiple, and the crop only trims the rounding.
An explicit width and height are kept as asked, and the image is centre-cropped to their aspect ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import PIL.Image

    from pipeline.backends.base import BackendRules
    from pipeline.params import GenerationParams


@dataclass(frozen=True)
class Framing:
    """What the model sees of the image: the crop box (in the image's pixels) and the video's size."""

    source: tuple[int, int]  # the image's width, height
    crop: tuple[int, int, int, int]  # left, top, right, bottom
    size: tuple[int, int]  # the video's width, height

    def apply(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """The image cropped and resized to exactly the video's size (the pipelines then resize nothing)."""
        import PIL.Image

        return image.crop(self.crop).resize(self.size, PIL.Image.Resampling.LANCZOS)

    def to_dict(self) -> dict:
        """For the job's metadata."""
        return {"source": list(self.source), "crop": list(self.crop), "width": self.size[0], "height": self.size[1]}


def fit_size(aspect: float, area: int, multiple: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The width and height nearest `aspect` (width/height) within `area` pixels, both multiples of `multiple`.

    Wan2.2's `best_output_size`: round the width first, then the height first, keep whichever ratio is
    closer. Each side stays within [min_size, max_size].
    """
    low = math.ceil(min_size / multiple) * multiple
    high = max_size // multiple * multiple

    def side(value: float) -> int:
        return min(high, max(low, int(value // multiple) * multiple))

    width = math.sqrt(area * aspect)
    w1 = side(width)
    h1 = side(area / w1)
    h2 = side(area / width)
    w2 = side(area / h2)

    def error(w: int, h: int) -> float:
        return max(aspect / (w / h), (w / h) / aspect)

    return (w1, h1) if error(w1, h1) < error(w2, h2) else (w2, h2)


def centre_crop(source: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest box of `size`'s aspect ratio in the middle of an image of `source` size."""
    width, height = source
    scale = max(size[0] / width, size[1] / height)
    crop_w, crop_h = min(width, round(size[0] / scale)), min(height, round(size[1] / scale))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def plan(source: tuple[int, int], params: GenerationParams, rules: BackendRules,
         fixed: tuple[int, int] | None = None) -> Framing:
    """The framing of an image of `source` size for `params`; `fixed` is a size the checkpoint insists on."""
    if fixed is not None:
        size = fixed
    elif params.keep_aspect and rules.keeps_image_aspect:
        size = fit_size(source[0] / source[1], params.width * params.height, rules.size_multiple,
                        rules.min_size, rules.max_size)
    else:
        size = (params.width, params.height)
    return Framing(source=source, crop=centre_crop(source, size), size=size)
