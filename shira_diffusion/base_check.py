"""Does an adapter fit a base, without loading the base? Its family from the pipeline's
``model_index.json`` (or a checkpoint's keys) and, where the UNet's weights are safetensors, every
adapted tensor's shape from their header: what ``shira styles add`` checks before copying anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ArchitectureMismatchError, ShiraError


def check_adapter_for_base(adapter, base: str | os.PathLike) -> str:
    """Refuse an adapter (a ``SparseAdapter``) for a base that does not exist here, or that it was
    not made for, without loading the base: its family from the pipeline's ``model_index.json``
    and, where its UNet weights are safetensors, every adapted tensor's shape from their header,
    through ``SparseAdapter.check_compatible`` (what the app runs on a loaded UNet). The family."""
    from .bases import BUNDLED, PIPELINE_FAMILIES, _cached_hub_folder, resolve

    source = resolve(base)  # an unknown name: one line listing what a base can be
    if source.kind == "single-file":
        family = _single_file_family(source.location)
        _check_against(adapter, _own_shapes(adapter), family, base)
        return family
    folder = _cached_hub_folder(source.location) if source.kind == "hub" else source.location
    if folder is None or not os.path.isdir(folder):
        where = "the local Hugging Face cache" if source.kind == "hub" else folder
        raise ShiraError(f"base {str(base)!r} is not in {where}: a style can only be added for a base this "
                         f"machine has (bundled: {', '.join(BUNDLED)})")
    index = Path(folder) / "model_index.json"
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise ShiraError(f"{index}: not a readable pipeline index ({exc})") from None
    if class_name not in PIPELINE_FAMILIES:
        raise ShiraError(f"{folder} holds a {class_name or 'unknown'} pipeline; shira-diffusion needs SD or SDXL")
    family = PIPELINE_FAMILIES[class_name]
    _check_against(adapter, _unet_shapes(Path(folder) / "unet") or _own_shapes(adapter), family, base)
    return family


def _check_against(adapter, weights, family: str, base) -> None:
    try:
        adapter.check_compatible(weights, family)
    except ArchitectureMismatchError as exc:
        raise ArchitectureMismatchError(f"base {str(base)!r}: {exc}") from None


class _Shaped:
    """A tensor's shape without the tensor: what ``check_compatible`` reads of a weight."""

    def __init__(self, shape):
        self.shape = shape


def _own_shapes(adapter) -> dict:
    # Where the base's shapes cannot be read without loading it, the family alone is checked.
    return {name: _Shaped(shape) for name, shape in adapter.shapes.items()}


def _unet_shapes(unet: Path) -> dict | None:
    """The UNet's tensor shapes from its safetensors header(s) (one file, or an index of shards);
    None where the weights are in another format."""
    from safetensors import safe_open

    index = unet / "diffusion_pytorch_model.safetensors.index.json"
    single = unet / "diffusion_pytorch_model.safetensors"
    try:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else \
            [single.name] if single.is_file() else []
        shapes = {}
        for name in files:
            with safe_open(str(unet / name), "pt") as handle:
                shapes.update({k: _Shaped(tuple(handle.get_slice(k).get_shape())) for k in handle.keys()})
    except Exception as exc:  # a header safetensors cannot read: the loader would fail on it too
        raise ShiraError(f"{unet}: the UNet's weights cannot be read ({type(exc).__name__}: {exc})") from None
    return shapes or None


def _single_file_family(path: str) -> str:
    from safetensors import safe_open

    if not path.endswith(".safetensors"):
        raise ShiraError(f"{path}: the family of a .ckpt base cannot be told without loading it; add the style "
                         "for the base's diffusers folder, or a .safetensors checkpoint")
    try:
        with safe_open(path, "pt") as handle:
            return "sdxl" if any(k.startswith("conditioner.embedders.1") for k in handle.keys()) else "sd"
    except Exception as exc:
        raise ShiraError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
