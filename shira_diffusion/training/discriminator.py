"""``--discriminator``: ``shira transfer``'s real-vs-synthetic discriminator, fit while the real images
exist and stored beside the adapter (``X.discriminator.json``), as Trans-LoRA trains its
discriminator on the task's real data; a later transfer of the adapter uses it instead of one fit
on a few seed images. Its synthetic side is what the transfer's calibration samples are: images the
just-trained adapter draws on its base, here for the training captions.

The functions are ``transfer.discriminator``'s, imported inside the function so that importing
training does not load the transfer package (whose pipeline imports training).
"""

from __future__ import annotations

import os
import time

from ..errors import ShiraError

SAMPLE_STEPS = 20  # shira transfer's --sample-steps default
GUIDANCE = 5.0  # and its --guidance default


def fit_and_store(pipe, data, trigger: str | None, config, path: str, adapter_files: list[str],
                  family: str) -> tuple[object, dict]:
    """Fit on ``data`` (``TrainingData``) against the adapter in use on ``pipe``, write ``path`` (JSON,
    tied to ``adapter_files`` by their sha256); returns the discriminator and a summary for the record."""
    from ..transfer.discriminator import FILTER_L2, file_sha256, fit_adapter_discriminator, save_discriminator

    if not len(data):
        raise ShiraError("--discriminator needs the training images")
    started = time.time()
    steps = config.discriminator_sample_steps or SAMPLE_STEPS
    disc, synthetic = fit_adapter_discriminator(pipe, data.images, data.captions, trigger,
                                                samples=config.discriminator_samples, seed=config.seed, steps=steps,
                                                guidance=GUIDANCE)
    about = {"adapter": os.path.basename(config.output),
             "adapter_sha256": [file_sha256(f) for f in adapter_files],
             "base": str(config.base), "family": family, "real": len(data), "synthetic": synthetic,
             "sample_steps": steps, "guidance": GUIDANCE, "seed": config.seed, "l2": FILTER_L2}
    save_discriminator(path, disc, about)
    return disc, {"file": path, "real": len(data), "synthetic": synthetic, "sample_steps": steps,
                  "seconds": round(time.time() - started, 1)}
