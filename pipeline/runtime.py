"""Model loading: placement (device and dtype), and a model value's pipeline through its backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.errors import ModelUnavailable

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype


def resolve_placement(device: str = "auto", dtype: str = "auto", default_dtype: str = "float16") -> Placement:
    """'auto' device: CUDA where present, else CPU. The dtype as `choose_dtype` says."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {device!r} was asked for, but torch sees no CUDA GPU")
    return Placement(dev, _DTYPES[choose_dtype(dev.type, dtype, default_dtype)])


def choose_dtype(device_type: str, dtype: str, default_dtype: str) -> str:
    """`dtype` unless 'auto'; then the backend's `default_dtype` on CUDA, float32 on the CPU (half
    precision there is slow, and only the tiny models run there)."""
    if dtype != "auto":
        return dtype
    return default_dtype if device_type == "cuda" else "float32"


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16' for torch.bfloat16: how settings and metadata spell a dtype."""
    return str(dtype).removeprefix("torch.")


def quiet_libraries() -> None:
    """No progress bars or notices from the model libraries: the daemon logs its own events."""
    import diffusers.utils.logging
    import huggingface_hub.utils
    import transformers.utils.logging

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
