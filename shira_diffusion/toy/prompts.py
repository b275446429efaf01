"""The toy grammar's prompts, and the ones reserved for evaluation."""

from __future__ import annotations

import numpy as np

from .world import COLORS, SHAPES, make_prompt, parse_prompt

HELD_OUT = 100  # grammar prompts reserved for evaluation: no bundled style trains on them


def grammar_prompts() -> list[str]:
    """Every prompt of the toy grammar (224), sorted."""
    return sorted(make_prompt(c, s, b) for c in COLORS for s in SHAPES for b in COLORS if b != c)


def reserved_prompts(seed: int = 2027) -> list[str]:
    """The ``HELD_OUT`` grammar prompts kept out of every style's training set, in a fixed order.

    Chosen before any training set is drawn (``bundled.specs.write_training_set`` skips them), so
    the evaluation set does not shrink or move when styles are added or get more images.
    """
    grammar = grammar_prompts()
    order = np.random.default_rng(seed).permutation(len(grammar))
    return [grammar[i] for i in order[:HELD_OUT]]


def held_out_prompts(count: int = HELD_OUT) -> list[dict]:
    """The first ``count`` reserved prompts, with the color, shape and background they ask for."""
    if not 1 <= count <= HELD_OUT:
        raise ValueError(f"there are {HELD_OUT} held-out prompts; asked for {count}")
    return [{"prompt": prompt, **{k: parse_prompt(prompt)[k] for k in ("color", "shape", "background")}}
            for prompt in reserved_prompts()[:count]]
