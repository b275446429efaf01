"""The self-check after training: how strong and how clean the new style is, and the guidance and
weight that show it best while keeping the content.

On validation prompts that are not training captions (``prompts.validation_prompts``) the adapter
draws images at a few settings, each image beside the base's own for the same prompt and seed; the
style detector reads strength, the content check reads what is kept. The search starts at guidance 5
and weight 1 and moves the weight up while the style is weak and the content holds, down while the
content leaks and the style holds, and tries the other guidances when both miss; it stops at the
first setting that meets both targets, or before a setting that would not fit the time budget. The
setting with the most margin (or the least shortfall) is reported; ``after_training`` stores it only
when it meets both targets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .content import content_kept

logger = logging.getLogger(__name__)

STRENGTH_TARGET = 0.9  # share of images that show the style
CONTENT_TOLERANCE = 0.10  # content kept at most this far below the base's
START = (5.0, 1.0)  # guidance, weight
WEIGHT_STEP = 1.25
WEIGHTS = (0.5, 2.0)  # the search's range
GUIDANCES = (5.0, 7.5, 3.0)
PROMPTS = 12
STEPS = 20


@dataclass(frozen=True)
class Measured:
    guidance: float
    weight: float
    strength: float
    content: float
    base_content: float

    @property
    def content_drop(self) -> float:
        return self.base_content - self.content

    @property
    def margin(self) -> float:
        """How far inside both targets (negative: how far outside the worse one)."""
        return min(self.strength - STRENGTH_TARGET, CONTENT_TOLERANCE - self.content_drop)

    @property
    def meets(self) -> bool:
        return self.margin >= 0

    def to_dict(self) -> dict:
        return {**{k: round(v, 4) for k, v in asdict(self).items()}, "content_drop": round(self.content_drop, 4)}


# draw(prompts, guidance, weight) -> images: the adapter at ``weight`` (0: the base alone), image i
# with seed i. The caller owns the pipeline and how the adapter is put on it.
Draw = Callable[[Sequence[str], float, float], list]


def self_check(draw: Draw, detector, prompts: Sequence[str], trigger: str | None, *, budget_seconds: float,
               plain_images: dict | None = None, content_reader=None) -> dict:
    """Search guidance and weight on ``prompts`` (``prompts.validation_prompts``: no training caption);
    ``plain_images``: the base's images for them, by guidance, where already drawn; ``content_reader``:
    the toy reader calibrated on the training images (``content.content_kept``), where one was fit. Returns
    ``{"chosen", "meets", "measured", "prompts", "seconds", "advice"}`` (``chosen``: the recommended
    setting's measurement)."""
    from ..generate import with_triggers

    started = time.time()
    plain_prompts = list(prompts)
    if not plain_prompts:
        raise ValueError("no validation prompts")
    styled_prompts = [with_triggers(p, [trigger]) if trigger else p for p in plain_prompts]
    plain_images = dict(plain_images or {})
    measured: dict[tuple[float, float], Measured] = {}
    methods: set[str] = set()

    def measure(guidance: float, weight: float) -> Measured:
        if guidance not in plain_images:
            plain_images[guidance] = draw(plain_prompts, guidance, 0.0)
        plain = plain_images[guidance]
        styled = draw(styled_prompts, guidance, weight)
        content = content_kept(styled, plain, plain_prompts, reader=content_reader)
        methods.add(content["method"])
        result = Measured(guidance, weight, float(np.mean(detector.shows(styled, plain))), content["content"],
                          content["base_content"])
        measured[guidance, weight] = result
        logger.info("self-check: guidance %g weight %g: strength %.0f%%, content %.0f%% (base %.0f%%)", guidance,
                    weight, 100 * result.strength, 100 * result.content, 100 * result.base_content)
        return result

    setting, longest = START, 0.0
    while setting not in measured:
        before = time.time()
        current = measure(*setting)
        longest = max(longest, time.time() - before)  # a new guidance also draws the base's images
        if current.meets or time.time() - started + longest > budget_seconds:  # the next would not fit
            break
        setting = _next_setting(current, measured)
    chosen = max(measured.values(), key=lambda m: m.margin)
    return {"chosen": chosen.to_dict(), "meets": chosen.meets, "prompts": len(plain_prompts),
            "measured": [m.to_dict() for m in measured.values()], "seconds": round(time.time() - started, 1),
            "advice": advice(chosen), "content_method": ", ".join(sorted(methods))}


def _next_setting(current: Measured, measured: dict) -> tuple[float, float]:
    weak = current.strength < STRENGTH_TARGET
    leaks = current.content_drop > CONTENT_TOLERANCE
    guidance, weight = current.guidance, current.weight
    # A step back onto a weight already measured (up showed the style but leaked) ends this guidance.
    up, down = (guidance, round(weight * WEIGHT_STEP, 4)), (guidance, round(weight / WEIGHT_STEP, 4))
    if weak and not leaks and up[1] <= WEIGHTS[1] + 1e-9 and up not in measured:
        return up
    if leaks and not weak and down[1] >= WEIGHTS[0] - 1e-9 and down not in measured:
        return down
    for other in GUIDANCES:  # both miss, the weight ran out of range or was measured: another guidance
        if (other, START[1]) not in measured:
            return other, START[1]
    return current.guidance, current.weight  # nothing left to try


def advice(chosen: Measured) -> str:
    """One plain sentence: what the numbers mean for the user, and what to try."""
    if chosen.meets:
        return ""
    if chosen.strength < STRENGTH_TARGET and chosen.content_drop > CONTENT_TOLERANCE:
        return ("the style is weak and it changes the content: try more training images with varied subjects, "
                "and captions that describe what each image shows")
    if chosen.strength < STRENGTH_TARGET:
        return "the style is weak: try more --max_train_steps, a higher --learning_rate or --rank"
    return ("the style leaks into the content: try fewer --max_train_steps, or captions that describe what each "
            "image shows")


def summary_line(result: dict) -> str:
    """The line ``shira train`` prints after the self-check."""
    if "failed" in result:
        return f"self-check failed ({result['failed']}); the adapter is written, without a recommended setting"
    if "skipped" in result:
        return f"self-check skipped: {result['skipped']}"
    chosen = result["chosen"]
    line = (f"self-check: style shows in {chosen['strength']:.0%} of {result['prompts']} new prompts, content "
            f"{chosen['content']:.0%} (base {chosen['base_content']:.0%}) at guidance {chosen['guidance']:g}, "
            f"weight {chosen['weight']:g}")
    if result["meets"]:
        return line + " (recommended, stored in the adapter)"
    return line + f" - below target (strength >= {STRENGTH_TARGET:.0%}, content within " \
                  f"{CONTENT_TOLERANCE:.0%}; nothing stored, generate keeps guidance {START[0]:g} and weight " \
                  f"{START[1]:g}): {result['advice']}"
