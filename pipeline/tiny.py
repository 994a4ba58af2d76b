"""Tiny, randomly initialised pipelines for smoke tests and offline demos (they make noise, not art).

Each backend builds its own (`build_tiny`, in the shapes of diffusers' fast tests); this module saves
it once with save_pretrained, so it loads through from_pretrained like a real model. The CLIP
tokenizer is built from a small byte-level vocab.json/merges.txt, so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from pipeline.backends import DEFAULT_BACKEND, get_backend
from pipeline.backends.base import BackendRules, Preset

MARKER = "i2vd-tiny-smoke-test.txt"


def _byte_alphabet() -> list[str]:
    """CLIP's byte-to-unicode table: every byte gets a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def build_tokenizer(workdir: Path):
    """A CLIP tokenizer over a small byte-level vocabulary written into `workdir`: nothing is downloaded.

    Its ids fit any CLIP text model's vocabulary, so the full-size benchmark model uses it too.
    """
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges = ["t h", "th e</w>", "a n", "an d</w>", "o n</w>", "i n"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    (workdir / "vocab.json").write_text(json.dumps(vocab))
    (workdir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(
        vocab_file=str(workdir / "vocab.json"), merges_file=str(workdir / "merges.txt"), model_max_length=77
    )


TINY_SIZE = 32
TINY_FRAMES = 9
TINY_STEPS = {"preview": 2, "standard": 4, "high": 8, "max": 10}


def tiny_rules(rules: BackendRules) -> BackendRules:
    """`rules` with presets for the tiny model: 32x32, 9 frames, a few steps (seconds on a CPU).

    The real presets would run a tiny model at 512x512 and more for minutes at gigabytes of memory.
    """
    frames = rules.frames.floor(TINY_FRAMES) or rules.frames.minimum
    presets = {
        name: Preset(width=TINY_SIZE, height=TINY_SIZE, num_frames=frames,
                     steps=min(max(steps, rules.steps_range[0]), rules.steps_range[1]),
                     fps=rules.presets[name].fps, guidance_scale=rules.presets[name].guidance_scale)
        for name, steps in TINY_STEPS.items()
    }
    return replace(rules, presets=presets)


def build_tiny_pipeline(backend: str = DEFAULT_BACKEND):
    """A fresh tiny pipeline of `backend` with random weights."""
    from pipeline.runtime import quiet_libraries

    quiet_libraries()
    return get_backend(backend).build_tiny()


def ensure_tiny_model(directory: Path, backend: str = DEFAULT_BACKEND) -> Path:
    """Save the tiny model to `directory` once (save_pretrained), so it loads like a real one."""
    if (directory / MARKER).is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so daemons starting together never see half a model.
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=directory.parent))
    try:
        build_tiny_pipeline(backend).save_pretrained(staging)
        (staging / MARKER).write_text(
            f"Tiny randomly initialised {backend} pipeline built by i2vd for smoke tests. Its videos are noise.\n"
        )
        os.rename(staging, directory)
    except OSError:
        if not (directory / MARKER).is_file():  # not a lost race with another daemon
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
