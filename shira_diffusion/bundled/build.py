"""``shira styles build``: the bundled styles' training sets and adapters, on both toy bases.

For each style, ``styles/<name>/`` gets 50 training images with captions (plain grammar prompts,
none of the ones reserved for evaluation), a thumbnail, ``style.json``, and for each base a SHiRA
adapter (default mask) and a LoRA at equal parameter count. The trigger word is appended by
training, as it is by ``shira generate --style``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..catalog import default_catalog
from ..images import image_grid
from ..toy.looks import LOOKS
from ..toy.prompts import reserved_prompts
from ..toy.world import write_dataset
from ..training.trainer import train
from .specs import BUILT_BY_DEFAULT, IMAGES, STYLES, StyleSpec, recipe_summary, train_config


def write_training_set(spec: StyleSpec, folder: Path) -> None:
    """``IMAGES`` toy scenes under the style's look, with plain grammar captions (none of the
    prompts reserved for evaluation), and a thumbnail."""
    from PIL import Image

    paths = write_dataset(folder / "images", IMAGES, seed=spec.seed, look=LOOKS[spec.look], exclude=reserved_prompts())
    thumbs = [np.asarray(Image.open(p).convert("RGB")) for p in paths[:4]]
    Image.fromarray(image_grid(thumbs, 2)).save(folder / "thumbnail.png")


def file_entry(config, result: dict) -> dict:
    """A trained adapter's entry in ``style.json``."""
    return {"file": Path(config.output).name, "mask": config.mask if config.adapter == "shira" else None,
            "params": result["trainable_params"], "seconds": result["seconds"], "steps": result["steps"],
            "final_loss": result["final_loss"], "recipe": recipe_summary(config)}


def style_fields(spec: StyleSpec) -> dict:
    return {"name": spec.name, "description": spec.description, "trigger": spec.trigger, "look": spec.look,
            "images": "images/", "thumbnail": "thumbnail.png"}


def build(names, bases, variants=BUILT_BY_DEFAULT, steps: int | None = None) -> None:
    for name in names:
        spec = STYLES[name]
        folder = default_catalog().folder(name)
        if not (folder / "images").is_dir():
            write_training_set(spec, folder)
        for base in bases:
            for variant in variants:
                config = train_config(spec, base, variant, steps)
                result = train(config)
                # A new entry: the old one's recommended guidance was measured on the old adapter.
                default_catalog().update_entry(name, f"{base}/{variant}", file_entry(config, result), replace=True,
                                               **style_fields(spec))
