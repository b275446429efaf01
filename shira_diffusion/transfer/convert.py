"""``shira convert``: a LoRA file written as a SHiRA adapter on the same base (``lora.convert_lora``),
with the reconstruction error and, for a bundled style's LoRA, the style strength before and after."""

from __future__ import annotations

import os

from ..files import check_output_file
from ..errors import ShiraError
from .lora import convert_lora, read_adapter_file


def strength_before_after(pipe, lora_path: str, adapter_path: str, look: str, trigger: str | None,
                          prompts: int = 8, guidance: float = 5.0, steps: int = 20) -> dict:
    """Style strength and content (through the look) of the LoRA and of its SHiRA conversion on the
    first ``prompts`` reserved prompts (image i with seed i)."""
    from ..metrics import content_scores, style_strength
    from ..toy.prompts import held_out_prompts
    from .pipeline import source_applied, teacher_images

    expected = held_out_prompts(prompts)
    texts = [e["prompt"] for e in expected]
    out = {"look": look, "prompts": prompts, "guidance": guidance}
    for label, path in (("lora", lora_path), ("shira", adapter_path)):
        with source_applied(pipe, read_adapter_file(path)):
            images = teacher_images(pipe, texts, trigger, seeds=list(range(prompts)), steps=steps, guidance=guidance)
        out[label] = round(style_strength(images, look), 4)
        out[f"{label}_content"] = round(content_scores(images, expected, looks=(look,))["all"], 4)
    return out


def convert_command(lora: str, base, out: str, *, rank: int | None = None, density: float | None = None,
                    prompts: int = 8, overwrite: bool = False, guidance: float = 5.0, steps: int = 20) -> dict:
    """Convert, write ``out``, measure (a bundled style's LoRA, ``prompts`` > 0); returns the report."""
    from ..bases import load_pipeline
    from ..bundled.specs import STYLES

    if not str(out).endswith(".safetensors"):
        raise ShiraError(f"--out must be a .safetensors file, got {out!r}")
    from ..training.outputs import FREE_MARGIN, check_free_space, check_name_lengths

    check_name_lengths(out, [], "--out")
    check_output_file(out, overwrite, "--out")
    check_free_space(out, FREE_MARGIN, "--out")
    if prompts < 0:
        raise ShiraError(f"--prompts must be >= 0, got {prompts}")
    info = read_adapter_file(lora)
    pipe = load_pipeline(base) if isinstance(base, (str, os.PathLike)) else base
    pipe.set_progress_bar_config(disable=True)
    conversion = convert_lora(lora, pipe, rank=rank, density=density)
    conversion.adapter.save(out, overwrite=overwrite)
    report = dict(conversion.report, out=out)
    if prompts and info.name in STYLES:
        spec = STYLES[info.name]
        report["strength"] = strength_before_after(pipe, lora, out, spec.look, info.trigger or spec.trigger,
                                                   prompts=prompts, guidance=guidance, steps=steps)
    return report
