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
import json
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..bases import load_pipeline
from ..bundled.specs import STYLES
from ..catalog import default_catalog
from ..core.adapter import SparseAdapter
from ..files import write_atomically
from ..core.bank import StyleBank
from ..errors import ShiraError
from ..generate import drop_empty_lora_layers, generate_batched, with_triggers
from ..metrics import concept_retention, content_scores, style_strength
from .measures import DetectorMeasure, FeatureMeasure, LookMeasure, vae_encoder
from ..toy.looks import CONFLICTS, apply_looks
from ..toy.prompts import held_out_prompts
from ..toy.world import render, sample_scene
from .ties import ties_merge

METHODS = ("shira-shared", "shira-slots", "ties", "lora")
MEASURES = ("look", "features", "detector")
FEATURE_REFERENCES = 24  # training images per style the feature measure takes as its style references
VARIANT_OF = {"shira-shared": "shira", "shira-slots": "shira-slot", "ties": "shira", "lora": "lora"}


def style_pairs(styles: Sequence[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(pairs to measure, pairs whose looks erase each other)."""
    measured, conflicting = [], []
    for a, b in itertools.combinations(styles, 2):
        (conflicting if _conflict(a, b) else measured).append((a, b))
    return measured, conflicting


def style_triples(styles: Sequence[str]) -> list[tuple[str, str, str]]:
    """Triples with no pair whose looks erase each other."""
    return [t for t in itertools.combinations(styles, 3) if not any(_conflict(a, b) for a, b in itertools.combinations(t, 2))]


def _conflict(a: str, b: str) -> bool:
    return frozenset((STYLES[a].look, STYLES[b].look)) in CONFLICTS


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


def _measures(pipe, base: str, styles, measure: str, prompts, steps, guidance_scale, seeds, say) -> dict:
    """A strength measure per style: its look's, or label-free: features against its own images, or
    its style detector."""
    if measure == "look":
        return {s: LookMeasure(STYLES[s].look) for s in styles}
    from ..training import load_training_data

    say("base alone (the label-free measure's plain references)")
    plain = generate_batched(pipe, prompts, steps, guidance_scale, seeds=seeds)
    if measure == "detector":
        return {s: DetectorMeasure(_style_detector(pipe, base, s, say), plain) for s in styles}
    encode = vae_encoder(pipe.vae)
    catalog = default_catalog()
    out = {}
    for style in styles:
        record = catalog.get(style)
        data = load_training_data(str(record.folder / (record.images or "images")))
        out[style] = FeatureMeasure(encode, [np.asarray(im.convert("RGB")) for im in data.images[:FEATURE_REFERENCES]],
                                    plain)
    return out


def _style_detector(pipe, base: str, style: str, say):
    """The detector stored beside the style's adapter for this base (``X.detector.json``, written by
    ``shira train``), else one fit now from the style's training images (the base's images for its
    captions drawn here: ``quality.detector.fit_style_detector``)."""
    from ..quality.detector import StyleDetector, fit_style_detector
    from ..quality.prompts import without_trigger
    from ..training import load_training_data

    catalog = default_catalog()
    record = catalog.get(style)
    adapter = Path(record.adapter_path(base))
    stored = adapter.with_name(adapter.name[: -len(".safetensors")] + ".detector.json")
    if stored.is_file():
        return StyleDetector.load(stored)
    say(f"{style}: fitting its style detector (the base's images for its captions)")
    data = load_training_data(str(record.folder / (record.images or "images")))
    return fit_style_detector(pipe, data.images, [without_trigger(c, record.trigger) for c in data.captions])


def _settings(result: dict) -> dict:
    return {k: result.get(k) for k in ("base", "styles", "measure", "prompts", "triple_prompts", "steps", "guidance_scale", "weight")}


def _load_finished(path: str | None, result: dict) -> dict:
    """Methods already measured with these settings in ``path`` (a resumed run skips them)."""
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError) as exc:
        raise ShiraError(f"{path}: not a readable fusion result ({exc}); remove it or choose another --out") from None
    if isinstance(stored, dict):
        stored.setdefault("measure", "look")  # files from before the measure was a setting
    if not isinstance(stored, dict) or _settings(stored) != _settings(result):
        raise ShiraError(f"{path} holds a fusion run with other settings; remove it or choose another --out")
    return stored.get("methods", {})


def _save(path: str | None, result: dict) -> None:
    if path:  # a run stopped mid-write leaves the previous file whole
        write_atomically(path, lambda temporary: Path(temporary).write_text(json.dumps(result, indent=1)))


def _mix_row(images, expected, members: Sequence[str], alone: dict[str, float], measures: dict) -> dict:
    looks = [STYLES[s].look for s in members]
    strengths = {s: measures[s].strength(images) for s in members}
    return {"strength": strengths, "alone": {s: alone[s] for s in members},
            "retention": {s: concept_retention(strengths[s], alone[s]) for s in members},
            "content": content_scores(images, expected, looks=looks)["all"]}


def _summary(rows: dict) -> dict:
    retained = [r for row in rows.values() for r in row["retention"].values()]
    return {"mean_retention": float(np.mean(retained)) if retained else None,
            "min_retention": float(np.min(retained)) if retained else None,
            "mean_content": float(np.mean([row["content"] for row in rows.values()])) if rows else None}


def eval_fusion(base: str, styles: Sequence[str] | None = None, methods: Sequence[str] = METHODS,
                count: int = 40, steps: int = 20, guidance_scale: float = 5.0, weight: float = 1.0,
                triples: int = 0, out: str | None = None, measure: str = "look",
                progress: Callable[[str], None] | None = None) -> dict:
    """Retention of each member and content of the mix, for every compatible pair and method; with
    ``triples`` > 0, also every compatible triple, on the first ``triples`` prompts. With ``out``,
    the result is saved after each method and a rerun with the same settings skips finished methods.
    ``measure``: ``look`` (the toy looks' own measures) or ``features`` (label-free, ``measures.py``:
    nearer the style's training images than the base's plain images, in the VAE's feature space)."""
    styles = list(styles or STYLES)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ShiraError(f"unknown fusion method {unknown[0]!r} (methods: {', '.join(METHODS)})")
    if measure not in MEASURES:
        raise ShiraError(f"unknown style measure {measure!r} (measures: {', '.join(MEASURES)})")
    if not 0 <= triples <= count:
        raise ShiraError(f"prompts per triple must be in [0, {count}] (the pairs' prompts), got {triples}")
    pairs, conflicting = style_pairs(styles)
    trios = style_triples(styles) if triples else []
    expected = held_out_prompts(count)
    prompts = [e["prompt"] for e in expected]
    seeds = list(range(count))
    say = progress or (lambda text: None)
    result = {"base": base, "styles": styles, "measure": measure, "prompts": count, "triple_prompts": triples, "steps": steps,
              "guidance_scale": guidance_scale, "weight": weight,
              "conflicting": [list(p) for p in conflicting], "ceiling": {}, "methods": {}}
    for a, b in pairs:
        # The ceiling is what the look measures see of rendered looks; the feature measure has none.
        result["ceiling"][f"{a}+{b}"] = rendered_ceiling(a, b, count) if measure == "look" else None
    finished = _load_finished(out, result)
    todo = [m for m in methods if m not in finished]
    result["methods"].update({m: finished[m] for m in methods if m in finished})
    if finished:
        say(f"{out}: {', '.join(m for m in methods if m in finished)} already measured, skipped")
    if not todo:
        return result
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    measures = _measures(pipe, base, styles, measure, prompts, steps, guidance_scale, seeds, say)
    alone_images: dict[tuple[str, str], list] = {}  # (variant, style) -> images: shira-shared and ties share them
    for method in todo:
        mixer = _Mixer(pipe, base, method, styles)
        rows, trio_rows, alone = {}, {}, {}
        try:
            if mixer.missing:
                say(f"{method}: no {VARIANT_OF[method]} adapter on {base} for {', '.join(mixer.missing)}; "
                    "their mixes are skipped")
            for style in [s for s in styles if s not in mixer.missing]:
                key = (VARIANT_OF[method], style)
                if key not in alone_images:
                    say(f"{method}: {style} alone")
                    triggered = [with_triggers(p, [STYLES[style].trigger]) for p in prompts]
                    with mixer.use({style: weight}):
                        alone_images[key] = generate_batched(pipe, triggered, steps, guidance_scale, seeds=seeds)
                alone[style] = measures[style].strength(alone_images[key])
            mixes = [(pair, count) for pair in pairs] + [(trio, triples) for trio in trios]
            for members, n in mixes:
                if any(s in mixer.missing for s in members):
                    continue
                say(f"{method}: {' + '.join(members)}")
                triggered = [with_triggers(p, [STYLES[s].trigger for s in members]) for p in prompts[:n]]
                with mixer.use({s: weight for s in members}):
                    images = generate_batched(pipe, triggered, steps, guidance_scale, seeds=seeds[:n])
                if len(members) == 2:
                    rows["+".join(members)] = _mix_row(images, expected[:n], members, alone, measures)
                else:  # alone over the same first n prompts and seeds
                    subset = {s: measures[s].strength(alone_images[(VARIANT_OF[method], s)][:n]) for s in members}
                    trio_rows["+".join(members)] = _mix_row(images, expected[:n], members, subset, measures)
        finally:
            mixer.close()
        result["methods"][method] = {"alone": alone, "pairs": rows, **_summary(rows)}
        if trios:
            result["methods"][method]["triples"] = trio_rows
            result["methods"][method]["triple_summary"] = _summary(trio_rows)
        _save(out, result)
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
        shown = f"{ceiling[a]:.2f} / {ceiling[b]:.2f}" if ceiling else "-"
        lines.append(f"| {pair} | {shown} | " + " | ".join(cells) + " |")
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
    with_triples = [m for m in methods if result["methods"][m].get("triples")]
    if with_triples:
        lines += ["", f"triples: retention of each member (content), first {result.get('triple_prompts')} prompts",
                  "| triple | " + " | ".join(with_triples) + " |", "| --- | " + " | ".join("---" for _ in with_triples) + " |"]
        trios = sorted({t for m in with_triples for t in result["methods"][m]["triples"]})
        for trio in trios:
            cells = []
            for method in with_triples:
                row = result["methods"][method]["triples"].get(trio)
                cells.append("-" if row is None else " / ".join(f"{row['retention'][s]:.2f}" for s in trio.split("+"))
                             + f" ({row['content']:.0%})")
            lines.append(f"| {trio} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("; ".join(f"{m}: mean {result['methods'][m]['triple_summary']['mean_retention']:.2f}, min "
                               f"{result['methods'][m]['triple_summary']['min_retention']:.2f}" for m in with_triples))
    return "\n".join(lines)
