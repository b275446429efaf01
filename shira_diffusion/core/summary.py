"""Human-readable summaries of adapters, shared by ``shira info`` and the app."""

from __future__ import annotations

import math

from .adapter import SparseAdapter
from .masks import matrix_shape


def describe(adapter: SparseAdapter) -> dict:
    """Metadata plus one row per adapted tensor (entries, density, value range, rank-relevant dims)."""
    rows = []
    for name in sorted(adapter.shapes):
        shape = adapter.shapes[name]
        values = adapter.values[name].float()
        entries = int(values.numel())
        m, n = matrix_shape(shape)
        rows.append(
            {
                "name": name,
                "shape": list(shape),
                "kind": "Linear" if len(shape) == 2 else "Conv2d",
                "entries": entries,
                "density": entries / math.prod(shape),
                "lora_equivalent_rank": round(entries / (m + n), 2),
                "abs_max": float(values.abs().max()),
                "rms": float(values.pow(2).mean().sqrt()),
            }
        )
    return {
        "name": adapter.name,
        "base_arch": adapter.base_arch,
        "fingerprint": adapter.fingerprint,
        "mask": adapter.mask,
        "trigger": adapter.trigger,
        "description": adapter.description,
        "params": adapter.num_params,
        "density": adapter.density,
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "recipe": adapter.recipe,
        "tensors": rows,
    }
