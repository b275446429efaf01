"""Small image helpers shared by training, benchmarks and the app."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def image_grid(images: Sequence[np.ndarray], columns: int = 8) -> np.ndarray:
    """Tile equal-height RGB uint8 images into rows of ``columns`` (the last row padded with black)."""
    images = [np.asarray(image) for image in images]
    rows = [np.concatenate(images[i : i + columns], axis=1) for i in range(0, len(images), columns)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def to_model_range(images: Sequence[np.ndarray]) -> torch.Tensor:
    """RGB uint8 images (H, W, 3) -> a float batch (N, 3, H, W) in [-1, 1], as VAEs take them."""
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def from_model_range(batch: torch.Tensor) -> np.ndarray:
    """A batch (N, 3, H, W) in [-1, 1] -> RGB uint8 images (N, H, W, 3)."""
    return ((batch.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def vae_round_trip(vae, batch: torch.Tensor) -> torch.Tensor:
    """encode -> latent mode -> decode, clamped to [-1, 1]: what of an image a VAE keeps."""
    with torch.no_grad():
        x = batch.to(vae.device, vae.dtype)
        return vae.decode(vae.encode(x).latent_dist.mode()).sample.float().clamp(-1, 1)
