"""A CLIP tokenizer whose vocabulary covers the toy world's words, each as one token.

CLIP's tokenizer is byte-level BPE; here the merges are learned on the toy vocabulary until every
word is one token, so ``CLIPTokenizer`` (and so every diffusers pipeline) reads it like OpenAI's,
while the embedding table stays a few hundred rows. Unknown words fall back to letters.
"""

from __future__ import annotations

import string

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
ALPHABET = string.ascii_lowercase + string.digits + ",.-'"


def toy_vocabulary() -> list[str]:
    words = GRAMMAR_WORDS + list(SHAPES) + list(COLORS) + GENERIC_WORDS + list(LOOKS) + TRIGGER_WORDS
    return list(dict.fromkeys(words))


def bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE training on ``words`` until each is one symbol, ties broken by the pair's text.

    Written out (instead of ``tokenizers``' trainer) because that trainer breaks ties in hash
    order, which changes from process to process: the token ids, and so a base trained from
    scratch, would not be reproducible. Applied in this order, the merges rebuild every word.
    """
    symbols = {word: list(word[:-1]) + [word[-1] + "</w>"] for word in words}
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for parts in symbols.values():
            for pair in zip(parts, parts[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for word, parts in symbols.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            symbols[word] = merged


def build_tokenizer(max_length: int = 32):
    """A ``CLIPTokenizer`` with one token per toy word (letters as fallback), the same every time."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for token in SPECIAL + [c + end for c in ALPHABET for end in ("", "</w>")]:
        vocab.setdefault(token, len(vocab))
    merges = bpe_merges(toy_vocabulary())
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
