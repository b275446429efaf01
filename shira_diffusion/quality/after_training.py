"""What ``shira train`` runs once the adapter is written: fit and store the style detector, run the
self-check, and store the chosen guidance and weight in the adapter's header when they meet both
targets.

Runs on the base without the adapter (the trainer has taken it off); the adapter is put on through
a ``StyleBank`` (SHiRA) or diffusers' LoRA loader, as users load it, at each weight the search tries.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence

from .detector import MAX_IMAGES, fit_style_detector
from .prompts import validation_prompts, without_trigger
from .self_check import PROMPTS, START, STEPS, self_check

logger = logging.getLogger(__name__)

BUDGET_SHARE = 0.25  # of the training time, for the detector and the search together
# Images the check draws at the least: the detector's two base images per training image (up to
# MAX_IMAGES), and one setting's styled images beside the base's.
MIN_IMAGES = 2 * MAX_IMAGES + 2 * PROMPTS
# A generated image costs at least about this many training steps (20 denoising steps of two forward
# passes, in batches, against a step's forward and backward over a batch of 4; about 2.4 in a
# `shira train --base toy-sd --max_train_steps 60` run on a 2-core CPU: 0.3 s a step, 53 s for 72
# images). A low guess: only runs that clearly cannot afford the check skip it unseen.
STEPS_PER_IMAGE = 1.0


def check_new_style(pipe, adapter_path: str, kind: str, images: Sequence, captions: Sequence[str],
                    trigger: str | None, *, detector_path: str, train_seconds: float, train_steps: int = 0,
                    seed: int = 0) -> dict:
    """Fit the detector (written to ``detector_path``), search the setting and, when it meets both
    targets, store it in the adapter file (rewritten atomically, values unchanged). Returns the
    self-check's result.

    When the least the check needs would not fit a quarter of the training time (a short trial run),
    it says so and stops: first on an estimate from the steps (before drawing anything), then on the
    time the base's images for the validation prompts took (drawn first, and needed anyway)."""
    from ..core.bank import StyleBank
    from ..generate import applied_adapter, generate_batched

    started = time.time()
    budget = BUDGET_SHARE * train_seconds
    if train_steps and STEPS_PER_IMAGE * MIN_IMAGES > BUDGET_SHARE * train_steps:  # nothing drawn to know it
        return _too_short(STEPS_PER_IMAGE * MIN_IMAGES * train_seconds / train_steps, budget)
    bank = StyleBank(pipe.unet) if kind != "lora" else None

    def draw(prompts, guidance, weight):
        if weight == 0:
            return generate_batched(pipe, prompts, STEPS, guidance, desc="self-check: the base")
        with applied_adapter(pipe, bank, adapter_path, kind, weight):
            return generate_batched(pipe, prompts, STEPS, guidance, desc=f"self-check: g{guidance:g} w{weight:g}")

    captions = [without_trigger(c, trigger) for c in captions]  # the base's prompts, and new ones made from them
    plain_prompts = validation_prompts(captions, PROMPTS, seed)
    if not plain_prompts:
        return {"skipped": "the captions allow no new combination of their words to check on"}
    plain = {START[0]: draw(plain_prompts, START[0], 0.0)}
    per_image = (time.time() - started) / len(plain_prompts)
    needed = per_image * MIN_IMAGES
    if needed > budget:
        return _too_short(needed, budget)
    detector = fit_style_detector(pipe, images, captions, seed=seed)
    detector.about["adapter"] = os.path.basename(adapter_path)
    detector.save(detector_path)
    result = self_check(draw, detector, plain_prompts, trigger, plain_images=plain,
                        budget_seconds=budget - (time.time() - started),
                        content_reader=toy_content_reader(images, captions, pipe))
    # Only a setting that meets both targets is stored for generate and the app to use: the label-free
    # measures misjudge some styles (docs/training.md), and a setting chosen on a miss was seen to
    # lower a style's true strength (vignette: weight 0.64, 60 % -> 5 %). A miss keeps 5 and 1.
    if result.get("meets"):
        store_recommended(adapter_path, kind, result)
    result["detector"] = detector_path
    result["seconds"] = round(time.time() - started, 1)
    return result


def toy_content_reader(images: Sequence, captions: Sequence[str], pipe):
    """The toy reader calibrated on the training images (at the base's image size), when every caption
    (trigger removed) is a toy prompt; else None (the structure proxy reads content)."""
    import numpy as np
    from PIL import Image

    from ..toy.calibrated_reader import fit_calibrated_reader
    from ..toy.world import parse_prompt
    from .content import is_toy_prompt

    if not captions or not all(is_toy_prompt(c) for c in captions):
        return None
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    pixels = [np.asarray((im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im))).convert("RGB")
                         .resize((size, size))) for im in images]
    return fit_calibrated_reader(pixels, [parse_prompt(c) for c in captions])


def _too_short(needed: float, budget: float) -> dict:
    return {"skipped": f"the run was too short to check within a quarter of its time (the check needs about "
                       f"{needed:.0f} s, a quarter of training is {budget:.0f} s); --no-check silences this"}


def store_recommended(adapter_path: str, kind: str, result: dict) -> None:
    """The chosen setting into the adapter's header (``recommended``), the file rewritten atomically."""
    chosen = result["chosen"]
    recommended = {"guidance": chosen["guidance"], "weight": chosen["weight"], "strength": chosen["strength"],
                   "content": chosen["content"], "base_content": chosen["base_content"], "meets": result["meets"],
                   "prompts": result["prompts"], "by": "self-check"}
    if kind != "lora":
        from ..core.adapter import SparseAdapter

        adapter = SparseAdapter.load(adapter_path)
        adapter.recommended = recommended
        adapter.save(adapter_path)
        return
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..files import write_atomically

    with safe_open(adapter_path, framework="pt") as handle:
        metadata = {**(handle.metadata() or {}), "recommended": json.dumps(recommended, sort_keys=True)}
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    write_atomically(adapter_path, lambda temporary: save_file(tensors, temporary, metadata=metadata))
