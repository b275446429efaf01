"""Each bundled adapter's recommended guidance scale and weight, chosen on validation prompts.

Classifier-free guidance extrapolates from the unconditional prediction towards the prompt's,
which overshoots looks that compress the palette (night's dark colors come out bright at 5) and
sharpens overlays; the adapter's weight (how much of its delta is fused) trades the look's
strength against the content it covers. Style adapters in the wild ship with a recommended
guidance and weight ("use at 0.8") for these reasons. Here both are chosen by measurement, never
on the prompts reserved for evaluation: the validation prompts of a style are the grammar prompts
that are neither reserved nor among its own training captions (unseen by its adapters, like the
test prompts, but not them): all of them (80-87 per style), each at two seeds.

The rule: the setting with the widest margin to the nearer of the two targets (strength 90 %,
content drop 10 points). An earlier rule took the highest guidance that met both, and choices
met by a point on validation (pastel at 91 %) missed on other prompts; the margin is what carries
over. Guidance is chosen first among ``CANDIDATES`` at weight 1, then the weight by a line search
from 1 at that guidance (``search_weight``), in the direction of the nearer target, finished by
a half step. The choice is
written into ``style.json``; ``shira generate --style NAME`` uses it when no ``--guidance`` or
``=WEIGHT`` is given, and ``shira eval styles --guidance recommended`` measures the reserved
prompts at it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from ..bases import load_pipeline
from ..catalog import default_catalog
from ..core.adapter import recommended_setting
from ..core.bank import StyleBank
from ..errors import ShiraError
from ..generate import DEFAULT_GUIDANCE, applied_adapter, generate_batched, with_triggers
from ..metrics import content_scores, style_strength
from ..toy.prompts import grammar_prompts, reserved_prompts
from ..toy.world import parse_prompt
from .specs import STYLES, adapter_path

logger = logging.getLogger(__name__)

CANDIDATES = (5.0, 3.0, 2.0, 1.0)  # the pipelines' default first; 1 is no guidance (half the compute)
VALIDATION_SEED = 1000  # pool prompt k uses seeds 1000 + k, 2000 + k, ...: none of the test seeds (0-99)
SEED_STRIDE = 1000  # more than the pool's size (124 prompts), so no two images share a seed
SEEDS_PER_PROMPT = 2
STRENGTH_TARGET, CONTENT_DROP_LIMIT = 0.9, 0.10
WEIGHT_STEP, MIN_WEIGHT, MAX_WEIGHT = 0.1, 0.3, 2.0  # the looks answer steeply: 0.25 steps overshoot


def validation_pool(seed: int = 2028) -> list[str]:
    """Every grammar prompt not reserved for evaluation, in a fixed order."""
    reserved = set(reserved_prompts())
    pool = [p for p in grammar_prompts() if p not in reserved]
    return [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]


def validation_prompts(style: str, count: int | None = None) -> list[str]:
    """The pool prompts that ``style`` did not train on (the first ``count`` of them, if given)."""
    seen = default_catalog().get(style).training_captions()
    return [p for p in validation_pool() if p not in seen][:count]


def validation_images(prompts: Sequence[str], seeds_per_prompt: int = SEEDS_PER_PROMPT) -> list[tuple[str, int]]:
    """(prompt, seed) of every validation image of ``prompts``: each prompt at its pool seeds."""
    index = {p: k for k, p in enumerate(validation_pool())}
    return [(p, VALIDATION_SEED + index[p] + r * SEED_STRIDE) for r in range(seeds_per_prompt) for p in prompts]


def meets_targets(m: dict) -> bool:
    return m["strength"] >= STRENGTH_TARGET and m["content_drop"] <= CONTENT_DROP_LIMIT + 1e-9


def _clearances(m: dict) -> tuple[float, float]:
    """How far each target is cleared (strength, content; negative: missed), in fractions."""
    return m["strength"] - STRENGTH_TARGET, CONTENT_DROP_LIMIT - m["content_drop"]


def margin(m: dict) -> float:
    """How far the nearer target is cleared (negative: missed by that much), in fractions."""
    return min(_clearances(m))


def _margin_step(m: dict) -> int:
    """``margin`` in whole tenths of a point (floored), for comparing: measurements are kept to 4
    decimals, so this is exact where rounding the float margin to 3 decimals is not (a margin of
    -1.45 points, one side of a tie, rounded to -1.4 or to -1.5 by float error)."""
    return round(margin(m) * 10000) // 10


def choose(measured: dict[float, dict]) -> float:
    """The guidance with the widest ``margin``; between equal ones (to 0.1 point) the higher (the
    default side: least change from what users expect). ``measured``: guidance -> {"strength",
    "content_drop"}."""
    return max(measured, key=lambda g: (_margin_step(measured[g]), g))


def choose_weight(measured: dict[float, dict]) -> float:
    """The weight with the widest ``margin``; between equal ones (to 0.1 point) the nearest to 1."""
    return max(measured, key=lambda w: (_margin_step(measured[w]), -abs(w - 1.0)))


def _toward_nearer_target(m: dict) -> int:
    """+1 (more weight) where strength is the nearer target, -1 (less) where content is."""
    to_strength, to_content = (round(10000 * c) for c in _clearances(m))  # exact, as _margin_step
    return 1 if to_strength < to_content else -1


def search_weight(measure, at_one: dict, step: float = WEIGHT_STEP) -> dict[float, dict]:
    """Line search along the adapter weight from 1: towards more weight where strength is the nearer
    target, less where content is; on while the margin widens (by 0.1 point or more, as measured
    values are stored to 4 decimals), within [MIN_WEIGHT, MAX_WEIGHT]. Then one half step from the
    best weight towards its nearer target: the looks answer steeply (a 0.1 step moved toy-sdxl
    halftone LoRA from 97 % / -9 to 90 % / -6), and the balanced weight is often in between.
    ``measure(weight)`` -> {"strength", "content_drop", ...}; ``at_one``: the measurement at 1.
    Returns every weight measured (1 included)."""
    direction = _toward_nearer_target(at_one)
    measured, weight = {1.0: at_one}, 1.0
    while MIN_WEIGHT - 1e-9 <= weight + direction * step <= MAX_WEIGHT + 1e-9:
        previous, weight = weight, round(weight + direction * step, 4)
        measured[weight] = measure(weight)
        if _margin_step(measured[weight]) <= _margin_step(measured[previous]):  # as choose_weight compares
            break
    best = choose_weight(measured)
    half = round(best + _toward_nearer_target(measured[best]) * step / 2, 4)
    if MIN_WEIGHT - 1e-9 <= half <= MAX_WEIGHT + 1e-9 and half not in measured:
        measured[half] = measure(half)
    return measured


def recorded_entry(style: str, base: str, variant: str = "shira") -> dict:
    """This adapter's ``style.json`` entry ({} where there is none)."""
    catalog = default_catalog()
    entry = catalog.get(style).entry(base, variant) if style in catalog else None
    return entry.to_dict() if entry else {}


def recorded_guidance(style: str, base: str, variant: str = "shira") -> float | None:
    """The guidance ``style.json`` recommends for this adapter, if any."""
    return recorded_entry(style, base, variant).get("guidance")


def _single_bundled(styles: Sequence[tuple[str, float]]) -> str | None:
    return styles[0][0] if len(styles) == 1 and styles[0][0] in default_catalog() else None


def _single_file_setting(styles: Sequence[tuple[str, float]]) -> dict:
    """A single adapter file's own recommended setting (its self-check's, in its header), or {}."""
    if len(styles) != 1 or not str(styles[0][0]).endswith(".safetensors") or not os.path.isfile(styles[0][0]):
        return {}
    return recommended_setting(styles[0][0])


def default_guidance(styles: Sequence[tuple[str, float]], base: str) -> float:
    """What ``shira generate`` uses without ``--guidance``: a single catalogue style's recommended
    guidance for this base (its SHiRA adapter, the one generate fuses), or a single adapter file's
    own (stored by the self-check after training); else the default. Mixes keep the default: their
    guidance is not measured."""
    name = _single_bundled(styles)
    recorded = recorded_guidance(name, base) if name else _single_file_setting(styles).get("guidance")
    return DEFAULT_GUIDANCE if recorded is None else float(recorded)


def default_weight(styles: Sequence[tuple[str, float]], base: str) -> float:
    """The weight ``shira generate`` fuses a single style at when none is given (``NAME`` rather than
    ``NAME=WEIGHT``): its recommended one for this base (``style.json``, or the file's own), else 1.
    Mixes: 1 each."""
    name = _single_bundled(styles)
    entry = recorded_entry(name, base) if name else _single_file_setting(styles)
    return float(entry.get("weight", 1.0))


def recommended_measurement(entry: dict) -> dict:
    """What validation measured for an adapter at its recommended guidance and weight (its
    ``style.json`` entry; weight 1 where no weight was searched)."""
    guidance, weight = entry["guidance"], entry.get("weight", 1.0)
    searched = entry.get("weight_validation", {})
    if searched.get("guidance") == guidance and f"{weight:g}" in searched:
        return searched[f"{weight:g}"]
    if weight != 1.0:
        raise ValueError(f"no measurement at the recommended weight {weight:g}")
    return entry["guidance_validation"][f"{guidance:g}"]


def plain_content(pipe, shots: Sequence[tuple[str, int]], steps: int, candidates: Sequence[float],
                  desc: str = "") -> dict:
    """The base's own content right (0 or 1) per validation image and guidance: each style's content
    drop is taken on its own images."""
    shots = sorted(set(shots), key=lambda shot: shot[1])
    right = {}
    for g in candidates:
        images = generate_batched(pipe, [p for p, _ in shots], steps, g, desc=f"{desc}plain g{g:g}",
                                  seeds=[seed for _, seed in shots])
        for shot, image in zip(shots, images):
            right[shot, g] = content_scores([image], [parse_prompt(shot[0])])["all"]
    return right


def measure_adapter(pipe, bank, style: str, variant: str, path, shots: Sequence[tuple[str, int]], plain_right: dict,
                    steps: int = 20, candidates: Sequence[float] = CANDIDATES, desc: str = "",
                    weight: float = 1.0) -> dict:
    """Strength, content and content drop of one adapter file (fused at ``weight``) at every
    candidate guidance."""
    spec = STYLES[style]
    triggered = [with_triggers(p, [spec.trigger]) for p, _ in shots]
    expected = [parse_prompt(p) for p, _ in shots]
    measured = {}
    with applied_adapter(pipe, bank, path, variant, weight):
        for g in candidates:
            images = generate_batched(pipe, triggered, steps, g, desc=f"{desc}{style} {variant} g{g:g} w{weight:g}",
                                      seeds=[seed for _, seed in shots])
            content = content_scores(images, expected, looks=[spec.look])["all"]
            plain = float(np.mean([plain_right[shot, g] for shot in shots]))
            measured[g] = _rounded_measurement({"strength": style_strength(images, spec.look), "content": content,
                                                "content_drop": plain - content})
    return measured


def tune_weight(pipe, bank, style: str, variant: str, path, shots: Sequence[tuple[str, int]], plain_right: dict,
                measured: dict[float, dict], steps: int = 20, desc: str = "",
                known: dict[float, dict] | None = None) -> tuple[float, float, dict]:
    """The guidance chosen from ``measured`` (weight 1), and the weight searched at it:
    (guidance, weight, every weight's measurement). ``plain_right`` must cover that guidance.
    ``known``: weights already measured at that guidance on these images (generation is
    deterministic, so they are taken, not generated again)."""
    guidance = choose(measured)
    known = known or {}
    weights = search_weight(lambda w: known.get(w) or measure_adapter(
        pipe, bank, style, variant, path, shots, plain_right, steps, [guidance], desc, weight=w)[guidance],
        measured[guidance])
    return guidance, choose_weight(weights), weights


def recorded_measurements(style: str, base: str, variant: str, prompts: int, images: int,
                          candidates: Sequence[float]) -> dict[float, dict]:
    """The guidance measurements ``style.json`` holds for this adapter, which must be of these
    validation images and candidates."""
    validation = dict(recorded_entry(style, base, variant).get("guidance_validation", {}))
    found = (validation.pop("prompts", None), validation.pop("images", None))
    measured = {float(g): m for g, m in validation.items()}
    if found != (prompts, images) or set(measured) != set(candidates):
        raise ShiraError(f"{style} {base}/{variant}: style.json has no guidance measurements of the current "
                         f"validation images at every candidate; run `shira styles recommend "
                         f"--style {style} --base {base}` (without --reuse-guidance) first")
    return measured


def recorded_weights(style: str, base: str, variant: str, guidance: float) -> dict[float, dict]:
    """The weight measurements ``style.json`` holds for this adapter at ``guidance`` (of the same
    validation images as its guidance measurements: ``write_choice`` writes both together)."""
    searched = dict(recorded_entry(style, base, variant).get("weight_validation", {}))
    if searched.pop("guidance", None) != guidance:
        return {}
    return {float(w): m for w, m in searched.items()}


def recommend(base: str, styles: Sequence[str], variants: Sequence[str], count: int | None = None,
              seeds_per_prompt: int = SEEDS_PER_PROMPT, steps: int = 20,
              candidates: Sequence[float] = CANDIDATES, reuse_guidance: bool = False) -> dict:
    """Measure every adapter at every candidate guidance on its style's validation images, choose
    the guidance, search the weight at it, and write the choice (with the measurements) into each
    ``style.json``. ``reuse_guidance``: take the guidance measurements ``style.json`` already holds
    for these images (a run that measured them, or ``styles retrain``), and the weights it holds at
    the chosen guidance, and measure only the weights the search needs beyond those.
    Returns the results."""
    plan = {name: validation_prompts(name, count) for name in styles}
    shots = {name: validation_images(prompts, seeds_per_prompt) for name, prompts in plan.items()}
    todo = [(name, variant, adapter_path(name, base, variant)) for name in styles for variant in variants
            if adapter_path(name, base, variant).is_file()]
    recorded = {(name, variant): recorded_measurements(name, base, variant, len(plan[name]), len(shots[name]),
                                                       candidates)
                for name, variant, _ in todo} if reuse_guidance else {}
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    # The base's own content on each image, at each guidance some adapter is measured at.
    plain_right = {}
    for g in candidates:
        users = [name for name, variant, _ in todo if not reuse_guidance or choose(recorded[name, variant]) == g]
        if users:
            plain_right.update(plain_content(pipe, [shot for name in dict.fromkeys(users) for shot in shots[name]],
                                             steps, [g], f"{base}: "))
    bank = StyleBank(pipe.unet)
    results = {}
    for name, variant, path in todo:
        measured = recorded.get((name, variant)) or measure_adapter(
            pipe, bank, name, variant, path, shots[name], plain_right, steps, candidates, f"{base}: ")
        known = recorded_weights(name, base, variant, choose(measured)) if reuse_guidance else {}
        guidance, weight, weights = tune_weight(pipe, bank, name, variant, path, shots[name], plain_right, measured,
                                                steps, f"{base}: ", known)
        results[f"{name}/{variant}"] = {"guidance": guidance, "weight": weight, "prompts": len(plan[name]),
                                        "images": len(shots[name]), "measured": measured, "weights": weights}
        write_choice(name, base, variant, guidance, len(plan[name]), len(shots[name]), measured, weight, weights)
    return {"base": base, "candidates": list(candidates), "steps": steps, "adapters": results}


def rechoose(result: dict) -> dict:
    """Apply ``choose`` again to a saved ``recommend`` result (its JSON line) and write the choices
    into ``style.json``, without generating anything: for a changed rule, or restoring the files.
    The weights measured are kept where the guidance stays; where it moves, weight 1 (the saved
    run measured no other weight there). Adapters that went through ``styles retrain`` since are
    left alone (the saved run may have measured the one they replaced; their own figures are in
    ``style.json``)."""
    for key, entry in list(result["adapters"].items()):
        name, variant = key.split("/")
        if "trials" in recorded_entry(name, result["base"], variant):
            logger.warning("%s %s: retrained since this run, left as style.json has it", result["base"], key)
            del result["adapters"][key]
            continue
        measured = {float(g): m for g, m in entry["measured"].items()}
        guidance = choose(measured)
        weights = {float(w): m for w, m in entry.get("weights", {}).items()}
        if guidance != entry["guidance"] or not weights:
            weights = {1.0: measured[guidance]}
        entry.update(measured=measured, guidance=guidance, weights=weights, weight=choose_weight(weights))
        write_choice(name, result["base"], variant, guidance, entry["prompts"], entry.get("images", entry["prompts"]),
                     measured, entry["weight"], weights)
    return result


def _rounded_measurement(m: dict) -> dict:
    """To 4 decimals, as ``style.json`` keeps it: choices made now and checked later from the file agree."""
    return {name: round(v, 4) for name, v in m.items()}


def _rounded(measured: dict) -> dict:
    return {f"{k:g}": _rounded_measurement(m) for k, m in measured.items()}


def write_choice(style: str, base: str, variant: str, guidance: float, prompts: int, images: int, measured: dict,
                 weight: float = 1.0, weights: dict | None = None) -> None:
    """Record the chosen guidance and weight with what they were chosen on: every candidate
    guidance at weight 1, and every weight tried at the chosen guidance."""
    default_catalog().update_entry(style, f"{base}/{variant}", {
        "guidance": guidance, "guidance_validation": {"prompts": prompts, "images": images, **_rounded(measured)},
        "weight": weight, "weight_validation": {"guidance": guidance,
                                                **_rounded(weights or {1.0: measured[guidance]})}})


def format_recommendations(result: dict) -> str:
    cell = lambda m: f"{m['strength']:.0%} / {-m['content_drop'] * 100:+.0f}"  # noqa: E731
    lines = [f"base {result['base']}: guidance and weight chosen on each style's validation images "
             f"(strength / content drop at each candidate guidance at weight 1, then at each weight tried)",
             "| adapter | prompts | images | " + " | ".join(f"g{g:g}" for g in result["candidates"])
             + " | weights tried | chosen |",
             "| --- | --- | --- | " + " | ".join("---" for _ in result["candidates"]) + " | --- | --- |"]
    for key, r in result["adapters"].items():
        measured = {float(g): m for g, m in r["measured"].items()}
        weights = {float(w): m for w, m in r.get("weights", {}).items()}
        tried = "; ".join(f"w{w:g}: {cell(m)}" for w, m in sorted(weights.items()) if w != 1.0) or "-"
        lines.append(f"| {key} | {r['prompts']} | {r.get('images', r['prompts'])} | "
                     + " | ".join(cell(measured[float(g)]) for g in result["candidates"])
                     + f" | {tried} | g{r['guidance']:g} w{r.get('weight', 1.0):g} |")
    return "\n".join(lines)
