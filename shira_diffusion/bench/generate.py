"""``shira bench generate``: what the bundled toy bases can draw, and how fast, on this machine.

For each base, on grammar prompts drawn with a fixed seed and images drawn with seed ``seed + i``
(exactly what ``shira generate --prompts-file`` produces):
- content accuracy, read back by ``toy.content.read_content`` (no learned judge), and how often a
  bundled look's measure fires on these plain images (it should not);
- seconds per 64 x 64 image (median over the prompts, classifier-free guidance included);
- VAE reconstruction PSNR on held-out plain and structured-look images;
and, across the bases, how many adapted layers share a shape (weights that cannot be copied over).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.architecture import target_weights
from ..bases import load_pipeline
from ..images import image_grid
from ..metrics import content_scores, look_false_positives, reconstruction_psnr
from ..toy.world import sample_scene


def grammar_prompts(count: int, seed: int = 2026) -> list[dict]:
    """``count`` scenes as ``{"prompt", "color", "shape", "background"}``, the same for every run."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    return [{"prompt": s.prompt(), "color": s.color, "shape": s.shape, "background": s.background} for s in scenes]


def bench_base(base: str, count: int = 200, steps: int = 20, seed: int = 0, guidance_scale: float = 5.0,
               out_dir: str | None = None, device: str = "cpu", dtype: str = "fp32") -> dict:
    """Content accuracy, time per image and VAE PSNR of one base, on ``device`` in ``dtype``."""
    from ..toy.train_base import vae_eval_sets
    from .timing import describe_device, resolve_device, resolve_dtype, synchronize

    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    pipe = load_pipeline(base).to(torch_device, torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    expected = grammar_prompts(count)
    images, seconds = [], []
    with torch.no_grad():
        for i, item in enumerate(tqdm(expected, desc=f"{base}: generating", leave=False)):
            started = time.perf_counter()
            out = pipe(item["prompt"], num_inference_steps=steps, guidance_scale=guidance_scale, height=size,
                       width=size, generator=torch.Generator().manual_seed(seed + i), output_type="np")
            synchronize(torch_device)
            seconds.append(time.perf_counter() - started)
            images.append((out.images[0] * 255).round().astype(np.uint8))
        psnr = {name: float(np.median(reconstruction_psnr(pipe.vae, batch.to(torch_device, torch_dtype))))
                for name, batch in vae_eval_sets().items()}
    if out_dir:
        _save_grid(images[:64], os.path.join(out_dir, f"{os.path.basename(str(base).rstrip('/'))}-grid.png"))
    return {
        "base": str(base),
        "prompts": count,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "accuracy": content_scores(images, expected),
        "look_false_positives": look_false_positives(images),
        "seconds_per_image": float(np.median(seconds)),
        "vae_median_psnr_db": psnr,
        "threads": torch.get_num_threads(),
        "device": describe_device(torch_device),
        "dtype": dtype,
    }


def shared_shapes(base_a: str, base_b: str, targets: str = "attn") -> dict:
    """Of each base's adapted weights, the share whose shape also occurs among the other's."""
    shapes = {}
    for base in (base_a, base_b):
        unet = load_pipeline(base).unet
        shapes[base] = [tuple(w.shape) for w in target_weights(unet, targets).values()]
    a, b = shapes[base_a], shapes[base_b]
    return {
        "targets": targets,
        base_a: {"adapted": len(a), "shape_in_other": sum(s in set(b) for s in a) / len(a)},
        base_b: {"adapted": len(b), "shape_in_other": sum(s in set(a) for s in b) / len(b)},
    }


def bench_generate(bases: Sequence[str] = ("toy-sd", "toy-sdxl"), count: int = 200, steps: int = 20,
                   seed: int = 0, out_dir: str | None = None, device: str = "cpu", dtype: str = "fp32") -> dict:
    result = {"bases": {base: bench_base(base, count, steps, seed, out_dir=out_dir, device=device, dtype=dtype)
                        for base in bases}}
    if len(bases) == 2:
        result["shared_shapes"] = shared_shapes(*bases)
    return result


def format_generate_table(result: dict) -> str:
    lines = ["| base | colors right | shape right | all right | s / image | VAE PSNR plain / structured |",
             "| --- | --- | --- | --- | --- | --- |"]
    for base, r in result["bases"].items():
        acc, psnr = r["accuracy"], r["vae_median_psnr_db"]
        lines.append(f"| {base} | {acc['colors']:.1%} | {acc['shape']:.1%} | {acc['all']:.1%} | "
                     f"{r['seconds_per_image']:.2f} | {psnr['plain']:.1f} / {psnr['structured']:.1f} dB |")
    shared = result.get("shared_shapes")
    if shared:
        for base, s in shared.items():
            if base != "targets":
                lines.append(f"\n{base}: {s['shape_in_other']:.0%} of its {s['adapted']} adapted ({shared['targets']}) "
                             "weights have a shape the other base also has")
    return "\n".join(lines)


def _save_grid(images: Sequence[np.ndarray], path: str, columns: int = 16) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(image_grid(images, columns)).save(path)
