"""Pairwise fusion figures as heatmaps (one panel per figure), for reports and the app."""

from __future__ import annotations

import os

import numpy as np


def pairwise_matrix(names: list[str], pairs: dict, figure: str, diagonal: float = np.nan) -> np.ndarray:
    """``names x names`` matrix of ``pairs["a|b"]["overall"][figure]`` (symmetric)."""
    matrix = np.full((len(names), len(names)), diagonal, dtype=float)
    index = {n: i for i, n in enumerate(names)}
    for key, result in pairs.items():
        a, b = key.split("|")
        matrix[index[a], index[b]] = matrix[index[b], index[a]] = result["overall"][figure]
    return matrix


def save_heatmaps(names: list[str], panels: dict[str, np.ndarray], path: str, title: str = "") -> None:
    """One annotated heatmap per entry of ``panels`` (label -> names x names matrix), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 0.55 * len(names) + 1.6
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size + 0.4), dpi=110, squeeze=False)
    for ax, (label, matrix) in zip(axes[0], panels.items()):
        ax.imshow(np.nan_to_num(matrix, nan=0.0), cmap="viridis", vmin=0.0,
                  vmax=max(1.0, float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 1.0))
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] < 0.6 else "black")
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def retention_panels(result: dict) -> tuple[list[str], dict[str, np.ndarray]]:
    """From ``eval_fusion``'s result: per method, a styles x styles matrix whose (row, column) entry
    is the row style's retention in its mix with the column style."""
    names = sorted({s for m in result["methods"].values() for pair in m["pairs"] for s in pair.split("+")})
    index = {n: i for i, n in enumerate(names)}
    panels = {}
    for method, m in result["methods"].items():
        if not m["pairs"]:
            continue
        matrix = np.full((len(names), len(names)), np.nan)
        for pair, row in m["pairs"].items():
            a, b = pair.split("+")
            matrix[index[a], index[b]] = row["retention"][a]
            matrix[index[b], index[a]] = row["retention"][b]
        panels[f"{method} (mean {m['mean_retention']:.2f})"] = matrix
    return names, panels
