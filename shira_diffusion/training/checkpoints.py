"""Resumable checkpoints, and which run they belong to.

A checkpoint (``X.checkpoints/step-NNNNNN.pt``) holds the trained values, optimizer, schedule, EMA
and losses of one step, and the run's fingerprint: the config fields that shape training
(``config.TRAINING_FIELDS``), a hash of the training data, and the number of processes. A run
resumes only its own checkpoints: one whose fingerprint differs is refused, naming what differs.
A new run never picks up checkpoints left by another: it refuses a ``.checkpoints`` folder that
holds any, unless told to overwrite (which clears it).

One verdict on a folder, whether the run resumes or not: a file left by a write that was cut short
(``step-NNNNNN.pt.tmp``) is not a checkpoint (a new run clears it; 'latest' says there is none),
and a corrupt newest checkpoint gives way to the one before it, with a warning.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil

import torch

from ..errors import ShiraError

logger = logging.getLogger(__name__)

FORMAT = 2  # 1: no fingerprint (before checkpoints were tied to their run)
KEEP = 2


def checkpoint_files(folder: str) -> list[str]:
    """The complete checkpoints in ``folder``, oldest first (a partial write ends in ``.tmp``)."""
    return sorted(glob.glob(os.path.join(glob.escape(folder), "step-*.pt")))


class CorruptCheckpoint(ShiraError):
    """A checkpoint file that cannot be read back; ``reason`` says why, in a few words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"checkpoint {path} is corrupt or truncated ({reason}); delete it, or resume from "
                         "an older one")
        self.path, self.reason = path, reason


def check_new_run(folder: str, overwrite: bool) -> bool:
    """For a run that does not resume: True when ``folder`` holds files to clear first (an earlier
    run's checkpoints that ``overwrite`` allows clearing, or only partial writes); refuses an
    earlier run's checkpoints without ``overwrite``, saying what resuming would do."""
    if not os.path.isdir(folder) or not os.listdir(folder):
        return False
    if not checkpoint_files(folder) or overwrite:
        return True  # partial writes alone are no checkpoint: cleared, never offered for resuming
    latest_usable(folder, warn=False)  # none readable: the same refusal as resuming gives
    raise ShiraError(f"{folder} holds checkpoints of an earlier run: resume it with --resume_from_checkpoint "
                     "latest, or pass --overwrite to clear them and start anew")


def clear(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def latest_usable(folder: str, warn: bool = True) -> tuple[str, dict] | None:
    """The newest checkpoint in ``folder`` that reads back, and its contents; a corrupt newer one
    is passed over (with a warning). None when the folder holds no complete checkpoint; refuses a
    folder whose checkpoints are all corrupt."""
    found = checkpoint_files(folder)
    newest_error = None
    for path in reversed(found):
        try:
            state = read(path)
        except CorruptCheckpoint as exc:
            newest_error = newest_error or exc
            if warn:
                logger.warning("checkpoint %s is corrupt or truncated (%s): trying the one before", path,
                               exc.reason)
            continue
        if newest_error is not None and warn:
            logger.warning("resuming from %s, the newest checkpoint that reads back", path)
        return path, state
    if newest_error is not None:
        raise ShiraError(f"{folder} holds checkpoints of an earlier run, none readable "
                         f"({os.path.basename(newest_error.path)}: {newest_error.reason}): pass --overwrite to "
                         "clear them and start anew")
    return None


def load(which: str, folder: str) -> tuple[str, dict]:
    """The checkpoint ``which`` names, read: 'latest' (the newest usable one in ``folder``) or a path."""
    if which == "latest":
        found = latest_usable(folder)
        if found is None:
            partial = " (only a write cut short, which is no checkpoint)" if os.path.isdir(folder) and \
                os.listdir(folder) else ""
            raise ShiraError(f"--resume_from_checkpoint latest: no checkpoint in {folder}{partial}; run without "
                             "it to start anew")
        return found
    if not os.path.isfile(which):
        raise ShiraError(f"checkpoint {which} does not exist")
    return which, read(which)


def read(path: str) -> dict:
    """A checkpoint's contents on the CPU; one clear line for a file that is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, not a torch file at all, ...
        raise CorruptCheckpoint(path, (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]) from None
    if not isinstance(state, dict) or not {"step", "params", "optimizer", "lr_scheduler", "losses"} <= set(state):
        raise ShiraError(f"checkpoint {path} is not a shira-diffusion training checkpoint")
    return state


def check_owner(path: str, state: dict, config_fields: dict, data_fingerprint: str) -> None:
    """Refuses a checkpoint of another run: one whose training config or data differ."""
    mark = state.get("fingerprint")
    if not isinstance(mark, dict) or state.get("format", 1) < FORMAT:
        raise ShiraError(f"checkpoint {path} does not record which run made it (an older version wrote it); "
                         "start a new run")
    saved = mark.get("config", {})
    differ = [name for name in sorted(set(saved) | set(config_fields)) if saved.get(name) != config_fields.get(name)]
    if differ:
        detail = ", ".join(f"{name} ({saved.get(name)!r} there, {config_fields.get(name)!r} here)" for name in differ)
        raise ShiraError(f"checkpoint {path} belongs to another run: {detail}")
    if mark.get("data") != data_fingerprint:
        raise ShiraError(f"checkpoint {path} belongs to another run: the training data differ")


def check_processes(path: str, state: dict, processes: int) -> None:
    saved = state["fingerprint"].get("processes", processes)
    if saved != processes:
        raise ShiraError(f"checkpoint {path} belongs to another run: it was made with {saved} processes, "
                         f"this run has {processes} (the global batch differs)")


def save(folder: str, step: int, params, optimizer, lr_scheduler, losses, ema, fingerprint: dict,
         keep: int = KEEP) -> str:
    """Writes ``step-NNNNNN.pt`` atomically (never a half-written checkpoint) and keeps the newest ``keep``."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step-{step:06d}.pt")
    state = {"format": FORMAT, "fingerprint": fingerprint, "step": step,
             "params": [p.detach().cpu() for p in params], "optimizer": optimizer.state_dict(),
             "lr_scheduler": lr_scheduler.state_dict(), "losses": list(losses),
             "ema": ema.state_dict() if ema is not None else None}
    with open(path + ".tmp", "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the rename: a crash never leaves a torn newest one
    os.replace(path + ".tmp", path)
    for old in checkpoint_files(folder)[:-keep]:
        os.remove(old)
    return path


def restore(path: str, state: dict, params, optimizer, lr_scheduler, ema, device) -> tuple[int, list[float]]:
    """Loads ``state`` into the run's values, optimizer, schedule and EMA; returns (step, losses)."""
    if len(state["params"]) != len(params) or any(a.shape != b.shape for a, b in zip(state["params"], params)):
        raise ShiraError(f"checkpoint {path} was made for another adapter layout (mask, rank or targets differ)")
    with torch.no_grad():
        for p, saved in zip(params, state["params"]):
            p.copy_(saved.to(p.device))
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if ema is not None:
        if state.get("ema") is None:
            raise ShiraError(f"checkpoint {path} was made without --ema_decay; resume without it")
        ema.load_state_dict(state["ema"])
        ema.to(device)
    return int(state["step"]), [float(x) for x in state["losses"]]
