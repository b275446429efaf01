"""Step 3: a small real-vs-synthetic classifier and the distance between sample sets.

Features of an image: the source VAE's latent, mean- and std-pooled per channel, plus color and
texture statistics (per-channel mean and spread, mean absolute differences along rows, columns
and both diagonals, coarse color histogram). The classifier is L2-regularised logistic regression
on standardised features, classes weighted equally (5 real images against many synthetic ones).
``mmd_rbf``: the maximum mean discrepancy with a Gaussian kernel (median bandwidth).

The synthetic side a discriminator learns against is the adapter's own images (``teacher_images``,
seeds by ``draw_seeds``). They live here, not in ``pipeline.py``, because ``shira train
--discriminator`` draws the same samples for the adapter it just trained (``fit_adapter_discriminator``)
and stores the result beside it (``save_discriminator``; ``stored_discriminator`` finds it), and the
training package may not import the pipeline, which imports training.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ShiraError
from ..generate import generate_batched, with_triggers

# Bumped whenever ``image_features`` changes: stored weights mean something for one definition only.
FEATURES_VERSION = 1
STORED_FORMAT = "shira-discriminator"
# The filter's L2 penalty: a handful of real images against a dozen synthetic ones needs a strong one.
FILTER_L2 = 10.0


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
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.weight):
            raise ShiraError(f"the discriminator takes {len(self.weight)} features per image, got an array of shape "
                             f"{features.shape} (features from another VAE or another feature definition?)")
        z = (features - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.weight + self.bias)))

    def takes_for_real(self, features: np.ndarray) -> np.ndarray:
        return self.p_real(features) >= self.threshold

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "weight": self.weight.tolist(),
                "bias": float(self.bias), "threshold": self.threshold}

    @classmethod
    def from_dict(cls, values: dict) -> "Discriminator":
        try:
            arrays = [np.asarray(values[k], dtype=np.float64) for k in ("mean", "scale", "weight")]
            bias, threshold = float(values["bias"]), float(values.get("threshold", 0.5))
        except (KeyError, TypeError, ValueError) as exc:
            raise ShiraError(f"not a discriminator: {type(exc).__name__} {exc}") from None
        if any(a.ndim != 1 or len(a) != len(arrays[0]) or not np.isfinite(a).all() for a in arrays) or \
                not np.isfinite(bias) or not (arrays[1] > 0).all():
            raise ShiraError("not a discriminator: mean, scale and weight must be finite vectors of one length "
                             "(scale > 0)")
        return cls(*arrays, bias, threshold)


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


def calibration_count(real: int) -> int:
    """Synthetic samples a discriminator learns against by default: 2 x the real images, at least 10."""
    return max(10, 2 * real)


def draw_seeds(seed: int, start: int, count: int) -> list[int]:
    """The generator seeds of synthetic draws ``start .. start + count - 1`` of a run seeded ``seed``."""
    return [seed * 100_003 + start + i for i in range(count)]


def teacher_images(pipe, prompts: list[str], trigger: str | None, *, seeds: list[int], steps: int = 20,
                   guidance: float = 5.0, batch_size: int = 8) -> list[np.ndarray]:
    """Step 2: the teacher's images (the adapter must already be applied): prompt i with seed ``seeds[i]``
    (one generator per image, as ``generate_batched``), the trigger appended; RGB uint8 arrays."""
    prompts = [with_triggers(p, [trigger or ""]) for p in prompts]
    return generate_batched(pipe, prompts, steps, guidance, batch_size=batch_size, seeds=seeds)


def fit_adapter_discriminator(pipe, real_images: Sequence, captions: Sequence[str], trigger: str | None, *,
                              samples: int | None = None, seed: int = 0, steps: int = 20, guidance: float = 5.0,
                              batch_size: int = 8) -> tuple[Discriminator, int]:
    """The discriminator ``shira transfer`` fits on its seeds, fit on an adapter's real images instead:
    the adapter, in use on ``pipe``, draws ``samples`` calibration images (default ``calibration_count``)
    for ``captions`` in turn (trigger appended, seeded as the transfer's draws); ``real_images`` (PIL)
    are sized as the transfer sizes its seeds. Returns the discriminator and the synthetic count."""
    if not len(real_images) or len(captions) != len(real_images):
        raise ShiraError("the discriminator needs the real images, each with its caption")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    real = [np.asarray(im.convert("RGB").resize((size, size))) for im in real_images]
    count = samples or calibration_count(len(real))
    prompts = [captions[i % len(captions)] for i in range(count)]
    synthetic = teacher_images(pipe, prompts, trigger, seeds=draw_seeds(seed, 0, count), steps=steps,
                               guidance=guidance, batch_size=batch_size)
    disc = fit_discriminator(image_features(real, pipe.vae), image_features(synthetic, pipe.vae), l2=FILTER_L2)
    return disc, count


# ------------------------------------------------------------------------------------ stored beside an adapter

def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_discriminator(path: str, disc: Discriminator, about: dict) -> None:
    """JSON (no pickle): the feature definition's version, ``about`` (the adapter files' sha256 under
    ``adapter_sha256``, how it was fit) and the standardisation and weights (floats round-trip exactly)."""
    from ..files import write_atomically

    text = json.dumps({"format": STORED_FORMAT, "features_version": FEATURES_VERSION, **about, **disc.to_dict()},
                      indent=1)

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)

    write_atomically(path, write, overwrite=True)


def load_discriminator(path: str) -> tuple[Discriminator, dict]:
    """A stored discriminator and its file's other entries; one from another feature definition fails."""
    return read_stored_classifier(path, STORED_FORMAT, FEATURES_VERSION, "discriminator",
                                  "train again with --discriminator")


def read_stored_classifier(path, stored_format: str, version: int, what: str, again: str) -> tuple[Discriminator, dict]:
    """A classifier stored as JSON by ``save_discriminator`` or ``StyleDetector.save``: its format and
    feature version checked (``again``: what to do about another version), and the file's other entries."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ShiraError(f"cannot read the {what} {path}: {exc}") from None
    if not isinstance(values, dict) or values.get("format") != stored_format:
        raise ShiraError(f"{path} is not a stored {what} (no \"format\": \"{stored_format}\")")
    if values.get("features_version") != version:
        raise ShiraError(f"{path} was fit on image features version {values.get('features_version')!r}; this "
                         f"version computes version {version}: {again}")
    try:
        classifier = Discriminator.from_dict(values)
    except ShiraError as exc:
        raise ShiraError(f"{path}: {exc}") from None
    return classifier, {k: v for k, v in values.items() if k not in ("mean", "scale", "weight", "bias", "threshold")}


def stored_discriminator(adapter: str) -> tuple[Discriminator, str] | None:
    """The discriminator ``shira train --discriminator`` stored beside ``adapter`` and its path, or None.
    One fit for another version of the file (the adapter retrained since) fails rather than misjudge."""
    from ..training.outputs import output_paths

    stem = os.fspath(adapter)[: -len(".safetensors")] if os.fspath(adapter).endswith(".safetensors") else None
    if stem is None:
        return None
    # A kohya copy (X.kohya.safetensors) shares X's discriminator.
    stems = [stem, stem[: -len(".kohya")]] if stem.endswith(".kohya") else [stem]
    for path in (output_paths(s + ".safetensors")["discriminator"] for s in stems):
        if os.path.isfile(path):
            disc, about = load_discriminator(path)
            if file_sha256(adapter) not in about.get("adapter_sha256", []):
                raise ShiraError(f"{path} was fit for another version of {os.path.basename(adapter)} (the adapter "
                                 "changed since); train again with --discriminator, or pass --ignore-discriminator "
                                 "to fit one on the seed images")
            return disc, path
    return None


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
