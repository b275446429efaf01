"""Each bundled adapter's recommended guidance scale, chosen on validation prompts.

Classifier-free guidance extrapolates from the unconditional prediction towards the prompt's,
which overshoots looks that compress the palette (night's dark colors come out bright at 5) and
sharpens overlays; style adapters in the wild ship with a recommended guidance for that reason.
Here it is chosen by measurement, never on the prompts reserved for evaluation: the validation
prompts of a style are the grammar prompts that are neither reserved nor among its own training
captions (unseen by its adapters, like the test prompts, but not them). The choice is written
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
VALIDATION_SEED = 1000  # image k of the validation pool uses seed 1000 + k, none of the test seeds
STRENGTH_TARGET, CONTENT_DROP_LIMIT = 0.9, 0.10


def validation_pool(seed: int = 2028) -> list[str]:
    """Every grammar prompt not reserved for evaluation, in a fixed order."""
    reserved = set(reserved_prompts())
    pool = [p for p in grammar_prompts() if p not in reserved]
    return [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]


def validation_prompts(style: str, count: int = 50) -> list[str]:
    """Up to ``count`` pool prompts that ``style`` did not train on."""
    seen = {f.read_text().strip() for f in (STYLES_DIR / style / "images").glob("*.txt")}
    return [p for p in validation_pool() if p not in seen][:count]


def choose(measured: dict[float, dict]) -> float:
    """The highest guidance that meets both targets (the default side: least change from what
    users expect); else the best strength less content lost (a content gain counts as none: at
    50 prompts it is noise). ``measured``: guidance -> {"strength", "content_drop"}."""
    meeting = [g for g, m in measured.items()
               if m["strength"] >= STRENGTH_TARGET and m["content_drop"] <= CONTENT_DROP_LIMIT + 1e-9]
    if meeting:
        return max(meeting)
    return max(measured, key=lambda g: (measured[g]["strength"] - max(0.0, measured[g]["content_drop"]), g))


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


def recommend(base: str, styles: Sequence[str], variants: Sequence[str], count: int = 50, steps: int = 20,
              candidates: Sequence[float] = CANDIDATES) -> dict:
    """Measure every adapter at every candidate guidance on its style's validation prompts, choose,
    and write the choice (with the measurements) into each ``style.json``. Returns the results."""
    from .bank import StyleBank
    from .bases import load_pipeline
    from .bench_generate import content_scores
    from .evaluate import applied_adapter, generate_batched
    from .styles import STYLES, adapter_path

    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    pool = validation_pool()
    seeds = {p: VALIDATION_SEED + k for k, p in enumerate(pool)}
    plan = {name: validation_prompts(name, count) for name in styles}
    needed = sorted({p for prompts in plan.values() for p in prompts}, key=seeds.get)
    # The base's own content per prompt and guidance: each style's drop is taken on its own prompts.
    plain_right = {}
    for g in candidates:
        images = generate_batched(pipe, needed, steps, g, desc=f"{base}: plain g{g:g}",
                                  seeds=[seeds[p] for p in needed])
        for p, image in zip(needed, images):
            plain_right[p, g] = content_scores([image], [parse_prompt(p)])["all"]
    bank = StyleBank(pipe.unet)
    results = {}
    for name in styles:
        spec, prompts = STYLES[name], plan[name]
        triggered = [with_triggers(p, [spec.trigger]) for p in prompts]
        expected = [parse_prompt(p) for p in prompts]
        for variant in variants:
            path = adapter_path(name, base, variant)
            if not path.is_file():
                continue
            measured = {}
            with applied_adapter(pipe, bank, path, variant):
                for g in candidates:
                    images = generate_batched(pipe, triggered, steps, g, desc=f"{base}: {name} {variant} g{g:g}",
                                              seeds=[seeds[p] for p in prompts])
                    content = content_scores(images, expected, looks=[spec.look])["all"]
                    plain = float(np.mean([plain_right[p, g] for p in prompts]))
                    measured[g] = {"strength": style_strength(images, spec.look), "content": content,
                                   "content_drop": plain - content}
            chosen = choose(measured)
            results[f"{name}/{variant}"] = {"guidance": chosen, "prompts": len(prompts), "measured": measured}
            _write(name, base, variant, chosen, len(prompts), measured)
    return {"base": base, "candidates": list(candidates), "steps": steps, "adapters": results}


def rechoose(result: dict) -> dict:
    """Apply ``choose`` again to a saved ``recommend`` result (its JSON line) and write the choices
    into ``style.json``, without generating anything: for a changed rule, or restoring the files."""
    for key, entry in result["adapters"].items():
        name, variant = key.split("/")
        measured = {float(g): m for g, m in entry["measured"].items()}
        entry["measured"], entry["guidance"] = measured, choose(measured)
        _write(name, result["base"], variant, entry["guidance"], entry["prompts"], measured)
    return result


def _write(style: str, base: str, variant: str, guidance: float, prompts: int, measured: dict) -> None:
    from .styles import update_record

    update_record(style, f"{base}/{variant}", {"guidance": guidance, "guidance_validation": {"prompts": prompts, **{
        f"{g:g}": {k: round(v, 4) for k, v in m.items()} for g, m in measured.items()}}})


def format_recommendations(result: dict) -> str:
    lines = [f"base {result['base']}: guidance chosen on each style's validation prompts "
             f"(strength / content drop at each candidate)",
             "| adapter | prompts | " + " | ".join(f"g{g:g}" for g in result["candidates"]) + " | chosen |",
             "| --- | --- | " + " | ".join("---" for _ in result["candidates"]) + " | --- |"]
    for key, r in result["adapters"].items():
        cells = [f"{r['measured'][g]['strength']:.0%} / {-r['measured'][g]['content_drop'] * 100:+.0f}"
                 for g in result["candidates"]]
        lines.append(f"| {key} | {r['prompts']} | " + " | ".join(cells) + f" | {r['guidance']:g} |")
    return "\n".join(lines)
