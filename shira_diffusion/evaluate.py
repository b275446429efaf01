"""Style strength and content accuracy of style adapters, measured on generated images.

No learned judge: content is read back through the style's look (``toy.styled_content``), and a
style's strength is the share of images its look's measure recognises (``toy.looks.shows_look``).
Prompts are the grammar prompts reserved for evaluation (no bundled style trains on them), one
scene each; image i uses seed i.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .bases import load_pipeline
from .bundled.specs import STYLES, VARIANTS, adapter_path
from .catalog import default_catalog
from .core.bank import StyleBank
from .errors import ShiraError
from .generate import DEFAULT_GUIDANCE, applied_adapter, generate_batched, with_triggers
from .images import from_model_range, image_grid, to_model_range, vae_round_trip
from .metrics import content_scores, style_strength
from .toy.looks import LOOKS
from .toy.prompts import HELD_OUT, held_out_prompts
from .toy.world import render, sample_scene

def vae_ceiling(pipe, look: str, count: int = 100, seed: int = 7, batch_size: int = 25) -> dict:
    """Style strength and content accuracy of rendered scenes under ``look`` after a round trip
    through the base's VAE: the most an adapter, which only changes the UNet, can reach."""

    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    styled = [LOOKS[look](render(scene)) for scene in scenes]
    decoded = []
    for start in range(0, count, batch_size):
        decoded.extend(from_model_range(vae_round_trip(pipe.vae, to_model_range(styled[start : start + batch_size]))))
    expected = [{"color": s.color, "shape": s.shape, "background": s.background} for s in scenes]
    return {"strength": style_strength(decoded, look), "content": content_scores(decoded, expected, looks=[look])["all"]}


def eval_styles(base: str, styles: Sequence[str] | None = None, adapters: Sequence[str] | None = None,
                count: int = 100, steps: int = 20, sheet: str | None = None,
                guidance_scale: float | str = 5.0) -> dict:
    """For each bundled style and adapter variant (``styles.VARIANTS``; default: every one whose
    file exists) on ``base``: strength, content accuracy and its drop from the base's own, the
    VAE's ceiling for the look, training time, parameters, file size. ``guidance_scale``: a scale,
    or ``"recommended"``: each adapter's own guidance and weight from ``style.json``
    (``recommended.py``; 5 and 1 where there are none), its content drop taken against the base's
    own at that scale. ``sheet``: a PNG
    path for the first images of every row (plain, then each style and variant), labelled."""
    per_adapter = guidance_scale == "recommended"
    if not per_adapter and not isinstance(guidance_scale, (int, float)):
        raise ShiraError(f"guidance must be a number or 'recommended', got {guidance_scale!r}")
    if not 1 <= count <= HELD_OUT:
        raise ShiraError(f"there are {HELD_OUT} held-out prompts; asked for {count}")
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    expected = held_out_prompts(count)
    prompts = [e["prompt"] for e in expected]
    plain_content: dict[float, float] = {}  # the base's own, per guidance used
    plain_images: dict[str, list] = {}  # the first plain images made, for the sheet and the looks

    def plain_at(g: float) -> float:
        if g not in plain_content:
            images = generate_batched(pipe, prompts, steps, g, desc=f"{base}: plain g{g:g}")
            plain_content[g] = content_scores(images, expected)["all"]
            plain_images.setdefault("first", images)
        return plain_content[g]

    default = DEFAULT_GUIDANCE if per_adapter else float(guidance_scale)
    result = {"base": base, "prompts": count, "steps": steps, "guidance_scale": guidance_scale,
              "plain": {"content": plain_at(default)}, "styles": {}}
    result["plain"]["looks"] = {name: style_strength(plain_images["first"], STYLES[name].look)
                                for name in (styles or STYLES)}
    rows = {"plain": plain_images["first"][:SHEET_COLUMNS]}
    bank = StyleBank(pipe.unet)
    result["ceiling"] = {}
    for name in styles or list(STYLES):
        spec = STYLES[name]
        catalog = default_catalog()
        files = catalog.get(name).files if name in catalog else {}
        result["ceiling"][name] = vae_ceiling(pipe, spec.look, count)
        triggered = [with_triggers(p, [spec.trigger]) for p in prompts]
        for kind in adapters or VARIANTS:
            path = adapter_path(name, base, kind)
            if not path.is_file():
                continue
            info = files[f"{base}/{kind}"].to_dict() if f"{base}/{kind}" in files else {}
            g = info.get("guidance", DEFAULT_GUIDANCE) if per_adapter else default
            w = info.get("weight", 1.0) if per_adapter else 1.0
            with applied_adapter(pipe, bank, path, kind, w):
                images = generate_batched(pipe, triggered, steps, g, desc=f"{base}: {name} {kind} g{g:g} w{w:g}")
            rows[f"{name} {kind}" + (f" g{g:g} w{w:g}" if per_adapter else "")] = images[:SHEET_COLUMNS]
            content = content_scores(images, expected, looks=[spec.look])["all"]
            result["styles"][f"{name}/{kind}"] = {
                "style": name, "adapter": kind, "mask": info.get("mask"), "guidance": g, "weight": w,
                "strength": style_strength(images, spec.look), "content": content,
                "content_drop": plain_at(g) - content, "params": info.get("params"),
                "train_seconds": info.get("seconds"), "file_mb": round(os.path.getsize(path) / 2**20, 3),
            }
    result["plain_by_guidance"] = {f"{g:g}": c for g, c in sorted(plain_content.items())}
    if sheet:
        which = "each adapter's recommended guidance and weight" if per_adapter else f"guidance {default:g}"
        save_sheet(rows, sheet, title=f"{base}: held-out prompts, image i with seed i, {which}")
    return result


SHEET_COLUMNS = 8


def save_sheet(rows: dict[str, Sequence[np.ndarray]], path: str, title: str = "", scale: int = 2) -> None:
    """One labelled row of images per entry of ``rows`` (nearest-neighbour upscaled ``scale`` x)."""
    from PIL import Image, ImageDraw

    label_width, line = 150, 14
    strips = [np.repeat(np.repeat(image_grid(list(images), SHEET_COLUMNS), scale, 0), scale, 1)
              for images in rows.values()]
    width = label_width + max(s.shape[1] for s in strips)
    height = line + sum(s.shape[0] for s in strips)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 1), title, fill="black")
    y = line
    for label, strip in zip(rows, strips):
        canvas.paste(Image.fromarray(strip), (label_width, y))
        draw.text((4, y + strip.shape[0] // 2 - 6), label, fill="black")
        y += strip.shape[0]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # A 256-color palette keeps the file a quarter the size; the sheet is for looking, the
    # measures read the images themselves.
    canvas.quantize(256).save(path, optimize=True)


def format_styles_table(result: dict) -> str:
    guidance = result.get("guidance_scale", 5.0)
    if guidance == "recommended":
        plain = ", ".join(f"{c:.1%} at {g}" for g, c in result.get("plain_by_guidance", {}).items())
        head = (f"base {result['base']}: plain content {plain} on {result['prompts']} prompts "
                "(each adapter at its recommended guidance and weight)")
    else:
        head = f"base {result['base']}: plain content {result['plain']['content']:.1%} on {result['prompts']} prompts (guidance {guidance:g})"
    lines = [head + "; VAE ceiling = strength / content of rendered styled scenes after the base's VAE",
             "| style | adapter | guidance | weight | strength | content | drop | VAE ceiling | params | train s "
             "| file MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["styles"].values():
        ceiling = result.get("ceiling", {}).get(r["style"])
        ceiling_text = f"{ceiling['strength']:.0%} / {ceiling['content']:.0%}" if ceiling else "?"
        guidance = r.get("guidance", result.get("guidance_scale", 5.0))
        lines.append(f"| {r['style']} | {r['adapter']} | {guidance:g} | {r.get('weight', 1.0):g} | "
                     f"{r['strength']:.0%} | {r['content']:.0%} | "
                     f"{-r['content_drop'] * 100:+.0f} pt | {ceiling_text} | {r['params'] or '?'} | "
                     f"{r['train_seconds'] or '?'} | {r['file_mb']} |")
    return "\n".join(lines)
