"""``shira eval fusion``: how much of each style survives a mix, by method, on a bundled base.

For every compatible pair of bundled styles (pairs whose looks erase each other by construction,
``toy.looks.CONFLICTS``, are listed, not measured), on the first ``count`` reserved prompts with
both trigger words, image i with seed i: each member's *retention*, its strength in the mixed
images over its strength alone (same prompts, seeds, guidance and weight), and the content
accuracy of the mixed images read through both looks. Methods, at equal parameter count:

- ``shira-shared``: the bundled SHiRA adapters, which share one Struct mask, summed;
- ``shira-slots``: SHiRA adapters trained on disjoint Struct slots (variant ``shira-slot``), summed;
- ``ties``: the shared-mask adapters merged TIES-style where they overlap (``ties.py``);
- ``lora``: the bundled LoRAs mixed with diffusers' ``set_adapters``.

A method whose files are missing for a style is skipped for the pairs it is in (and says so).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import numpy as np

from ..bases import load_pipeline
from ..bundled.specs import STYLES
from ..catalog import default_catalog
from ..core.adapter import SparseAdapter
from ..core.bank import StyleBank
from ..errors import ShiraError
from ..generate import drop_empty_lora_layers, generate_batched, with_triggers
from ..metrics import concept_retention, content_scores, style_strength
from ..toy.looks import CONFLICTS, apply_looks
from ..toy.prompts import held_out_prompts
from ..toy.world import render, sample_scene
from .ties import ties_merge

METHODS = ("shira-shared", "shira-slots", "ties", "lora")
VARIANT_OF = {"shira-shared": "shira", "shira-slots": "shira-slot", "ties": "shira", "lora": "lora"}


def style_pairs(styles: Sequence[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(pairs to measure, pairs whose looks erase each other)."""
    measured, conflicting = [], []
    for a, b in itertools.combinations(styles, 2):
        (conflicting if frozenset((STYLES[a].look, STYLES[b].look)) in CONFLICTS else measured).append((a, b))
    return measured, conflicting


def rendered_ceiling(a: str, b: str, count: int, seed: int = 11) -> dict:
    """Retention when both looks are applied exactly (rendered, no model): what the measures can
    see of each look under the other, the most any method can reach."""
    rng = np.random.default_rng(seed)
    scenes = [render(sample_scene(rng)) for _ in range(count)]
    looks = (STYLES[a].look, STYLES[b].look)
    mixed = [apply_looks(s, looks) for s in scenes]
    return {name: concept_retention(style_strength(mixed, STYLES[name].look),
                                    style_strength([apply_looks(s, [STYLES[name].look]) for s in scenes],
                                                   STYLES[name].look)) for name in (a, b)}


class _Mixer:
    """Fuses a mix of bundled styles into ``pipe`` for one method."""

    def __init__(self, pipe, base: str, method: str, styles: Sequence[str]):
        self.pipe, self.base, self.method = pipe, base, method
        catalog = default_catalog()
        variant = VARIANT_OF[method]
        self.paths = {s: catalog.get(s).adapter_path(base, variant) for s in styles}
        self.missing = sorted(s for s, p in self.paths.items() if not p.is_file())
        self.bank = StyleBank(pipe.unet) if method != "lora" else None
        self.loaded: set[str] = set()

    def _load(self, style: str) -> None:
        if style in self.loaded:
            return
        if self.method == "lora":
            self.pipe.load_lora_weights(str(self.paths[style]), adapter_name=style)
        else:
            self.bank.load(str(self.paths[style]), name=style)
        self.loaded.add(style)

    @contextmanager
    def use(self, mix: dict[str, float]):
        for style in mix:
            self._load(style)
        if self.method == "lora":
            self.pipe.set_adapters(list(mix), list(mix.values()))  # only these are active
            yield
            return
        if self.method == "ties" and len(mix) > 1:
            merged = ties_merge([SparseAdapter.load(self.paths[s]) for s in mix], list(mix.values()), name="ties")
            self.bank.add(merged, name="ties")
            try:
                with self.bank.use({"ties": 1.0}):
                    yield
            finally:
                self.bank.remove("ties")
            return
        with self.bank.use(mix):
            yield

    def close(self) -> None:
        if self.method == "lora" and self.loaded:
            self.pipe.delete_adapters(sorted(self.loaded))
            drop_empty_lora_layers(self.pipe)
        elif self.bank is not None:
            self.bank.restore()


def eval_fusion(base: str, styles: Sequence[str] | None = None, methods: Sequence[str] = METHODS,
                count: int = 40, steps: int = 20, guidance_scale: float = 5.0, weight: float = 1.0,
                progress: Callable[[str], None] | None = None) -> dict:
    """Retention of each member and content of the mix, for every compatible pair and method."""
    styles = list(styles or STYLES)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ShiraError(f"unknown fusion method {unknown[0]!r} (methods: {', '.join(METHODS)})")
    pairs, conflicting = style_pairs(styles)
    expected = held_out_prompts(count)
    prompts = [e["prompt"] for e in expected]
    seeds = list(range(count))
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    say = progress or (lambda text: None)
    result = {"base": base, "prompts": count, "steps": steps, "guidance_scale": guidance_scale, "weight": weight,
              "conflicting": [list(p) for p in conflicting], "ceiling": {}, "methods": {}}
    for a, b in pairs:
        result["ceiling"][f"{a}+{b}"] = rendered_ceiling(a, b, count)
    for method in methods:
        mixer = _Mixer(pipe, base, method, styles)
        rows, alone = {}, {}
        try:
            if mixer.missing:
                say(f"{method}: no {VARIANT_OF[method]} adapter on {base} for {', '.join(mixer.missing)}; "
                    "their pairs are skipped")
            for style in [s for s in styles if s not in mixer.missing]:
                say(f"{method}: {style} alone")
                triggered = [with_triggers(p, [STYLES[style].trigger]) for p in prompts]
                with mixer.use({style: weight}):
                    images = generate_batched(pipe, triggered, steps, guidance_scale, seeds=seeds)
                alone[style] = style_strength(images, STYLES[style].look)
            for a, b in pairs:
                if a in mixer.missing or b in mixer.missing:
                    continue
                say(f"{method}: {a} + {b}")
                triggered = [with_triggers(p, [STYLES[a].trigger, STYLES[b].trigger]) for p in prompts]
                with mixer.use({a: weight, b: weight}):
                    images = generate_batched(pipe, triggered, steps, guidance_scale, seeds=seeds)
                looks = [STYLES[a].look, STYLES[b].look]
                strengths = {s: style_strength(images, STYLES[s].look) for s in (a, b)}
                rows[f"{a}+{b}"] = {
                    "strength": strengths, "alone": {s: alone[s] for s in (a, b)},
                    "retention": {s: concept_retention(strengths[s], alone[s]) for s in (a, b)},
                    "content": content_scores(images, expected, looks=looks)["all"],
                }
        finally:
            mixer.close()
        retained = [r for row in rows.values() for r in row["retention"].values()]
        result["methods"][method] = {
            "alone": alone, "pairs": rows,
            "mean_retention": float(np.mean(retained)) if retained else None,
            "min_retention": float(np.min(retained)) if retained else None,
            "mean_content": float(np.mean([row["content"] for row in rows.values()])) if rows else None,
        }
    return result


def format_fusion_table(result: dict) -> str:
    methods = list(result["methods"])
    lines = [f"base {result['base']}: retention of each member (strength in the mix / alone) and content of the "
             f"mixed images, {result['prompts']} reserved prompts, guidance {result['guidance_scale']:g}, "
             f"weight {result['weight']:g} each",
             "| pair | ceiling | " + " | ".join(methods) + " |", "| --- | --- | " + " | ".join("---" for _ in methods) + " |"]
    for pair, ceiling in result["ceiling"].items():
        a, b = pair.split("+")
        cells = []
        for method in methods:
            row = result["methods"][method]["pairs"].get(pair)
            cells.append("-" if row is None else
                         f"{row['retention'][a]:.2f} / {row['retention'][b]:.2f} ({row['content']:.0%})")
        lines.append(f"| {pair} | {ceiling[a]:.2f} / {ceiling[b]:.2f} | " + " | ".join(cells) + " |")
    summary = []
    for method in methods:
        m = result["methods"][method]
        if m["mean_retention"] is not None:
            summary.append(f"{method}: mean {m['mean_retention']:.2f}, min {m['min_retention']:.2f}, "
                           f"content {m['mean_content']:.0%}")
    lines.append("")
    lines.append("; ".join(summary))
    if result["conflicting"]:
        lines.append("not measured (looks erase each other): " + ", ".join("+".join(p) for p in result["conflicting"]))
    return "\n".join(lines)
