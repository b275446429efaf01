"""Each bundled adapter's recommended guidance scale, chosen on validation prompts.

Classifier-free guidance extrapolates from the unconditional prediction towards the prompt's,
which overshoots looks that compress the palette (night's dark colors come out bright at 5) and
sharpens overlays; style adapters in the wild ship with a recommended guidance for that reason.
Here it is chosen by measurement, never on the prompts reserved for evaluation: the validation
prompts of a style are the grammar prompts that are neither reserved nor among its own training
captions (unseen by its adapters, like the test prompts, but not them): all of them (80-87 per
style), each at two seeds, since choices between guidances a few points apart need more than the
50 images a first version used. The choice is written
into ``style.json``; ``shira generate --style NAME`` uses it when no ``--guidance`` is given, and
``shira eval styles --guidance recommended`` measures the reserved prompts at it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from .evaluate import grammar_prompts, reserved_prompts, style_strength
from .generate import STYLES_DIR, with_triggers
from .toy.world import parse_prompt

CANDIDATES = (5.0, 3.0, 2.0, 1.0)  # the pipelines' default first; 1 is no guidance (half the compute)
DEFAULT_GUIDANCE = 5.0
VALIDATION_SEED = 1000  # pool prompt k uses seeds 1000 + k, 2000 + k, ...: none of the test seeds (0-99)
SEED_STRIDE = 1000  # more than the pool's size (124 prompts), so no two images share a seed
SEEDS_PER_PROMPT = 2
STRENGTH_TARGET, CONTENT_DROP_LIMIT = 0.9, 0.10


def validation_pool(seed: int = 2028) -> list[str]:
    """Every grammar prompt not reserved for evaluation, in a fixed order."""
    reserved = set(reserved_prompts())
    pool = [p for p in grammar_prompts() if p not in reserved]
    return [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]


def validation_prompts(style: str, count: int | None = None) -> list[str]:
    """The pool prompts that ``style`` did not train on (the first ``count`` of them, if given)."""
    seen = {f.read_text().strip() for f in (STYLES_DIR / style / "images").glob("*.txt")}
    return [p for p in validation_pool() if p not in seen][:count]


def validation_images(prompts: Sequence[str], seeds_per_prompt: int = SEEDS_PER_PROMPT) -> list[tuple[str, int]]:
    """(prompt, seed) of every validation image of ``prompts``: each prompt at its pool seeds."""
    index = {p: k for k, p in enumerate(validation_pool())}
    return [(p, VALIDATION_SEED + index[p] + r * SEED_STRIDE) for r in range(seeds_per_prompt) for p in prompts]


def meets_targets(m: dict) -> bool:
    return m["strength"] >= STRENGTH_TARGET and m["content_drop"] <= CONTENT_DROP_LIMIT + 1e-9


def net_strength(m: dict) -> float:
    """Strength less content lost; a content gain counts as none (within validation noise)."""
    return m["strength"] - max(0.0, m["content_drop"])


def choose(measured: dict[float, dict]) -> float:
    """The highest guidance that meets both targets (the default side: least change from what
    users expect); else the best ``net_strength``. ``measured``: guidance -> {"strength", "content_drop"}."""
    meeting = [g for g, m in measured.items() if meets_targets(m)]
    if meeting:
        return max(meeting)
    return max(measured, key=lambda g: (net_strength(measured[g]), g))


def recorded_guidance(style: str, base: str, variant: str = "shira") -> float | None:
    """The guidance ``style.json`` recommends for this adapter, if any."""
    record_path = STYLES_DIR / style / "style.json"
    if not record_path.is_file():
        return None
    entry = json.loads(record_path.read_text()).get("files", {}).get(f"{base}/{variant}", {})
    return entry.get("guidance")


def default_guidance(styles: Sequence[tuple[str, float]], base: str) -> float:
    """What ``shira generate`` uses without ``--guidance``: a single bundled style's recommended
    guidance for this base (its SHiRA adapter, the one generate fuses); else the default. Mixes
    keep the default: their guidance is not measured."""
    if len(styles) == 1:
        recorded = recorded_guidance(styles[0][0], base) if (STYLES_DIR / styles[0][0]).is_dir() else None
        if recorded is not None:
            return float(recorded)
    return DEFAULT_GUIDANCE


def standing(measured: dict[float, dict]) -> tuple[bool, float]:
    """How well an adapter does at its chosen guidance, for comparing adapters of one style (such as
    two training seeds): meeting both targets first, then strength less content lost."""
    m = measured[choose(measured)]
    return meets_targets(m), net_strength(m)


def plain_content(pipe, shots: Sequence[tuple[str, int]], steps: int, candidates: Sequence[float],
                  desc: str = "") -> dict:
    """The base's own content right (0 or 1) per validation image and guidance: each style's content
    drop is taken on its own images."""
    from .bench_generate import content_scores
    from .evaluate import generate_batched

    shots = sorted(set(shots), key=lambda shot: shot[1])
    right = {}
    for g in candidates:
        images = generate_batched(pipe, [p for p, _ in shots], steps, g, desc=f"{desc}plain g{g:g}",
                                  seeds=[seed for _, seed in shots])
        for shot, image in zip(shots, images):
            right[shot, g] = content_scores([image], [parse_prompt(shot[0])])["all"]
    return right


def measure_adapter(pipe, bank, style: str, variant: str, path, shots: Sequence[tuple[str, int]], plain_right: dict,
                    steps: int = 20, candidates: Sequence[float] = CANDIDATES, desc: str = "") -> dict:
    """Strength, content and content drop of one adapter file at every candidate guidance."""
    from .bench_generate import content_scores
    from .evaluate import applied_adapter, generate_batched
    from .styles import STYLES

    spec = STYLES[style]
    triggered = [with_triggers(p, [spec.trigger]) for p, _ in shots]
    expected = [parse_prompt(p) for p, _ in shots]
    measured = {}
    with applied_adapter(pipe, bank, path, variant):
        for g in candidates:
            images = generate_batched(pipe, triggered, steps, g, desc=f"{desc}{style} {variant} g{g:g}",
                                      seeds=[seed for _, seed in shots])
            content = content_scores(images, expected, looks=[spec.look])["all"]
            plain = float(np.mean([plain_right[shot, g] for shot in shots]))
            measured[g] = {"strength": style_strength(images, spec.look), "content": content,
                           "content_drop": plain - content}
    return measured


def recommend(base: str, styles: Sequence[str], variants: Sequence[str], count: int | None = None,
              seeds_per_prompt: int = SEEDS_PER_PROMPT, steps: int = 20,
              candidates: Sequence[float] = CANDIDATES) -> dict:
    """Measure every adapter at every candidate guidance on its style's validation images, choose,
    and write the choice (with the measurements) into each ``style.json``. Returns the results."""
    from .bank import StyleBank
    from .bases import load_pipeline
    from .styles import adapter_path

    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    plan = {name: validation_prompts(name, count) for name in styles}
    shots = {name: validation_images(prompts, seeds_per_prompt) for name, prompts in plan.items()}
    plain_right = plain_content(pipe, [shot for s in shots.values() for shot in s], steps, candidates, f"{base}: ")
    bank = StyleBank(pipe.unet)
    results = {}
    for name in styles:
        for variant in variants:
            path = adapter_path(name, base, variant)
            if not path.is_file():
                continue
            measured = measure_adapter(pipe, bank, name, variant, path, shots[name], plain_right, steps, candidates,
                                       f"{base}: ")
            chosen = choose(measured)
            results[f"{name}/{variant}"] = {"guidance": chosen, "prompts": len(plan[name]),
                                            "images": len(shots[name]), "measured": measured}
            write_choice(name, base, variant, chosen, len(plan[name]), len(shots[name]), measured)
    return {"base": base, "candidates": list(candidates), "steps": steps, "adapters": results}


def rechoose(result: dict) -> dict:
    """Apply ``choose`` again to a saved ``recommend`` result (its JSON line) and write the choices
    into ``style.json``, without generating anything: for a changed rule, or restoring the files.
    Adapters that went through ``styles retrain`` since are left alone (the saved run may have
    measured the one they replaced; their own figures are in ``style.json``)."""
    import sys

    for key, entry in list(result["adapters"].items()):
        name, variant = key.split("/")
        record = json.loads((STYLES_DIR / name / "style.json").read_text())
        if "trials" in record.get("files", {}).get(f"{result['base']}/{variant}", {}):
            print(f"{result['base']} {key}: retrained since this run, left as style.json has it", file=sys.stderr)
            del result["adapters"][key]
            continue
        measured = {float(g): m for g, m in entry["measured"].items()}
        entry["measured"], entry["guidance"] = measured, choose(measured)
        write_choice(name, result["base"], variant, entry["guidance"], entry["prompts"],
                     entry.get("images", entry["prompts"]), measured)
    return result


def write_choice(style: str, base: str, variant: str, guidance: float, prompts: int, images: int, measured: dict) -> None:
    from .styles import update_record

    update_record(style, f"{base}/{variant}", {"guidance": guidance, "guidance_validation": {
        "prompts": prompts, "images": images, **{
        f"{g:g}": {k: round(v, 4) for k, v in m.items()} for g, m in measured.items()}}})


def format_recommendations(result: dict) -> str:
    lines = [f"base {result['base']}: guidance chosen on each style's validation prompts "
             f"(strength / content drop at each candidate)",
             "| adapter | prompts | images | " + " | ".join(f"g{g:g}" for g in result["candidates"]) + " | chosen |",
             "| --- | --- | --- | " + " | ".join("---" for _ in result["candidates"]) + " | --- |"]
    for key, r in result["adapters"].items():
        cells = [f"{r['measured'][g]['strength']:.0%} / {-r['measured'][g]['content_drop'] * 100:+.0f}"
                 for g in result["candidates"]]
        lines.append(f"| {key} | {r['prompts']} | {r.get('images', r['prompts'])} | " + " | ".join(cells)
                     + f" | {r['guidance']:g} |")
    return "\n".join(lines)
