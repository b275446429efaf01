"""Writing a trained LoRA: the diffusers file (``pipe.load_lora_weights`` reads it) and optionally a
kohya/A1111 one; both carry the trigger, name, description and recipe in their header, as SHiRA
files do."""

from __future__ import annotations

import json
import os

import torch

from .outputs import atomic_path

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def lora_metadata(config, family: str, recipe: dict, trigger: str | None = None, name: str | None = None
                  ) -> dict[str, str]:
    """Header strings of a LoRA file this project trained (safetensors headers hold strings only).
    ``trigger``/``name``: the run's own (an inferred trigger, a default name), else the config's."""
    from .outputs import stem

    values = {"name": name or config.name or stem(config.output), "trigger": trigger or config.trigger or "",
              "description": config.description, "base_arch": family, "rank": str(config.resolved_rank()),
              "recipe": json.dumps(recipe, sort_keys=True)}
    return {k: v for k, v in values.items() if v}


def save_lora(unet, family: str, config, paths: dict, header: dict[str, str]) -> None:
    """The UNet's PEFT LoRA layers as ``paths["adapter"]`` (and ``paths["kohya"]`` with ``config.kohya``),
    each written atomically."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    peft_state = {k: v.detach().to("cpu", DTYPES[config.save_dtype]).contiguous()
                  for k, v in get_peft_model_state_dict(unet).items()}
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    # diffusers' own writer puts only ``format: pt`` in the header; loaders ignore other keys, so
    # the trigger and recipe travel with the file, as they do in SHiRA files.
    header = {"format": "pt", **header}
    # PEFT's own key names (``lora_A``/``lora_B``), which ``load_lora_weights`` reads for every layer
    # kind. ``convert_state_dict_to_diffusers`` renames only attention projections (``lora.down``),
    # and a file mixing both namings loads its convolutions but silently drops its attention.
    with atomic_path(paths["adapter"]) as temporary:
        pipeline_class.save_lora_weights(os.path.dirname(temporary), unet_lora_layers=peft_state,
                                         weight_name=os.path.basename(temporary), safe_serialization=True,
                                         save_function=lambda weights, path: save_file(weights, path, metadata=header))
    if config.kohya:
        kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state.items()})
        with atomic_path(paths["kohya"]) as temporary:
            save_file({k.replace("lora_unet_unet_", "lora_unet_"): v.contiguous() for k, v in kohya.items()},
                      temporary, metadata=header)
