"""Validation prompts for a new style's self-check: never its training captions, never the prompts
reserved for evaluation, drawn from what the captions say.

- Captions of the toy grammar (``a COLOR SHAPE on a COLOR background``): the grammar's other prompts,
  less the reserved ones: new combinations of the same words.
- Any other captions: a caption with one word swapped for the word another caption of the same length
  has at that place ("a cat in a hat" + "a dog on a mat" -> "a dog in a hat"), so the prompts speak
  the training set's language without repeating a caption.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..toy.prompts import grammar_prompts, reserved_prompts
from .content import is_toy_prompt


def validation_prompts(captions: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """Up to ``count`` prompts unlike every training caption (fewer only when the captions allow no more)."""
    captions = [c.strip() for c in captions if c and c.strip()]
    seen = set(captions)
    rng = np.random.default_rng(seed)
    if captions and all(is_toy_prompt(c) for c in captions):
        reserved = set(reserved_prompts())
        pool = [p for p in grammar_prompts() if p not in seen and p not in reserved]
        return [pool[i] for i in rng.permutation(len(pool))[:count]]
    by_length: dict[int, list[list[str]]] = {}
    for caption in captions:
        by_length.setdefault(len(caption.split()), []).append(caption.split())
    groups = [words for words in by_length.values() if len(words) >= 2]
    prompts: list[str] = []
    for _ in range(50 * count):
        if len(prompts) >= count or not groups:
            break
        group = groups[rng.integers(len(groups))]
        first, second = (group[i] for i in rng.choice(len(group), 2, replace=False))
        places = [i for i, (a, b) in enumerate(zip(first, second)) if a != b]
        if not places:
            continue
        place = places[rng.integers(len(places))]
        prompt = " ".join(second[i] if i == place else word for i, word in enumerate(first))
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


def without_trigger(caption: str, trigger: str | None) -> str:
    """``caption`` less its trigger phrase (and the comma that joined it): the plain prompt the base's
    own image is drawn for. ``"a red circle on a blue background, in zxq style"`` -> ``"a red circle on a
    blue background"``."""
    if not trigger or trigger not in caption:
        return caption.strip()
    parts = [p.strip() for p in caption.replace(trigger, "\0").split(",")]
    return ", ".join(p for p in (" ".join(p.replace("\0", " ").split()) for p in parts) if p)
