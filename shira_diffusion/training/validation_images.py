"""Validation images during training (``--validation_prompt`` every ``--validation_steps``): the
adapter as it stands (or its EMA average, swapped in for the duration), a row of images per step
written to ``X.validation/step-NNNNNN.png``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch

from ..core.sparse_training import SparseDeltaModel
from .config import TrainConfig
from .outputs import atomic_path


@contextmanager
def averaged(ema, params, model):
    """The EMA values in place of the live ones for the duration (validation images)."""
    if ema is None:
        yield
        return
    # SHiRA's fused weights are rewritten by force on each swap: EMAModel copies through
    # ``.data``, which the model's change tracking does not see.
    resync = model.sync if isinstance(model, SparseDeltaModel) else lambda force: None
    ema.store(params)
    ema.copy_to(params)
    resync(force=True)
    try:
        yield
    finally:
        ema.restore(params)
        resync(force=True)


def validation_images(pipe, model, config: TrainConfig, folder: str, step: int, size: int, trigger: str | None) -> None:
    from PIL import Image

    from ..generate import with_triggers
    from ..images import image_grid

    if isinstance(model, SparseDeltaModel):
        model.sync()
    pipe.unet.eval()
    prompt = with_triggers(config.validation_prompt, [trigger or ""])
    images = []
    with torch.no_grad():
        for i in range(config.num_validation_images):
            out = pipe(prompt, num_inference_steps=20, guidance_scale=5.0, height=size, width=size,
                       generator=torch.Generator().manual_seed(i), output_type="np")
            images.append((out.images[0] * 255).round().astype(np.uint8))
    pipe.unet.train()
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, f"step-{step:06d}.png")) as temporary:
        Image.fromarray(image_grid(images, len(images))).save(temporary, format="PNG")
