"""``shira eval transfer``: the bundled styles carried from toy-sd to toy-sdxl, measured.

Per style: 5 seed images (the first 5 of ``styles/<name>/images/``), then three adapters on toy-sdxl
with the same student recipe: the transfer (filtered synthetic data), the same pipeline without the
filter, and an adapter trained on the 5 seed images alone. Each is measured on the first ``prompts``
reserved prompts (seeds 0, 1, ...): style strength against the source adapter's on toy-sd, content
(read through the look) against toy-sdxl's own content on the plain prompts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from ..errors import ShiraError
from .pipeline import TransferConfig, source_applied, teacher_images, train_student, transfer, write_json
from .lora import read_adapter_file

SEED_IMAGES = 5
ROWS = ("transfer", "no filter", "seeds only")  # the adapters each style gets on the target base


def seed_pairs(style: str, count: int = SEED_IMAGES) -> list:
    """The first ``count`` training images of a bundled style with their captions."""
    from ..catalog import default_catalog
    from ..training import load_training_data

    record = default_catalog().get(style)
    folder = record.folder / (record.images or "images")
    data = load_training_data(str(folder))
    order = sorted(range(len(data)), key=lambda i: os.path.basename(data.names[i]))[:count]
    return [(data.images[i], data.captions[i]) for i in order]


def measure(pipe, adapter_file, look: str, expected: list[dict], trigger, *, guidance: float, steps: int) -> dict:
    """Style strength and content (through the look) of an adapter on ``pipe`` (None: the base alone,
    content read plainly) on the expected prompts, image i with seed i."""
    from ..metrics import content_scores, style_strength

    prompts = [e["prompt"] for e in expected]
    seeds = list(range(len(prompts)))
    if adapter_file is None:
        images = teacher_images(pipe, prompts, None, seeds=seeds, steps=steps, guidance=guidance)
        looks = ()
    else:
        info = read_adapter_file(adapter_file)
        with source_applied(pipe, info):
            images = teacher_images(pipe, prompts, trigger, seeds=seeds, steps=steps, guidance=guidance)
        looks = (look,)
    content = content_scores(images, expected, looks=looks)
    return {"strength": round(style_strength(images, look), 4), "content": round(content["all"], 4)}


def eval_transfer(styles: list[str], out_folder: str, *, source: str = "toy-sd", target: str = "toy-sdxl",
                  variant: str = "shira", kind: str | None = None, rows: tuple = ROWS, steps: int = 300,
                  synthetic: int = 20, prompts: int = 20, with_seeds: bool = True,
                  guidance: float = 5.0, sample_steps: int = 20, seed: int = 0, generator: str | None = None,
                  progress: bool = True, log=print) -> dict:
    """The figures of docs/transfer.md for ``styles``; results go to ``out_folder/eval-transfer.json``
    (styles already there with the same settings are not run again). ``variant``: the source adapter
    (shira | lora); ``kind``: the students' (default: the source's); ``rows``: which of ``ROWS``."""
    from ..bases import load_pipeline
    from ..bundled.specs import STYLES, adapter_path
    from ..toy.prompts import held_out_prompts

    if unknown := [r for r in rows if r not in ROWS]:
        raise ShiraError(f"unknown row {unknown[0]!r} (rows: {', '.join(ROWS)})")
    for style in styles:
        if style not in STYLES:
            raise ShiraError(f"unknown bundled style {style!r} (bundled: {', '.join(STYLES)})")
    os.makedirs(out_folder, exist_ok=True)
    results_path = os.path.join(out_folder, "eval-transfer.json")
    settings = {"source": source, "target": target, "variant": variant, "kind": kind, "rows": list(rows),
                "steps": steps, "synthetic": synthetic, "with_seeds": with_seeds,
                "prompts": prompts, "guidance": guidance, "sample_steps": sample_steps, "seed": seed,
                "seed_images": SEED_IMAGES, "generator": generator or "neighbour substitution (offline)"}
    results = {"settings": settings, "styles": {}}
    if os.path.isfile(results_path):
        with open(results_path, encoding="utf-8") as handle:
            earlier = json.load(handle)
        if earlier.get("settings") == settings:
            results = earlier
    expected = held_out_prompts(prompts)
    source_pipe, target_pipe = load_pipeline(source), load_pipeline(target)
    for pipe in (source_pipe, target_pipe):
        pipe.set_progress_bar_config(disable=True)
    base_alone = results.get("base_alone")
    for style in styles:
        if style in results["styles"]:
            log(f"{style}: already measured, skipped")
            continue
        started = time.time()
        spec = STYLES[style]
        source_file = str(adapter_path(style, source, variant))
        info = read_adapter_file(source_file)
        pairs = seed_pairs(style)
        folder = os.path.join(out_folder, style)
        template = TransferConfig(adapter=source_file, source_base=source, target_base=target, seed_data=pairs,
                                  out=os.path.join(folder, f"{style}.transfer.safetensors"), synthetic=synthetic,
                                  steps=steps, guidance=guidance, sample_steps=sample_steps, seed=seed,
                                  generator=generator, overwrite=True, progress=progress, kind=kind,
                                  with_seeds=with_seeds)
        runs = {}
        if "transfer" in rows:
            report = transfer(template, source_pipe=source_pipe, target_pipe=target_pipe)
            runs["transfer"] = (template.out, report["filter"], report["timings"]["total_s"])
        if "no filter" in rows:
            unfiltered = dataclasses.replace(template, filter=False,
                                             out=os.path.join(folder, f"{style}.unfiltered.safetensors"))
            report_u = transfer(unfiltered, source_pipe=source_pipe, target_pipe=target_pipe)
            runs["no filter"] = (unfiltered.out, report_u["filter"], report_u["timings"]["total_s"])
        if "seeds only" in rows:
            seeds_only = dataclasses.replace(template, out=os.path.join(folder, f"{style}.seeds-only.safetensors"))
            t = time.time()
            train_student(target_pipe, pairs, seeds_only, kind or info.kind, info.trigger, info.rank or 2)
            runs["seeds only"] = (seeds_only.out, None, round(time.time() - t, 1))

        measured = {"source": measure(source_pipe, source_file, spec.look, expected, info.trigger,
                                      guidance=guidance, steps=sample_steps)}
        if base_alone is None:
            base_alone = results["base_alone"] = measure(target_pipe, None, spec.look, expected, None,
                                                         guidance=guidance, steps=sample_steps)
        for label, (path, filter_summary, seconds) in runs.items():
            m = measure(target_pipe, path, spec.look, expected, info.trigger, guidance=guidance, steps=sample_steps)
            src = measured["source"]["strength"]
            m["strength_vs_source"] = round(m["strength"] / src, 4) if src else None
            m["content_drop_vs_base"] = round(base_alone["content"] - m["content"], 4)
            m["seconds"] = seconds
            if filter_summary is not None:
                m["filter"] = filter_summary
            measured[label] = m
        measured["seconds"] = round(time.time() - started, 1)
        results["styles"][style] = measured
        write_json(results_path, results)
        log(f"{style}: " + json.dumps({k: v for k, v in measured.items() if k != "seconds"}))
    results["summary"] = _summary(results)
    write_json(results_path, results)
    return results


def _summary(results: dict) -> dict:
    rows = results["styles"].values()
    out = {}
    for label in ROWS:
        ratios = [r[label]["strength_vs_source"] for r in rows if r.get(label, {}).get("strength_vs_source") is not None]
        drops = [r[label]["content_drop_vs_base"] for r in rows if label in r]
        if drops:
            out[label] = {"mean_strength_vs_source": round(float(np.mean(ratios)), 4) if ratios else None,
                          "mean_content_drop": round(float(np.mean(drops)), 4),
                          "styles_meeting_targets": sum(1 for r in rows if label in r and
                                                        (r[label]["strength_vs_source"] or 0) >= 0.95 and
                                                        r[label]["content_drop_vs_base"] <= 0.05)}
    return out


def format_transfer_table(result: dict) -> str:
    """A markdown table: per style and adapter, strength (and its ratio to the source's) and content."""
    settings = result["settings"]
    base = result.get("base_alone", {})
    kinds = f"{settings.get('variant', 'shira')} -> {settings.get('kind') or settings.get('variant', 'shira')}"
    lines = [f"{settings['source']} -> {settings['target']} ({kinds}), {settings['seed_images']} seed images, "
             f"{settings['synthetic']} synthetic, {settings['steps']} student steps, {settings['prompts']} reserved "
             f"prompts, guidance {settings['guidance']:g}; {settings['target']} alone: content "
             f"{base.get('content', float('nan')):.2f}",
             "",
             "| style | source strength | adapter | strength (x source) | content (drop) | kept / drawn | MMD before -> after |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for style, rows in result["styles"].items():
        for label in ROWS:
            if label not in rows:
                continue
            r = rows[label]
            f = r.get("filter")
            kept = f"{f['kept']} / {f['drawn']}" if f else "-"
            mmd = f"{f['mmd_before']:.3f} -> {f['mmd_after']:.3f}" if f else "-"
            ratio = f"{r['strength_vs_source']:.2f}" if r.get("strength_vs_source") is not None else "-"
            lines.append(f"| {style} | {rows['source']['strength']:.2f} | {label} | {r['strength']:.2f} ({ratio}) | "
                         f"{r['content']:.2f} ({r['content_drop_vs_base']:+.2f}) | {kept} | {mmd} |")
    return "\n".join(lines)
