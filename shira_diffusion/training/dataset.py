"""A style's training images and captions: a folder of images with same-name ``.txt`` captions, or a
Hugging Face imagefolder with ``metadata.jsonl`` (``file_name`` + ``text``)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import torch

from ..errors import ShiraError
from ..generate import with_triggers

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class StyleImages:
    """All images, read and checked up front (a bad file fails before training starts), resized to
    ``size`` (shorter side, then a center crop) as tensors in [-1, 1]. Captions get the trigger word
    appended; images without a caption train on the trigger alone (with a warning)."""

    def __init__(self, folder: str, size: int, trigger: str | None = None, warn: bool = True):
        from PIL import Image, UnidentifiedImageError

        if not os.path.isdir(folder):
            raise ShiraError(f"training data folder {folder!r} does not exist")
        files, captions = _listing(folder)
        if not files:
            raise ShiraError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder!r}")
        self.files, self.captions, self._tensors = files, [], []
        uncaptioned = []
        for path, caption in zip(files, captions):
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB")
            except (OSError, UnidentifiedImageError) as exc:
                raise ShiraError(f"cannot read image {path}: {exc}") from None
            self._tensors.append(_to_tensor(_fit(image, size)))
            if not caption:
                uncaptioned.append(os.path.basename(path))
            self.captions.append(with_triggers(caption, [trigger]) if caption else (trigger or ""))
        if uncaptioned and warn:
            what = f"the trigger {trigger!r} alone" if trigger else "an empty caption (unconditional)"
            warnings.warn(f"{len(uncaptioned)} of {len(files)} images have no caption (e.g. {uncaptioned[0]}); "
                          f"they train on {what}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> torch.Tensor:
        return self._tensors[i]


def _listing(folder: str) -> tuple[list[str], list[str]]:
    metadata = os.path.join(folder, "metadata.jsonl")
    if os.path.isfile(metadata):
        files, captions = [], []
        with open(metadata) as handle:
            for number, line in enumerate(handle, 1):
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
        captions.append(open(caption_file).read().strip() if os.path.isfile(caption_file) else "")
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
