"""Checkpoints of a toy base's training (``toy/train_base.py``): the whole pipeline and the stage's
optimizer, every ``checkpoint-STEP.pt`` written whole (a temporary name, then one rename), the newest
two kept, and read back as tensors, numbers and strings only.
"""

from __future__ import annotations

import glob
import os

import torch


def checkpoints(work: str) -> list[str]:
    return sorted(glob.glob(os.path.join(work, "checkpoint-*.pt")), key=lambda p: int(p.rsplit("-", 1)[1][:-3]))


def save_checkpoint(work, stage_step, pipe, opt, stage, family, keep=2, extra=None):
    state = {**(extra or {}), "step": stage_step, "vae": pipe.vae.state_dict(), "unet": pipe.unet.state_dict(),
             "text_encoder": pipe.text_encoder.state_dict(), "optimizer": opt.state_dict(), "stage": stage}
    if family == "sdxl":
        state["text_encoder_2"] = pipe.text_encoder_2.state_dict()
    path = os.path.join(work, f"checkpoint-{stage_step}.pt")
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)  # never a half-written checkpoint
    for old in checkpoints(work)[:-keep]:
        os.remove(old)


def load_checkpoint(path: str, device="cpu") -> dict:
    """A checkpoint ``save_checkpoint`` wrote: tensors, numbers and strings only. ``weights_only``
    refuses any other pickled object (which could run code when loaded) on every torch >= 2.4 this
    package accepts, not just on those where it is the default."""
    return torch.load(path, map_location=device, weights_only=True)
