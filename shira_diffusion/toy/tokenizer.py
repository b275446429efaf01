"""A CLIP tokenizer whose vocabulary covers the toy world's words, each as one token.

CLIP's tokenizer is byte-level BPE; here every word of the vocabulary is built by a chain of
merges from its letters, so ``CLIPTokenizer`` (and so every diffusers pipeline) reads it like
OpenAI's, while the embedding table stays a few hundred rows. Unknown words fall back to letters.
"""

from __future__ import annotations

import os
import string
import tempfile

from .looks import LOOKS
from .world import COLORS, SHAPES

GRAMMAR_WORDS = ["a", "on", "background", "in", "style", "with"]
# Generic looks the bases learn from captions (``..., with thin horizontal stripes``).
GENERIC_WORDS = [
    "thin", "thick", "fine", "wide", "horizontal", "vertical", "diagonal", "stripes", "lines",
    "dots", "checkers", "grain", "noise", "border", "frame", "gradient", "vignette", "blur",
    "edges", "tint", "cast", "light", "dark", "soft", "sharp", "random", "texture", "and", "of",
    "left", "right", "top", "bottom", "red", "warm", "cool",
]
# Free tokens for new styles' trigger words.
TRIGGER_WORDS = ["sks", "zxq", "vrt", "ohwx", "qzd", "kdx", "wvu", "ypj"]

SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def toy_vocabulary() -> list[str]:
    words = GRAMMAR_WORDS + list(SHAPES) + list(COLORS) + GENERIC_WORDS + list(LOOKS) + TRIGGER_WORDS
    return list(dict.fromkeys(words))


def build_tokenizer(max_length: int = 32):
    """A ``CLIPTokenizer`` with one token per toy word (plus letters as fallback).

    The merges come from training BPE (the ``tokenizers`` library, CLIP's ``</w>`` word ends) on
    the word list until every word is one token: hand-written merge chains collide (the merge
    ``r e`` of *red* would stop *green* from ever becoming one token).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    words = toy_vocabulary()
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = list(string.ascii_lowercase + string.digits + ",.-'")
    trainer = trainers.BpeTrainer(
        vocab_size=10_000,  # an upper bound: training stops once every word is whole
        special_tokens=SPECIAL,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(words + alphabet)] * 4, trainer=trainer)
    model = bpe.model
    vocab = bpe.get_vocab()
    for ch in alphabet:  # every letter also usable at a word's end
        vocab.setdefault(ch + "</w>", len(vocab))
    with tempfile.TemporaryDirectory() as tmp:  # the BPE model hands its merges out only as a file
        model.save(tmp)
        with open(os.path.join(tmp, "merges.txt")) as handle:
            merges = [tuple(line.split()) for line in handle if line.strip() and not line.startswith("#")]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
