"""Model loading: one I2VGen-XL pipeline, loaded once, on the right device and dtype."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import ModelUnavailable

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype


def resolve_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """'auto' means CUDA in fp16 where present, else CPU in fp32."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {device!r} was asked for, but torch sees no CUDA GPU")
    if dtype == "auto":
        return Placement(dev, torch.float16 if dev.type == "cuda" else torch.float32)
    return Placement(dev, _DTYPES[dtype])


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


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(model))


def load_pipeline(model: str, placement: Placement):
    """`I2VGenXLPipeline.from_pretrained` on a hub id or local directory, with one clear error line."""
    from diffusers import I2VGenXLPipeline

    quiet_libraries()

    if looks_like_path(model):
        path = Path(model).expanduser()
        if not (path / "model_index.json").is_file():
            raise ModelUnavailable(
                f"model directory {path} has no model_index.json; point I2VD_MODEL at a diffusers "
                "I2VGen-XL folder (e.g. one made by `huggingface-cli download ali-vilab/i2vgen-xl`)"
            )
    attempts = [{"variant": "fp16"}, {}] if placement.dtype == torch.float16 else [{}]
    last_error: Exception | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices about the pipeline itself
        for extra in attempts:
            try:
                pipe = I2VGenXLPipeline.from_pretrained(model, torch_dtype=placement.dtype, **extra)
                break
            except Exception as exc:  # hub, filesystem and config errors all mean "not loadable"
                last_error = exc
        else:
            reason = str(last_error).strip().splitlines()[0] if str(last_error).strip() else type(last_error).__name__
            raise ModelUnavailable(
                f"could not load model {model!r} ({type(last_error).__name__}: {reason[:300]}). "
                "Tried the local Hugging Face cache and the hub. Fix: download it where the hub is "
                "reachable and set I2VD_MODEL to that local directory, or use I2VD_MODEL=tiny for the "
                "offline smoke-test model"
            ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(placement.device)
