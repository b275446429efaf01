"""An adapter's weight deltas, per adapted tensor, as the matrices the fusion metrics compare.

A SHiRA file is its sparse entries; a LoRA file (PEFT / diffusers key names, ``lora_A`` and
``lora_B``) is ``scale * B @ A`` per layer, dense. Every delta is viewed as ``(rows, cols)``: Linear
``(out, in)``, Conv2d ``(out, in * kh * kw)``, as the masks see weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors import safe_open

from ..core.adapter import SparseAdapter
from ..core.masks import matrix_shape
from ..errors import AdapterFileError

_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_down.weight", ".lora_up.weight")


@dataclass
class AdapterDeltas:
    """``deltas[name]``: the ``(rows, cols)`` delta of parameter ``name``; ``supports[name]``: the
    flat indices it may touch (a SHiRA mask; every entry for a LoRA)."""

    name: str
    kind: str  # "shira" or "lora"
    deltas: dict[str, torch.Tensor]
    supports: dict[str, torch.Tensor | None]  # None: dense (all entries)

    def support(self, name: str) -> torch.Tensor:
        if self.supports.get(name) is None:
            return torch.arange(self.deltas[name].numel())
        return self.supports[name]


def load_deltas(path: str | os.PathLike, name: str | None = None) -> AdapterDeltas:
    """A SHiRA adapter file or a LoRA file (PEFT/diffusers keys) as per-tensor delta matrices."""
    path = str(path)
    try:
        with safe_open(path, "pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:  # safetensors raises several types for a bad file
        raise AdapterFileError(f"{path}: not a readable safetensors file ({exc})") from None
    label = name or os.path.basename(path).split(".")[0]
    if any(k.endswith(".shira_values") for k in keys):  # version 2 files describe their mask: no indices
        adapter = SparseAdapter.load(path)
        deltas, supports = {}, {}
        for tensor, indices in adapter.indices.items():
            rows, cols = matrix_shape(adapter.shapes[tensor])
            dense = torch.zeros(rows * cols)
            dense[indices.long()] = adapter.values[tensor].float()
            deltas[tensor], supports[tensor] = dense.view(rows, cols), indices.long()
        return AdapterDeltas(label, "shira", deltas, supports)
    if any(k.endswith(_LORA_SUFFIXES) for k in keys):
        return AdapterDeltas(label, "lora", _lora_deltas(path, keys), {})
    raise AdapterFileError(f"{path}: neither a SHiRA adapter nor a LoRA file (no shira_indices or lora_A/lora_B keys)")


def _lora_deltas(path: str, keys: list[str]) -> dict[str, torch.Tensor]:
    deltas = {}
    with safe_open(path, "pt") as handle:
        for key in keys:
            for down, up in ((".lora_A.weight", ".lora_B.weight"), (".lora_down.weight", ".lora_up.weight")):
                if not key.endswith(down):
                    continue
                stem = key[: -len(down)]
                a, b = handle.get_tensor(key).float(), handle.get_tensor(stem + up).float()
                rank = a.shape[0]
                # kohya files keep alpha beside the factors; PEFT/diffusers files trained here use alpha = rank.
                alpha = float(handle.get_tensor(stem + ".alpha")) if stem + ".alpha" in keys else rank
                delta = (alpha / rank) * (b.flatten(1) @ a.flatten(1))
                param = stem.removeprefix("unet.") + ".weight"
                deltas[param] = delta
    return deltas
