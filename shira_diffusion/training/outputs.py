"""Where a run writes, the checks on it before training starts, and atomic writes.

A run writes the adapter ``X.safetensors`` and, next to it, ``X.loss.png``, ``X.json`` (its record),
``X.validation/``, ``X.checkpoints/``, for LoRA with kohya ``X.kohya.safetensors`` and with
``--discriminator`` ``X.discriminator.json``. Every file is
written to a temporary file in the same folder and moved into place with ``os.replace``: a reader
never sees half a file, and an existing file is replaced only once the new one is complete.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

from ..core.adapter import create_temporary
from ..errors import ShiraError


def output_paths(output: str) -> dict[str, str]:
    """Where a run writes: the adapter, its loss curve, validation images, checkpoints, a record, a
    kohya copy, a discriminator (JSON, not .safetensors: folders of adapters are scanned for those)."""
    stem = output[: -len(".safetensors")]
    return {"adapter": output, "loss_curve": stem + ".loss.png", "validation": stem + ".validation",
            "checkpoints": stem + ".checkpoints", "record": stem + ".json", "kohya": stem + ".kohya.safetensors",
            "discriminator": stem + ".discriminator.json"}


def stem(path: str) -> str:
    return os.path.basename(path)[: -len(".safetensors")]


def check_output(output: str, overwrite: bool) -> None:
    """The output's folder exists (made here) and takes files, and the output is new unless
    ``overwrite``: checked before training, so a run never trains for nothing."""
    if os.path.isdir(output):
        raise ShiraError(f"--output {output} is a folder; give a .safetensors file path")
    if os.path.exists(output) and not overwrite:
        raise ShiraError(f"{output} already exists; pass --overwrite to replace it (or choose another --output)")
    folder = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ShiraError(f"cannot write the output folder {folder}: {exc.strerror or exc}") from None


@contextmanager
def atomic_path(path: str):
    """A temporary path in ``path``'s folder, ending like ``path``; moved onto ``path`` when the block
    completes, removed when it fails."""
    folder, name = os.path.split(os.path.abspath(path))
    base, dot, suffix = name.partition(".")
    temporary = create_temporary(folder, base, suffix=f".tmp.{suffix}" if dot else ".tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
