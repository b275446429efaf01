"""Style measures for concept retention: how strongly a set of images shows one style.

Retention (a style's strength in a mix over its strength alone) needs a measure of strength. Two
kinds plug into ``eval_fusion``, both with ``strength(images) -> share of images that show it``:

- ``LookMeasure``: the toy world's own measure of a rendered look (``toy/looks.py``), exact and
  offline, for the bundled bases;
- ``DetectorMeasure``: the style's own label-free detector (``quality.detector``, the one
  ``shira train`` stores as ``X.detector.json``), each image read beside the base's image for the
  same prompt and seed;
- ``FeatureMeasure``: needs no labels, for any base: an image shows the style when its features
  are closer (cosine, features standardised over the references) to the centroid of the style's
  own training images than to the centroid of the base's plain images for the same prompts. The
  features come from any image encoder: ``clip_encoder`` (a transformers CLIP vision model, local
  folder or object) or ``vae_encoder`` (the pipeline's own VAE, already loaded, nothing to fetch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ShiraError
from ..metrics import style_strength

Encoder = Callable[[Sequence[np.ndarray]], np.ndarray]  # RGB uint8 images -> (n, d) features


@dataclass(frozen=True)
class LookMeasure:
    """The toy world's measure of one look."""

    look: str

    def strength(self, images: Sequence[np.ndarray]) -> float:
        return style_strength(images, self.look)


@dataclass(frozen=True)
class DetectorMeasure:
    """A style detector with the base's images ``plain[i]`` (plain prompt i, seed i): the images it
    measures are the first ``len(images)`` prompts with seeds 0, 1, ... in that order."""

    detector: object  # quality.detector.StyleDetector
    plain: Sequence[np.ndarray]

    def strength(self, images: Sequence[np.ndarray]) -> float:
        if len(images) > len(self.plain):
            raise ShiraError(f"{len(images)} images but the base's images for only {len(self.plain)} prompts")
        return self.detector.strength(images, self.plain[:len(images)])


class FeatureMeasure:
    """Share of images nearer the style's own images than the base's plain ones, in feature space."""

    def __init__(self, encode: Encoder, style_images: Sequence[np.ndarray], plain_images: Sequence[np.ndarray]):
        if len(style_images) < 2 or len(plain_images) < 2:
            raise ShiraError("a feature measure needs at least 2 style images and 2 plain images")
        self.encode = encode
        style, plain = encode(style_images), encode(plain_images)
        both = np.concatenate([style, plain])
        self.mean = both.mean(axis=0)
        self.scale = both.std(axis=0) + 1e-6  # standardised: no feature dominates by its units alone
        self.style_centroid = _unit(self._standardise(style).mean(axis=0))
        self.plain_centroid = _unit(self._standardise(plain).mean(axis=0))

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.scale

    def closeness(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Per image: cosine to the style's centroid minus cosine to the plain centroid."""
        z = self._standardise(self.encode(images))
        z = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)
        return z @ self.style_centroid - z @ self.plain_centroid

    def strength(self, images: Sequence[np.ndarray]) -> float:
        if not len(images):
            raise ShiraError("no images to measure")
        return float(np.mean(self.closeness(images) > 0))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def vae_encoder(vae) -> Encoder:
    """Color and texture statistics plus the VAE's pooled latents (the transfer filter's features)."""
    from ..transfer.discriminator import image_features

    return lambda images: image_features(images, vae=vae)


def clip_encoder(model, processor=None, batch_size: int = 16) -> Encoder:
    """Image embeddings of a transformers CLIP vision model (an object, or a local folder / Hub id in
    the local cache: nothing is downloaded). Without a processor, images are resized to the model's
    input size and normalised with CLIP's mean and std."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    if isinstance(model, str):
        try:
            processor = processor or CLIPImageProcessor.from_pretrained(model, local_files_only=True)
            model = CLIPVisionModelWithProjection.from_pretrained(model, local_files_only=True)
        except OSError as exc:
            raise ShiraError(f"cannot load a CLIP vision model from {model!r} (local folders and the local cache "
                             f"only): {exc}") from None
    if processor is None:
        size = model.config.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    model.eval()

    def encode(images: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                pixels = processor(images=[np.asarray(im) for im in images[start:start + batch_size]],
                                   return_tensors="pt")["pixel_values"]
                output = model(pixel_values=pixels.to(model.device, model.dtype))
                embeds = getattr(output, "image_embeds", None)
                out.append((embeds if embeds is not None else output.pooler_output).float().cpu().numpy())
        return np.concatenate(out)

    return encode
