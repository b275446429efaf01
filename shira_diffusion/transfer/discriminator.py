"""Step 3: a small real-vs-synthetic classifier and the distance between sample sets.

Features of an image: the source VAE's latent, mean- and std-pooled per channel, plus color and
texture statistics (per-channel mean and spread, mean absolute differences along rows, columns
and both diagonals, coarse color histogram). The classifier is L2-regularised logistic regression
on standardised features, classes weighted equally (5 real images against many synthetic ones).
``mmd_rbf``: the maximum mean discrepancy with a Gaussian kernel (median bandwidth).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ShiraError


def color_features(image: np.ndarray) -> np.ndarray:
    """Color and texture statistics of one RGB uint8 image (float vector)."""
    x = np.asarray(image, dtype=np.float32) / 255.0
    if x.ndim != 3 or x.shape[2] != 3:
        raise ShiraError(f"expected an RGB image (H, W, 3), got shape {x.shape}")
    gray = x.mean(axis=2)
    feats = [x.mean(axis=(0, 1)), x.std(axis=(0, 1))]
    diffs = [np.abs(np.diff(gray, axis=0)).mean(), np.abs(np.diff(gray, axis=1)).mean(),
             np.abs(gray[1:, 1:] - gray[:-1, :-1]).mean(), np.abs(gray[1:, :-1] - gray[:-1, 1:]).mean()]
    feats.append(np.array(diffs, dtype=np.float32))
    hist = np.histogram(gray, bins=8, range=(0.0, 1.0))[0] / gray.size
    feats.append(hist.astype(np.float32))
    return np.concatenate(feats).astype(np.float32)


def latent_features(vae, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """Per image, the VAE latent's per-channel mean and standard deviation (mode of the posterior)."""
    out = []
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = np.stack([np.asarray(im, dtype=np.float32) for im in images[start:start + batch_size]])
            pixels = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(device, dtype) / 127.5 - 1.0
            latents = vae.encode(pixels).latent_dist.mode().float()
            out.append(torch.cat([latents.mean(dim=(2, 3)), latents.std(dim=(2, 3))], dim=1).cpu().numpy())
    return np.concatenate(out)


def image_features(images: Sequence[np.ndarray], vae=None) -> np.ndarray:
    """The discriminator's features: color/texture statistics, plus the VAE's pooled latents when given."""
    if not len(images):
        raise ShiraError("no images to describe")
    feats = np.stack([color_features(im) for im in images])
    if vae is not None:
        feats = np.concatenate([feats, latent_features(vae, images)], axis=1)
    return feats


@dataclass
class Discriminator:
    """Logistic regression on standardised features; ``p_real`` is its probability of "real"."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float
    threshold: float = 0.5

    def p_real(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.weight + self.bias)))

    def takes_for_real(self, features: np.ndarray) -> np.ndarray:
        return self.p_real(features) >= self.threshold

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "weight": self.weight.tolist(),
                "bias": float(self.bias), "threshold": self.threshold}

    @classmethod
    def from_dict(cls, values: dict) -> "Discriminator":
        return cls(np.asarray(values["mean"]), np.asarray(values["scale"]), np.asarray(values["weight"]),
                   float(values["bias"]), float(values.get("threshold", 0.5)))


def fit_discriminator(real: np.ndarray, synthetic: np.ndarray, *, l2: float = 1.0, steps: int = 500,
                      threshold: float = 0.5) -> Discriminator:
    """Logistic regression, real (label 1) vs synthetic (0), each class weighted to half the loss,
    with an L2 penalty ``l2`` (on the standardised scale; few real samples need a strong one)."""
    real, synthetic = np.asarray(real, dtype=np.float64), np.asarray(synthetic, dtype=np.float64)
    if len(real) < 1 or len(synthetic) < 1:
        raise ShiraError("the discriminator needs at least one real and one synthetic sample")
    both = np.concatenate([real, synthetic])
    mean, scale = both.mean(axis=0), both.std(axis=0) + 1e-6
    x = torch.from_numpy((both - mean) / scale)
    y = torch.cat([torch.ones(len(real)), torch.zeros(len(synthetic))]).double()
    w_class = torch.cat([torch.full((len(real),), 0.5 / len(real)),
                         torch.full((len(synthetic),), 0.5 / len(synthetic))]).double()
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = x @ weight + bias
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * w_class).sum()
        loss = loss + 0.5 * l2 * (weight ** 2).sum() / len(both)
        loss.backward()
        return loss

    optimizer.step(closure)
    return Discriminator(mean, scale, weight.detach().numpy().copy(), float(bias.detach()), threshold)


def mmd_rbf(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Squared maximum mean discrepancy (biased estimate) between samples ``x`` and ``y`` with a
    Gaussian kernel; ``bandwidth``: the kernel's sigma, by default the median pairwise distance of
    the pooled samples. Features should be standardised first (``standardise``)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) == 0 or len(y) == 0:
        raise ShiraError("MMD needs samples on both sides")
    both = np.concatenate([x, y])
    d2 = ((both[:, None, :] - both[None, :, :]) ** 2).sum(-1)
    if bandwidth is None:
        off = d2[~np.eye(len(both), dtype=bool)]
        bandwidth = float(np.sqrt(np.median(off))) if off.size and np.median(off) > 0 else 1.0
    k = np.exp(-d2 / (2 * bandwidth ** 2))
    n = len(x)
    kxx, kyy, kxy = k[:n, :n].mean(), k[n:, n:].mean(), k[:n, n:].mean()
    return float(max(kxx + kyy - 2 * kxy, 0.0))


def standardise(reference: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``reference`` and ``others`` scaled by ``reference``'s mean and standard deviation."""
    mean, scale = reference.mean(axis=0), reference.std(axis=0) + 1e-6
    return [(a - mean) / scale for a in (reference, *others)]
