"""Tiny T5/UMT5 text encoders and their tokenizer, built offline for the tiny backends' smoke tests.

Wan, LTX-Video and CogVideoX encode prompts with T5-family encoders. Their tiny pipelines need a
tokenizer and an encoder whose shapes match diffusers' own fast tests (hf-internal-testing's
tiny-random-t5: d_model 32), but nothing may be downloaded: the tokenizer is a small Unigram model
(transformers' T5Tokenizer wraps the `tokenizers` library) over single letters and a few words,
with T5's pad/eos/unk ids 0/1/2, and the encoders are random weights from a config.
"""

from __future__ import annotations

import string

TEXT_DIM = 32  # d_model of the tiny encoders: the tiny transformers' text_dim / caption_channels
VOCAB_SIZE = 128  # embedding rows; the tokenizer's ids all fall below it
_WORDS = ("a", "the", "of", "on", "in", "and", "cat", "dog", "sea", "sky", "moving", "camera", "slowly")


def build_t5_tokenizer():
    """A T5 tokenizer over letters, digits and a handful of words: every prompt tokenizes, nothing is fetched."""
    from transformers import T5Tokenizer

    # Unigram scores: whole words beat spelling them out; unknown characters fall back to <unk>.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{word}", -1.0) for word in _WORDS]
    vocab += [(char, -3.0) for char in string.ascii_lowercase + string.ascii_uppercase + string.digits + ".,!?'-"]
    assert len(vocab) <= VOCAB_SIZE
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


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
