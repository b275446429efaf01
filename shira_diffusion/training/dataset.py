"""A style's training images and captions.

Sources: a folder of images with same-name ``.txt`` captions, a Hugging Face imagefolder with
``metadata.jsonl`` (``file_name`` + ``text``), or an in-memory list of ``(PIL image, caption)`` pairs.

Everything is decoded up front (``load_training_data``), before any model loads, so a bad file stops
a run before it starts, with the file named: unreadable or truncated images, decompression bombs,
captions that are not UTF-8. Every Pillow mode becomes the RGB image it shows: 16-bit and 32-bit
grayscale are scaled to 8 bits (not clipped to white), palette and alpha images are laid on white.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ShiraError
from ..generate import with_triggers

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass
class TrainingData:
    """Decoded training examples: RGB images, raw captions (no trigger), where each came from, and a
    fingerprint of the data (image file bytes or pixels, and captions, in order)."""

    images: list  # PIL RGB images
    captions: list[str]
    names: list[str]
    fingerprint: str
    source: str | None = None  # the folder, or None for in-memory data

    def __len__(self) -> int:
        return len(self.images)


def load_training_data(source) -> TrainingData:
    """``source``: a folder (str or path), a ``TrainingData``, or an iterable of (PIL image, caption)."""
    if isinstance(source, TrainingData):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _from_folder(os.fspath(source))
    return _from_pairs(source)


def _from_folder(folder: str) -> TrainingData:
    if not os.path.isdir(folder):
        raise ShiraError(f"training data folder {folder!r} does not exist")
    files, captions = _listing(folder)
    if not files:
        raise ShiraError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder!r}")
    digest = hashlib.sha256()
    images = []
    for path, caption in zip(files, captions):
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise ShiraError(f"cannot read image {path}: {exc.strerror or exc}") from None
        images.append(_decode(raw, path))
        _hash_item(digest, raw, caption)
    return TrainingData(images, captions, files, digest.hexdigest(), folder)


def _from_pairs(pairs) -> TrainingData:
    from PIL import Image

    try:
        pairs = list(pairs)
    except TypeError:
        raise ShiraError(f"training data must be a folder or a list of (image, caption) pairs, got "
                         f"{type(pairs).__name__}") from None
    if not pairs:
        raise ShiraError("no training images: the list of (image, caption) pairs is empty")
    digest = hashlib.sha256()
    images, captions, names = [], [], []
    for i, pair in enumerate(pairs):
        name = f"image {i}"
        try:
            image, caption = pair
        except (TypeError, ValueError):
            raise ShiraError(f"training pair {i} is not an (image, caption) pair") from None
        if not isinstance(image, Image.Image):
            raise ShiraError(f"training pair {i}: expected a PIL image, got {type(image).__name__}")
        if caption is None:
            caption = ""
        if not isinstance(caption, str):
            raise ShiraError(f"training pair {i}: the caption must be text, got {type(caption).__name__}")
        try:
            rgb = to_rgb(image, name)
        except ShiraError:
            raise
        except Exception as exc:  # Pillow raises many kinds for a broken image
            raise ShiraError(f"cannot read {name}: {exc}") from None
        images.append(rgb)
        captions.append(caption.strip())
        names.append(name)
        _hash_item(digest, np.asarray(rgb).tobytes() + repr(rgb.size).encode(), caption.strip())
    return TrainingData(images, captions, names, digest.hexdigest(), None)


def _hash_item(digest, data: bytes, caption: str) -> None:
    for part in (data, caption.encode("utf-8")):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)


def _decode(raw: bytes, path: str):
    """One image file as an RGB image; refuses (naming the file) what Pillow cannot decode or
    takes for a decompression bomb."""
    import io

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:
                image.load()
                return to_rgb(image, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ShiraError(f"image {path} refused as a possible decompression bomb: {exc}") from None
    except ShiraError:
        raise
    except Exception as exc:  # UnidentifiedImageError, truncated data, bad chunks, ...
        raise ShiraError(f"cannot read image {path}: {exc}") from None


def to_rgb(image, name: str = "image"):
    """The RGB image ``image`` shows, for every Pillow mode: 16/32-bit grayscale and float images
    scaled to 8 bits, palette and alpha modes composited on white, CMYK/YCbCr/1/L converted."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        top = float(values.max()) if values.size else 0.0
        if mode in _SIXTEEN_BIT or top > 255:  # a 16-bit range ("I" and "F" holding 16-bit data too)
            values = values / 257.0  # 65535 -> 255
        elif mode == "F" and top <= 1.0:
            values = values * 255.0  # a float image in [0, 1]
        gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ShiraError(f"{name}: cannot convert a {mode!r} image to RGB ({exc})") from None


class StyleImages:
    """Training images as tensors in [-1, 1], resized to ``size`` (shorter side, then a center
    crop), with captions: the trigger word appended; images without a caption train on the
    trigger alone (with a warning). ``source``: anything ``load_training_data`` takes."""

    def __init__(self, source, size: int, trigger: str | None = None, warn: bool = True):
        data = load_training_data(source)
        self.data = data
        self.files = list(data.names)
        self.captions, self._tensors = [], []
        uncaptioned = []
        for name, image, caption in zip(data.names, data.images, data.captions):
            self._tensors.append(_to_tensor(_fit(image, size)))
            if not caption:
                uncaptioned.append(os.path.basename(name))
            self.captions.append(with_triggers(caption, [trigger]) if caption else (trigger or ""))
        if uncaptioned and warn:
            what = f"the trigger {trigger!r} alone" if trigger else "an empty caption (unconditional)"
            warnings.warn(f"{len(uncaptioned)} of {len(data)} images have no caption (e.g. {uncaptioned[0]}); "
                          f"they train on {what}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> torch.Tensor:
        return self._tensors[i]


def infer_trigger(captions: list[str]) -> str | None:
    """The phrase every caption shares at its end after a comma (``"..., in zqx style"``), else at
    its start before a comma; None when there is none (or fewer than two captions)."""
    if len(captions) < 2 or not all(captions):
        return None
    parts = [[p.strip() for p in c.split(",")] for c in captions]
    for ordered in (lambda p: p[::-1], lambda p: p):  # suffix first, then prefix
        seqs = [ordered(p) for p in parts]
        shared = 0
        # At most all but one part of each caption: the phrase must follow (or precede) a comma.
        while shared < min(len(s) for s in seqs) - 1 and len({s[shared] for s in seqs}) == 1 and seqs[0][shared]:
            shared += 1
        if shared:
            phrase = ordered(seqs[0][:shared])
            return ", ".join(phrase)
    return None


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a BOM is UTF-8 too
            return handle.read()
    except UnicodeDecodeError as exc:
        raise ShiraError(f"caption file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                         "save it as UTF-8") from None
    except OSError as exc:
        raise ShiraError(f"cannot read caption file {path}: {exc.strerror or exc}") from None


def _listing(folder: str) -> tuple[list[str], list[str]]:
    metadata = os.path.join(folder, "metadata.jsonl")
    if os.path.isfile(metadata):
        files, captions = [], []
        for number, line in enumerate(_read_text(metadata).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name = row["file_name"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ShiraError(f"{metadata}:{number}: expected a JSON object with 'file_name'") from None
            files.append(os.path.join(folder, name))
            captions.append(str(row.get("text", row.get("caption", ""))).strip())
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ShiraError(f"{metadata} lists {missing[0]!r}, which does not exist")
        return files, captions
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    captions = []
    for path in files:
        caption_file = os.path.splitext(path)[0] + ".txt"
        captions.append(_read_text(caption_file).strip() if os.path.isfile(caption_file) else "")
    return files, captions


def _fit(image, size: int):
    from PIL import Image

    scale = size / min(image.size)
    if scale != 1:
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def _to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1.0
