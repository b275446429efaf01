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
from ..files import check_writable_folder, write_atomically
from .architecture import unet_family
from ..errors import AdapterFileError, OutputExistsError, ShiraError

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def _module_name(param_name: str) -> str:
    if not param_name.endswith(".weight"):
        raise ShiraError(f"tensor {param_name!r} is not a module weight")
    return param_name[: -len(".weight")]


def peft_split(adapter: SparseAdapter) -> tuple[list[str], list[str]]:
    """(tensors PEFT's SHiRA can hold: the nn.Linear weights, tensors it cannot: the Conv2d ones)."""
    linear = sorted(n for n, shape in adapter.shapes.items() if len(shape) == 2)
    return linear, sorted(set(adapter.shapes) - set(linear))


def common_rank(adapter: SparseAdapter, names: list[str] | None = None) -> int:
    """The single r with ``len == r * (rows + cols)`` for every tensor (of ``names``), as PEFT requires."""
    rank = None
    for name in sorted(adapter.shapes if names is None else names):
        shape = adapter.shapes[name]
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


def export_peft_shira(adapter: SparseAdapter, directory: str | os.PathLike, overwrite: bool = False,
                      linear_only: bool = True) -> str:
    """Write ``adapter`` as a PEFT SHiRA checkpoint folder; ``PeftModel.from_pretrained(unet, dir)`` loads it.

    PEFT's SHiRA holds nn.Linear layers only: the adapter's Linear tensors are written and its
    Conv2d tensors left out (``peft_split`` says which); ``linear_only=False`` refuses an adapter
    with Conv2d tensors instead. Both files are checked before anything is written, and an
    existing checkpoint is refused unless ``overwrite`` (then each file is replaced atomically)."""
    from peft import ShiraConfig

    linear, skipped = peft_split(adapter)
    if skipped and not linear_only:
        common_rank(adapter)  # raises, naming the first Conv2d tensor
    if not linear:
        raise ShiraError(
            f"{adapter.name or 'the adapter'}: nothing to export: PEFT's SHiRA supports nn.Linear only and all "
            f"{len(skipped)} adapted tensors are Conv2d weights"
        )
    rank = common_rank(adapter, linear)
    directory = os.fspath(directory)
    check_output_folder(directory, [CONFIG_NAME, WEIGHTS_NAME], overwrite)
    modules = [_module_name(n) for n in linear]
    config = ShiraConfig(r=rank, target_modules=modules, mask_type="random", inference_mode=True)
    tensors = {}
    for name in linear:
        cols = adapter.shapes[name][1]
        flat = adapter.indices[name].to(torch.int64)
        rows_cols = torch.stack([flat // cols, flat % cols]).to(torch.int32)
        module = PEFT_PREFIX + _module_name(name)
        tensors[module + ".shira_weight"] = adapter.values[name].contiguous()
        tensors[module + ".shira_indices"] = rows_cols.contiguous()
    os.makedirs(directory, exist_ok=True)
    # The weights first, then the config: a folder with a config is a complete checkpoint.
    write_atomically(os.path.join(directory, WEIGHTS_NAME),
                     lambda temporary: save_file(tensors, temporary, metadata={"format": "pt"}), overwrite)
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True, default=_json_default)
    write_atomically(os.path.join(directory, CONFIG_NAME), lambda temporary: _write_text(temporary, text), overwrite)
    return directory


def check_output_folder(directory: str, names: list[str], overwrite: bool = False) -> None:
    """Refuse before any work: ``directory`` being a file, one of ``names`` existing in it (without
    ``overwrite``), or a place where nothing can be written."""
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise ShiraError(f"{directory} is a file, not a folder")
    if not overwrite:
        for name in names:
            if os.path.lexists(os.path.join(directory, name)):
                raise OutputExistsError(f"{os.path.join(directory, name)} already exists; --overwrite replaces it")
    check_writable_folder(directory, directory)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _json_default(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


def import_peft_shira(directory: str | os.PathLike, unet: nn.Module, name: str | None = None) -> SparseAdapter:
    """Read a PEFT SHiRA checkpoint folder made for ``unet``'s architecture as a SparseAdapter."""
    directory = str(directory)
    config_path = os.path.join(directory, CONFIG_NAME)
    weights_path = os.path.join(directory, WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise AdapterFileError(f"{directory}: not a PEFT checkpoint folder ({os.path.basename(path)} missing)")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        raise AdapterFileError(f"{config_path}: cannot read ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterFileError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
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
        if len(shape) != 2:
            raise AdapterFileError(f"{weights_path}: module {module!r} is not an nn.Linear (weight {list(shape)})")
        rank = config.get("r")
        if isinstance(rank, int) and weight.numel() != rank * (shape[0] + shape[1]):
            raise AdapterFileError(
                f"{weights_path}: module {module!r} holds {weight.numel()} entries, but r={rank} on this UNet's "
                f"{shape[0]}x{shape[1]} weight means {rank * (shape[0] + shape[1])}: made for another UNet "
                "(check --arch / --unet-config)"
            )
        if tensors[index_key].is_floating_point() or tensors[index_key].is_complex():
            raise AdapterFileError(f"{weights_path}: {index_key!r} must hold integers, not {tensors[index_key].dtype}")
        rows_cols = tensors[index_key].to(torch.int64)
        if rows_cols.dim() != 2 or rows_cols.shape[0] != 2 or rows_cols.shape[1] != weight.numel():
            raise AdapterFileError(f"{weights_path}: {index_key!r} must be [2, {weight.numel()}]")
        if rows_cols.numel() and (int(rows_cols.min()) < 0 or int(rows_cols[0].max()) >= shape[0]
                                  or int(rows_cols[1].max()) >= shape[1]):
            raise AdapterFileError(f"{weights_path}: {index_key!r} has a row or column outside the "
                                   f"{shape[0]}x{shape[1]} weight of {module!r}")
        flat = rows_cols[0] * shape[1] + rows_cols[1]
        order = flat.argsort()
        indices[param_name] = flat[order].to(torch.int32)
        values[param_name] = weight.flatten()[order]
        shapes[param_name] = shape
    if not shapes:
        raise AdapterFileError(f"{weights_path}: no shira_weight tensors")
    try:
        return SparseAdapter(
            indices=indices,
            values=values,
            shapes=shapes,
            base_arch=unet_family(unet),
            mask=f"peft-{config.get('mask_type', 'random')}",
            name=name or os.path.basename(os.path.normpath(directory)),
            recipe={"source": "peft", "r": config.get("r"), "random_seed": config.get("random_seed")},
        )
    except AdapterFileError as exc:  # the checks name "adapter": name the file instead
        raise AdapterFileError(f"{weights_path}: {str(exc).removeprefix('adapter: ')}") from None
