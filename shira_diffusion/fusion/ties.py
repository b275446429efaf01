"""TIES-style merging restricted to where sparse adapters overlap (Yadav et al. 2023, without the
trimming step: SHiRA values are already the few entries that matter).

Where only one adapter has an entry, its weighted value is kept as it is. Where several do, the
sign with the larger total weighted mass is elected and the entry becomes the mean of the
weighted values that agree with it: values of opposite sign no longer cancel each other, and
agreeing ones are not summed past what either adapter asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.adapter import SparseAdapter
from ..errors import ShiraError


def ties_merge(adapters: Sequence[SparseAdapter], weights: Sequence[float], name: str = "ties") -> SparseAdapter:
    """One adapter (fused at weight 1) standing for the weighted mix of ``adapters`` on one base."""
    if not adapters or len(adapters) != len(weights):
        raise ShiraError("ties_merge needs one weight per adapter, and at least one adapter")
    first = adapters[0]
    for other in adapters[1:]:
        if other.base_arch != first.base_arch or other.shapes != first.shapes:
            raise ShiraError(f"{other.name} was made for another base than {first.name}; they cannot be merged")
    indices, values = {}, {}
    for tensor in sorted(set().union(*(a.indices for a in adapters))):
        holders = [(a, w) for a, w in zip(adapters, weights) if tensor in a.indices]
        union = torch.unique(torch.cat([a.indices[tensor].long() for a, _ in holders]))
        stacked = torch.zeros(len(holders), len(union), dtype=torch.float32)
        present = torch.zeros(len(holders), len(union), dtype=torch.bool)
        for row, (a, w) in enumerate(holders):
            where = torch.searchsorted(union, a.indices[tensor].long())
            stacked[row, where] = a.values[tensor].float() * w
            present[row, where] = True
        elected = torch.sign(stacked.sum(0))
        agree = present & (torch.sign(stacked) == elected) & (stacked != 0)
        count = agree.sum(0).clamp_min(1)
        merged = (stacked * agree).sum(0) / count
        indices[tensor], values[tensor] = union.to(torch.int32), merged.to(first.values[tensor].dtype)
    return SparseAdapter(indices=indices, values=values, shapes=dict(first.shapes), base_arch=first.base_arch,
                         mask="+".join(sorted({a.mask for a in adapters})), name=name,
                         trigger=", ".join(t for t in dict.fromkeys(a.trigger for a in adapters) if t),
                         description=f"TIES merge of {', '.join(str(a.name) for a in adapters)}")
