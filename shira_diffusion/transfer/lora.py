"""Reading adapter files for transfer, and LoRA -> SHiRA without training (``convert_lora``).

Three input formats: this project's SHiRA files, diffusers/PEFT LoRA files (``unet.X.lora_A.weight``)
and kohya/A1111 LoRA files (``lora_unet_X.lora_down.weight`` + ``.alpha``). LoRA files are read the
way diffusers reads them: ``pipe.lora_state_dict`` converts kohya keys
(``diffusers.loaders.lora_conversion_utils``) and ``pipe.load_lora_weights`` applies them, so a
layer's delta is exactly what diffusers would add (``scale * B @ A``, kohya's alpha included).
Every layer is checked against the UNet (names and shapes) before anything is loaded.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from ..core.adapter import FORMAT_NAME as SHIRA_FORMAT
from ..core.adapter import SparseAdapter
from ..core.architecture import unet_family
from ..core.masks import mask_size, matrix_shape
from ..errors import AdapterFileError, ArchitectureMismatchError, ShiraError

LORA_ADAPTER_NAME = "shira-transfer-source"


@dataclass
class AdapterFile:
    """An adapter file's kind and description, read from its header and keys (no tensor loaded).

    ``kind``: "shira" or "lora"; ``format``: "shira", "peft" (diffusers/PEFT keys) or "kohya";
    ``family``: the base family the header names ("sd", "sdxl"), None when it names none."""

    path: str
    kind: str
    format: str
    family: str | None
    trigger: str | None
    name: str
    rank: int | None = None
    meta: dict = field(default_factory=dict)


def read_adapter_file(path: str | os.PathLike) -> AdapterFile:
    """What kind of adapter ``path`` holds; ``AdapterFileError`` for a missing, unreadable or
    unknown file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AdapterFileError(f"{path}: " + ("a folder, not an adapter file" if os.path.isdir(path) else "no such file"))
    try:
        with safe_open(path, "pt") as handle:
            keys = list(handle.keys())
            meta = dict(handle.metadata() or {})
            ranks = [handle.get_slice(k).get_shape()[0] for k in keys
                     if k.endswith((".lora_A.weight", ".lora_down.weight"))]
    except Exception as exc:  # safetensors raises several types for a bad file
        raise AdapterFileError(f"{path}: not a readable safetensors file ({exc})") from None
    name = meta.get("name") or os.path.basename(path).split(".")[0]
    trigger = meta.get("trigger") or None
    if meta.get("format") == SHIRA_FORMAT or any(k.endswith((".shira_indices", ".shira_values")) for k in keys):
        adapter = SparseAdapter.load(path)  # validated in full
        return AdapterFile(path, "shira", "shira", adapter.base_arch, adapter.trigger, adapter.name or name, None, meta)
    family = meta.get("base_arch") or None
    rank = max(ranks) if ranks else None
    if any(k.startswith("lora_unet_") for k in keys):
        return AdapterFile(path, "lora", "kohya", family, trigger, name, rank, meta)
    if any(k.endswith((".lora_A.weight", ".lora_B.weight", ".lora.down.weight", ".lora_down.weight")) for k in keys):
        if not any(k.startswith("unet.") or k.startswith(("down_blocks", "mid_block", "up_blocks")) for k in keys):
            raise AdapterFileError(f"{path}: a LoRA file with no UNet layers (only text-encoder keys?)")
        return AdapterFile(path, "lora", "peft", family, trigger, name, rank, meta)
    raise AdapterFileError(f"{path}: neither a SHiRA adapter nor a LoRA file (diffusers/PEFT or kohya keys)")


def _pipeline_class(pipe):
    return type(pipe)


def _peft_unet_state(pipe, path: str) -> dict[str, torch.Tensor]:
    """The file's UNet LoRA factors with PEFT key names (``X.lora_A.weight``), after diffusers'
    conversion of kohya keys."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    try:
        state, _alphas = _pipeline_class(pipe).lora_state_dict(path)
    except Exception as exc:  # diffusers raises ValueError/KeyError for files it cannot map
        raise AdapterFileError(f"{path}: diffusers cannot read this LoRA for a {unet_family(pipe.unet).upper()}-family "
                               f"base ({str(exc).splitlines()[0][:200]})") from None
    unet = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    if not unet:
        raise AdapterFileError(f"{path}: the LoRA holds no UNet layers")
    return convert_unet_state_dict_to_peft(unet)


def check_lora(pipe, info: AdapterFile) -> dict[str, tuple[int, ...]]:
    """Every LoRA layer of the file exists in ``pipe.unet`` with matching shapes; returns the
    adapted parameters' shapes. ``ArchitectureMismatchError`` names the first layer at fault."""
    family = unet_family(pipe.unet)
    label = os.path.basename(info.path)
    if info.family and info.family != family:
        raise ArchitectureMismatchError(f"{label} was made for an {info.family.upper()}-family base, "
                                        f"this base is {family.upper()}-family")
    state = _peft_unet_state(pipe, info.path)
    modules = dict(pipe.unet.named_modules())
    shapes = {}
    for key, a in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module_name = key[: -len(".lora_A.weight")]
        b = state.get(module_name + ".lora_B.weight")
        module = modules.get(module_name)
        weight = getattr(module, "weight", None)
        if weight is None or b is None:
            raise ArchitectureMismatchError(f"{label}: layer {module_name!r} does not exist in this "
                                            f"{family.upper()}-family UNet; the LoRA is for another base")
        out_ok = b.shape[0] == weight.shape[0]
        in_ok = a.shape[1] == weight.shape[1] and tuple(a.shape[2:]) == tuple(weight.shape[2:])
        if not (out_ok and in_ok):
            raise ArchitectureMismatchError(
                f"{label}: layer {module_name!r} is {b.shape[0]}x{a.shape[1]} in the LoRA but "
                f"{weight.shape[0]}x{weight.shape[1]} in this UNet; the LoRA is for another base")
        shapes[module_name + ".weight"] = tuple(weight.shape)
    if not shapes:
        raise AdapterFileError(f"{label}: no UNet LoRA layers found")
    return shapes


def lora_deltas(pipe, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Per adapted UNet parameter, the dense delta diffusers adds for this LoRA file (any format it
    reads), in the parameter's shape, fp32. The pipeline is left without the LoRA."""
    from peft.tuners.lora import LoraLayer

    info = read_adapter_file(path)
    if info.kind != "lora":
        raise ShiraError(f"{info.path}: not a LoRA file (it is a SHiRA adapter)")
    if getattr(pipe.unet, "peft_config", None) and LORA_ADAPTER_NAME in pipe.unet.peft_config:
        raise ShiraError(f"the pipeline already holds {LORA_ADAPTER_NAME!r}")
    shapes = check_lora(pipe, info)
    had_peft = bool(getattr(pipe.unet, "peft_config", None))
    try:
        pipe.load_lora_weights(info.path, adapter_name=LORA_ADAPTER_NAME)
    except Exception as exc:
        raise AdapterFileError(f"{info.path}: diffusers could not load this LoRA ({str(exc).splitlines()[0][:200]})") \
            from None
    deltas = {}
    try:
        for name, module in pipe.unet.named_modules():
            if isinstance(module, LoraLayer) and LORA_ADAPTER_NAME in module.lora_A:
                param = name + ".weight"
                with torch.no_grad():
                    deltas[param] = module.get_delta_weight(LORA_ADAPTER_NAME).detach().float().cpu().clone()
    finally:
        if had_peft:
            pipe.delete_adapters(LORA_ADAPTER_NAME)
        else:  # takes the PEFT layers out too: the UNet's parameters keep their own names
            pipe.unload_lora_weights()
    missing = sorted(set(shapes) - set(deltas))
    if missing:
        raise AdapterFileError(f"{info.path}: diffusers did not load layer {missing[0]!r}")
    return deltas


# ------------------------------------------------------------------------------------ LoRA -> SHiRA

@dataclass
class Conversion:
    """A LoRA converted to SHiRA: the adapter, and how much of the LoRA's delta it keeps."""

    adapter: SparseAdapter
    relative_error: float  # ||delta - S|| / ||delta|| over every adapted tensor
    energy_kept: float  # ||S||^2 / ||delta||^2
    worst_layer: tuple[str, float]
    params: int
    lora_params: int
    report: dict = field(default_factory=dict)


def topk_sparse(delta: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``size`` largest-magnitude entries of ``delta`` (the mask keeping the most energy):
    sorted flat int64 indices and their values."""
    flat = delta.reshape(-1)
    size = min(int(size), flat.numel())
    indices = torch.topk(flat.abs(), size, sorted=False).indices.sort().values
    return indices, flat[indices]


def convert_lora(path: str | os.PathLike, base, *, rank: int | None = None, density: float | None = None,
                 name: str | None = None, dtype: torch.dtype = torch.float16) -> Conversion:
    """A LoRA file -> a SHiRA adapter on the same base, without training: per layer, the largest
    entries of the LoRA's dense delta. Size: ``density`` (share of entries), ``rank`` (r*(m+n)
    entries, LoRA's parameter count at rank r), or by default the LoRA's own rank (equal parameters).
    ``base``: a base name / path (loaded) or a pipeline."""
    from ..bases import load_pipeline

    if rank is not None and density is not None:
        raise ShiraError("give --density or --rank, not both")
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise ShiraError(f"--rank must be an integer >= 1, got {rank!r}")
    if density is not None and not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise ShiraError(f"--density must be in (0, 1], got {density!r}")
    info = read_adapter_file(path)
    if info.kind != "lora":
        raise ShiraError(f"{info.path}: already a SHiRA adapter; convert takes a LoRA file")
    pipe = load_pipeline(base) if isinstance(base, (str, os.PathLike)) else base
    family = unet_family(pipe.unet)
    deltas = lora_deltas(pipe, info.path)
    use_rank = rank if rank is not None or density is not None else (info.rank or 1)
    indices, values, shapes = {}, {}, {}
    total = kept = 0.0
    worst = ("", 0.0)
    lora_params = 0
    for param, delta in sorted(deltas.items()):
        rows, cols = matrix_shape(delta.shape)
        size = mask_size(delta.shape, density=density, rank=None if density is not None else use_rank)
        idx, vals = topk_sparse(delta, size)
        energy = float((delta.double() ** 2).sum())
        part = float((vals.double() ** 2).sum())
        total += energy
        kept += part
        layer_error = math.sqrt(max(energy - part, 0.0) / energy) if energy > 0 else 0.0
        if layer_error > worst[1]:
            worst = (param, layer_error)
        indices[param] = idx.to(torch.int32)
        values[param] = vals.to(dtype)
        shapes[param] = tuple(delta.shape)
        lora_params += (info.rank or 0) * (rows + cols)
    recipe = {"converted_from": os.path.basename(info.path), "lora_format": info.format, "lora_rank": info.rank,
              "rank": None if density is not None else use_rank, "density": density}
    adapter = SparseAdapter(indices=indices, values=values, shapes=shapes, base_arch=family, mask="lora-topk",
                            trigger=info.trigger, name=name or info.name,
                            description=info.meta.get("description", ""), recipe=recipe)
    error = math.sqrt(max(total - kept, 0.0) / total) if total > 0 else 0.0
    report = {"lora": info.path, "format": info.format, "lora_rank": info.rank, "tensors": len(shapes),
              "params": adapter.num_params, "lora_params": lora_params, "relative_error": round(error, 5),
              "energy_kept": round(kept / total, 5) if total else 1.0,
              "worst_layer": {"tensor": worst[0], "relative_error": round(worst[1], 5)}}
    return Conversion(adapter, error, kept / total if total else 1.0, worst, adapter.num_params, lora_params, report)


def header_json(meta: dict, key: str, default=None):
    try:
        return json.loads(meta.get(key) or "null") or default
    except ValueError:
        return default
