"""Interop with PEFT's SHiRA (``peft.ShiraConfig``): export to and import from its checkpoints.

A PEFT SHiRA checkpoint is a folder with ``adapter_config.json`` and ``adapter_model.safetensors``
holding, per Linear module ``M``, ``base_model.model.M.shira_weight`` (the values) and
``base_model.model.M.shira_indices`` (int32 ``[2, N]``: rows, then columns). PEFT sizes every
layer as ``r * (in + out)`` entries with one ``r`` for the whole model, and covers ``nn.Linear`` only,
so only adapters of that shape can be exported; anything else gets an error that says why.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter import SparseAdapter
from .architecture import unet_family
from ..errors import AdapterFileError, ShiraError

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def _module_name(param_name: str) -> str:
    if not param_name.endswith(".weight"):
        raise ShiraError(f"tensor {param_name!r} is not a module weight")
    return param_name[: -len(".weight")]


def common_rank(adapter: SparseAdapter) -> int:
    """The single r with ``len == r * (rows + cols)`` for every tensor, as PEFT requires."""
    rank = None
    for name, shape in sorted(adapter.shapes.items()):
        if len(shape) != 2:
            raise ShiraError(
                f"PEFT's SHiRA supports nn.Linear only; {name!r} is a {len(shape)}-D (Conv2d) weight {list(shape)}"
            )
        count = len(adapter.indices[name])
        per_rank = shape[0] + shape[1]
        if count % per_rank:
            raise ShiraError(
                f"PEFT sizes each layer as r*(rows+cols); {name!r} holds {count} entries, not a multiple of "
                f"{per_rank}. Build the mask with rank=r instead of a density to export to PEFT"
            )
        if rank is None:
            rank = count // per_rank
        elif count // per_rank != rank:
            raise ShiraError(
                f"PEFT uses one r for all layers; {name!r} has r={count // per_rank}, earlier layers r={rank}"
            )
    return rank


def export_peft_shira(adapter: SparseAdapter, directory: str | os.PathLike) -> str:
    """Write ``adapter`` as a PEFT SHiRA checkpoint folder; ``PeftModel.from_pretrained(unet, dir)`` loads it."""
    from peft import ShiraConfig

    rank = common_rank(adapter)
    modules = sorted(_module_name(n) for n in adapter.shapes)
    config = ShiraConfig(r=rank, target_modules=modules, mask_type="random", inference_mode=True)
    os.makedirs(directory, exist_ok=True)
    config.save_pretrained(str(directory))
    tensors = {}
    for name in adapter.shapes:
        cols = adapter.shapes[name][1]
        flat = adapter.indices[name].to(torch.int64)
        rows_cols = torch.stack([flat // cols, flat % cols]).to(torch.int32)
        module = PEFT_PREFIX + _module_name(name)
        tensors[module + ".shira_weight"] = adapter.values[name].contiguous()
        tensors[module + ".shira_indices"] = rows_cols.contiguous()
    save_file(tensors, os.path.join(str(directory), WEIGHTS_NAME), metadata={"format": "pt"})
    return str(directory)


def import_peft_shira(directory: str | os.PathLike, unet: nn.Module, name: str | None = None) -> SparseAdapter:
    """Read a PEFT SHiRA checkpoint folder made for ``unet``'s architecture as a SparseAdapter."""
    directory = str(directory)
    config_path = os.path.join(directory, CONFIG_NAME)
    weights_path = os.path.join(directory, WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise AdapterFileError(f"{directory}: not a PEFT checkpoint folder ({os.path.basename(path)} missing)")
    with open(config_path) as handle:
        config = json.load(handle)
    if config.get("peft_type") != "SHIRA":
        raise AdapterFileError(f"{config_path}: peft_type is {config.get('peft_type')!r}, expected 'SHIRA'")
    try:
        tensors = load_file(weights_path)
    except Exception as exc:
        raise AdapterFileError(f"{weights_path}: not a valid safetensors file ({exc})") from None
    params = dict(unet.named_parameters())
    indices, values, shapes = {}, {}, {}
    for key, weight in tensors.items():
        if not key.endswith(".shira_weight"):
            continue
        module = key[: -len(".shira_weight")]
        index_key = module + ".shira_indices"
        if index_key not in tensors:
            raise AdapterFileError(f"{weights_path}: {index_key!r} missing for {key!r}")
        param_name = module.removeprefix(PEFT_PREFIX) + ".weight"
        if param_name not in params:
            raise AdapterFileError(f"{weights_path}: module {module!r} does not exist in this UNet")
        shape = tuple(params[param_name].shape)
        rows_cols = tensors[index_key].to(torch.int64)
        if rows_cols.dim() != 2 or rows_cols.shape[0] != 2 or rows_cols.shape[1] != weight.numel():
            raise AdapterFileError(f"{weights_path}: {index_key!r} must be [2, {weight.numel()}]")
        flat = rows_cols[0] * shape[1] + rows_cols[1]
        order = flat.argsort()
        indices[param_name] = flat[order].to(torch.int32)
        values[param_name] = weight.flatten()[order]
        shapes[param_name] = shape
    if not shapes:
        raise AdapterFileError(f"{weights_path}: no shira_weight tensors")
    return SparseAdapter(
        indices=indices,
        values=values,
        shapes=shapes,
        base_arch=unet_family(unet),
        mask=f"peft-{config.get('mask_type', 'random')}",
        name=name or os.path.basename(os.path.normpath(directory)),
        recipe={"source": "peft", "r": config.get("r"), "random_seed": config.get("random_seed")},
    )
