"""How much two adapters collide in weight space, per adapted tensor and over the whole UNet.

For deltas ``A1``, ``A2`` of one tensor (viewed as ``(rows, cols)``), as the SHiRA paper defines
them: AWOM = ``||A1^T A2||_2`` (the spectral norm of their product: how strongly one's update is
seen through the other's), and AWOR = ``1 - ||A1^T A2||_0 / cols^2`` (the share of the product
that is exactly zero: 1 for adapters whose rows never meet). Beside them, the plain overlap of the
entries they touch (Jaccard) and the cosine of the two deltas. Overall figures: AWOM and AWOR
averaged over the tensors both adapt, Jaccard and cosine over all their entries together.
"""

from __future__ import annotations

import itertools
import math

import torch

from .deltas import AdapterDeltas

POWER_ITERATIONS = 30


def spectral_norm_of_product(a1: torch.Tensor, a2: torch.Tensor, iterations: int = POWER_ITERATIONS) -> float:
    """``||a1^T a2||_2`` by power iteration on ``(a1^T a2)^T (a1^T a2)``, without forming the
    ``cols x cols`` product (two thin matrix-vector products a step)."""
    if not a1.any() or not a2.any():
        return 0.0
    v = torch.ones(a2.shape[1], dtype=torch.float64) / math.sqrt(a2.shape[1])
    a1, a2 = a1.double(), a2.double()
    sigma = 0.0
    for _ in range(iterations):
        u = a1.T @ (a2 @ v)
        w = a2.T @ (a1 @ u)
        norm = float(w.norm())
        if norm == 0.0:
            return 0.0
        v = w / norm
        sigma = math.sqrt(norm)
    return sigma


def product_zero_share(a1: torch.Tensor, a2: torch.Tensor) -> float:
    """AWOR: the share of ``a1^T a2``'s entries that are structurally zero (no row where both
    adapters have an entry in the two columns). Counted on the 0/1 patterns, so values that happen
    to cancel do not count as zero."""
    p1, p2 = (a1 != 0).float(), (a2 != 0).float()
    shared_rows = (p1.sum(1) > 0) & (p2.sum(1) > 0)
    if not shared_rows.any():
        return 1.0
    nonzero = int(((p1[shared_rows].T @ p2[shared_rows]) > 0).sum())
    return 1.0 - nonzero / (a1.shape[1] * a2.shape[1])


def pair_metrics(first: AdapterDeltas, second: AdapterDeltas) -> dict:
    """Per-tensor and overall AWOM, AWOR, Jaccard and cosine of two adapters on one base."""
    shared = sorted(set(first.deltas) & set(second.deltas))
    layers = {}
    dot = norm1 = norm2 = 0.0
    common = union = 0
    for name in shared:
        a1, a2 = first.deltas[name], second.deltas[name]
        if a1.shape != a2.shape:
            raise ValueError(f"{name}: {first.name} has shape {tuple(a1.shape)}, {second.name} {tuple(a2.shape)}")
        s1, s2 = first.support(name), second.support(name)
        both = int(torch.isin(s1, s2).sum())
        either = len(s1) + len(s2) - both
        d = float((a1.double() * a2.double()).sum())
        n1, n2 = float(a1.double().norm()), float(a2.double().norm())
        layers[name] = {"awom": spectral_norm_of_product(a1, a2), "awor": product_zero_share(a1, a2),
                        "jaccard": both / either if either else 0.0,
                        "cosine": d / (n1 * n2) if n1 and n2 else 0.0}
        dot, norm1, norm2 = dot + d, norm1 + n1**2, norm2 + n2**2
        common, union = common + both, union + either
    count = len(layers)
    overall = {
        "awom": sum(r["awom"] for r in layers.values()) / count if count else 0.0,
        "awor": sum(r["awor"] for r in layers.values()) / count if count else 1.0,
        "jaccard": common / union if union else 0.0,
        "cosine": dot / math.sqrt(norm1 * norm2) if norm1 and norm2 else 0.0,
        "shared_tensors": count,
    }
    return {"pair": [first.name, second.name], "overall": overall, "layers": layers}


def pairwise_metrics(adapters: list[AdapterDeltas], progress=None) -> dict:
    """``pair_metrics`` of every pair, keyed ``"a|b"``. ``progress``: an optional callable taking
    (done, total) after each pair, for a progress bar."""
    pairs = list(itertools.combinations(adapters, 2))
    result = {}
    for i, (a, b) in enumerate(pairs):
        result[f"{a.name}|{b.name}"] = pair_metrics(a, b)
        if progress:
            progress(i + 1, len(pairs))
    return result
