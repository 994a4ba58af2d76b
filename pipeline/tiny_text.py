"""Tiny T5/UMT5 text encoders and their tokenizer, built offline for the tiny backends' smoke tests.

Wan, LTX-Video and CogVideoX encode prompts with T5-family encoders, and their repositories ship the
tokenizer as a sentencepiece `spiece.model` (CogVideoX and LTX-Video with no tokenizer.json). The tiny
tokenizer is the same kind of file, trained here by the sentencepiece trainer on a small corpus
(nothing is downloaded), and loaded the way a real one is: transformers converts it with
sentencepiece and protobuf. The encoders are random weights from a config, in the shapes of
diffusers' own fast tests (hf-internal-testing's tiny-random-t5: d_model 32).
"""

from __future__ import annotations

import io
import json
import string
import tempfile
from pathlib import Path

TEXT_DIM = 32  # d_model of the tiny encoders: the tiny transformers' text_dim / caption_channels
VOCAB_SIZE = 256  # embedding rows; above the tokenizer's ids (pieces + T5's 100 sentinel ids), as in T5
EXTRA_IDS = 100  # T5's <extra_id_N> sentinels, which every T5 tokenizer_config declares
_CORPUS = (
    "a cat on the sea", "the dog in the sky", "the camera moving slowly", "waves of the sea and the sky",
    "A cat walks slowly on the beach.", "The camera pans across a city at night, cinematic!",
    "a test scene", "a red car drives along the coast road in the evening light",
)


def write_spiece_model(path: Path) -> None:
    """Train a tiny Unigram sentencepiece model into `path`, with T5's ids: pad 0, eos 1, unk 2, no bos."""
    import sentencepiece

    # Every letter, digit and common mark gets a piece; words of the corpus become whole pieces.
    sentences = [*_CORPUS * 8, " ".join(string.ascii_letters + string.digits + ".,!?'-:;()\"")]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, model_type="unigram", vocab_size=120,
        hard_vocab_limit=False, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", num_threads=1, minloglevel=2,
    )
    path.write_bytes(model.getvalue())


def write_t5_tokenizer(directory: Path, *, model_max_length: int = 512) -> Path:
    """A T5 tokenizer folder as T5 repositories ship it: spiece.model, tokenizer_config.json and
    special_tokens_map.json (no tokenizer.json: transformers builds that from spiece.model)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_spiece_model(directory / "spiece.model")
    sentinels = [f"<extra_id_{i}>" for i in range(EXTRA_IDS)]
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
               "additional_special_tokens": sentinels}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {**special, "extra_ids": EXTRA_IDS, "legacy": True, "model_max_length": model_max_length,
              "sp_model_kwargs": {}, "tokenizer_class": "T5Tokenizer", "clean_up_tokenization_spaces": True}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


def build_t5_tokenizer():
    """A T5 tokenizer loaded from a freshly trained spiece.model: every prompt tokenizes, nothing is fetched."""
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return T5Tokenizer.from_pretrained(write_t5_tokenizer(Path(tmp)))


def _config_kwargs() -> dict:
    # tiny-random-t5's shapes, with two layers instead of five: smaller and still a real stack.
    return dict(vocab_size=VOCAB_SIZE, d_model=TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def build_t5_encoder():
    """A tiny random T5EncoderModel (LTX-Video and CogVideoX use T5 v1.1 XXL)."""
    from transformers import T5Config, T5EncoderModel

    # eval(): a model made from a config starts in training mode, and dropout would make runs differ.
    return T5EncoderModel(T5Config(**_config_kwargs())).eval()


def build_umt5_encoder():
    """A tiny random UMT5EncoderModel (Wan uses umT5 XXL)."""
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**_config_kwargs())).eval()
