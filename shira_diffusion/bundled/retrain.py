"""Bundled adapters trained again (another seed, or more steps), kept only where they do better on
validation.

The same recipe trained with another seed (another Struct mask or LoRA init, another order of
batches and noise) moves a toy style's strength by 10-20 points on some styles (README), the way a
trainer's second run differs from the first; trainers keep the better run. Here "better" is
decided on the validation images of the recommended setting (``recommended.py``), never on the
prompts reserved for evaluation: the challenger replaces the incumbent only if it clears the
nearer target by a wider margin (``recommended.margin``), each at its own recommended guidance
and weight (the challenger's chosen as ``recommend`` does). Either way ``style.json`` keeps what
each run measured (``trials``, by seed and steps).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..catalog import default_catalog
from ..errors import ShiraError
from .recommend import (CANDIDATES, SEEDS_PER_PROMPT, margin, measure_adapter, meets_targets, plain_content,
                          recommended_measurement, tune_weight, validation_images, validation_prompts, write_choice)


def trial_label(recipe: dict) -> str:
    return f"seed {recipe['seed']}, {recipe['max_train_steps']} steps"


def _summary(guidance: float, weight: float, m: dict) -> dict:
    return {"guidance": guidance, "weight": weight, **{k: round(m[k], 4) for k in ("strength", "content_drop")}}


def _incumbent(style: str, base: str, variant: str, prompts: int) -> dict:
    """The incumbent's style.json entry, whose validation measurements must be of the current
    validation set (``recommend`` writes them)."""
    entry = default_catalog().get(style).entry(base, variant)
    if entry is None:
        raise ShiraError(f"styles/{style} has no {base}/{variant} adapter: build it first")
    entry = entry.to_dict()
    validation = dict(entry.get("guidance_validation", {}))
    if (validation.pop("prompts", None), validation.pop("images", None)) != (prompts, SEEDS_PER_PROMPT * prompts):
        raise ShiraError(f"{style} {base}/{variant} has no measurements on the current validation images: "
                         f"run `shira styles recommend --style {style} --base {base}` first")
    return entry


def retrain(base: str, styles: Sequence[str], variants: Sequence[str], seed: int, train_steps: int | None = None,
            misses_only: bool = False, count: int | None = None, steps: int = 20,
            candidates: Sequence[float] = CANDIDATES) -> dict:
    """Train each adapter again with ``seed`` (and ``train_steps``, else its recipe's), measure it
    on its style's validation images (the first ``count`` prompts, as ``recommend`` measured the
    incumbent), and keep whichever of the two stands better. With ``misses_only``, only the
    adapters that miss the targets there at their recommended guidance and weight. Returns what each run
    measured and which was kept."""
    from ..bases import load_pipeline
    from ..core.bank import StyleBank
    from ..training.trainer import output_paths, train
    from .build import file_entry
    from .specs import STYLES, recipe_summary, train_config

    plan = {name: validation_prompts(name, count) for name in styles}
    shots = {name: validation_images(prompts) for name, prompts in plan.items()}
    incumbents = {}
    for name in styles:
        for variant in variants:
            entry = _incumbent(name, base, variant, len(plan[name]))
            if misses_only and meets_targets(recommended_measurement(entry)):
                continue
            challenger = train_config(STYLES[name], base, variant, train_steps, seed=seed)
            if trial_label(recipe_summary(challenger)) in (trial_label(entry["recipe"]), *entry.get("trials", {})):
                raise ShiraError(f"{name} {base}/{variant} was trained with seed {seed} and "
                                 f"{challenger.max_train_steps} steps already")
            incumbents[name, variant] = entry, challenger
    if not incumbents:
        return {"base": base, "adapters": {}}
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    needed = [shot for name, _ in incumbents for shot in shots[name]]
    plain = plain_content(pipe, needed, steps, candidates, f"{base}: ")
    bank = StyleBank(pipe.unet)
    results = {}
    for (name, variant), (entry, config) in incumbents.items():
        files = [Path(p) for key, p in output_paths(config.output).items() if key in ("adapter", "record", "loss_curve")]
        label = trial_label(recipe_summary(config))
        with tempfile.TemporaryDirectory() as kept:
            # The incumbent's files wait aside while the challenger trains in their place (its
            # run record and adapter header name the place it will have if it wins).
            for f in files:
                if f.exists():
                    shutil.move(f, Path(kept) / f.name)
            won = False
            try:
                result = train(config)
                measured = measure_adapter(pipe, bank, name, variant, config.output, shots[name], plain, steps,
                                           candidates, f"{base} {label}: ")
                guidance, weight, weights = tune_weight(pipe, bank, name, variant, config.output, shots[name], plain,
                                                        measured, steps, f"{base} {label}: ")
                # Each at its own recommended guidance and weight.
                won = margin(weights[weight]) > margin(recommended_measurement(entry))
            finally:  # the incumbent back in place unless the challenger won (also on errors)
                if not won:
                    for f in files:
                        if (Path(kept) / f.name).exists():
                            shutil.move(Path(kept) / f.name, f)
        trials = {**entry.get("trials", {}),
                  trial_label(entry["recipe"]): _summary(entry["guidance"], entry.get("weight", 1.0),
                                                         recommended_measurement(entry)),
                  label: _summary(guidance, weight, weights[weight])}
        key = f"{base}/{variant}"
        if won:
            default_catalog().update_entry(name, key, {**file_entry(config, result), "trials": trials}, replace=True)
            write_choice(name, base, variant, guidance, len(plan[name]), len(shots[name]), measured, weight, weights)
        else:
            default_catalog().update_entry(name, key, {"trials": trials})
        kept = recipe_summary(config) if won else entry["recipe"]
        results[f"{name}/{variant}"] = {"trials": trials, "kept": trial_label(kept)}
    return {"base": base, "adapters": results}


def format_retrain(result: dict) -> str:
    lines = [f"base {result['base']}: each training run at its recommended guidance (and weight) on the validation "
             "images (strength / content drop)", "| adapter | runs | kept |", "| --- | --- | --- |"]
    for key, r in result["adapters"].items():
        # One decimal: 89.6 % misses the 90 % target, which a rounded 90 % would hide.
        trials = "; ".join(f"{label}: {t['strength']:.1%} / {-t['content_drop'] * 100:+.1f} (g{t['guidance']:g}"
                           + (f" w{t['weight']:g}" if t.get("weight", 1.0) != 1.0 else "") + ")"
                           for label, t in r["trials"].items())
        lines.append(f"| {key} | {trials} | {r['kept']} |")
    return "\n".join(lines)
