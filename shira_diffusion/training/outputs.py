"""Where a run writes, the checks on it before training starts, and atomic writes.

A run writes the adapter ``X.safetensors`` and, next to it, ``X.loss.png``, ``X.json`` (its record),
``X.validation/``, ``X.checkpoints/``, for LoRA with kohya ``X.kohya.safetensors`` and with
``--discriminator`` ``X.discriminator.json``. Every file is
written to a temporary file in the same folder and moved into place with ``os.replace``: a reader
never sees half a file, and an existing file is replaced only once the new one is complete.

Before any work, a run also checks what would otherwise fail only at the end: every file name it
writes, with its temporary name, fits the file system's limit, and the disk has room.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager

from ..files import create_temporary
from ..errors import ShiraError


def output_paths(output: str) -> dict[str, str]:
    """Where a run writes: the adapter, its loss curve, validation images, checkpoints, a record, a
    kohya copy, a discriminator (JSON, not .safetensors: folders of adapters are scanned for those)."""
    stem = output[: -len(".safetensors")]
    return {"adapter": output, "loss_curve": stem + ".loss.png", "validation": stem + ".validation",
            "checkpoints": stem + ".checkpoints", "record": stem + ".json", "kohya": stem + ".kohya.safetensors",
            "discriminator": stem + ".discriminator.json", "detector": stem + ".detector.json"}


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


# ``create_temporary`` names a file ".NAME.<8 hex>.tmp" beside it: the name plus this many bytes.
TEMPORARY_EXTRA = len("..12345678.tmp")
FREE_MARGIN = 16 * 2**20  # room for a run's small files (record, loss curve, report images) and slack


def name_max(folder: str) -> int:
    """The longest file name (bytes) ``folder``'s file system takes; 255 where it does not say."""
    try:
        return os.pathconf(_existing(folder), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_name_lengths(output: str, written: list[str], label: str) -> None:
    """Refuses an ``output`` whose name, or a name derived from it (``written``: the files beside it),
    with the temporary name each is first written as, is longer than the file system takes."""
    name = os.path.basename(output)
    longest = max(len(os.fsencode(os.path.basename(p))) for p in [output, *written])
    limit = name_max(os.path.dirname(os.path.abspath(output)))
    if longest + TEMPORARY_EXTRA > limit:
        extra = longest - len(os.fsencode(name)) + TEMPORARY_EXTRA
        raise ShiraError(f"{label}: the file name {name[:24]}... is too long ({len(os.fsencode(name))} bytes; at "
                         f"most {limit - extra} here: a name may hold {limit} bytes and the files written beside "
                         f"it, with their temporary names, add {extra})")


def check_free_space(path: str, needed: int, label: str) -> None:
    """Refuses a place whose disk has less than ``needed`` bytes free (checked before any work)."""
    folder = _existing(os.path.dirname(os.path.abspath(path)))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # a file system that does not say: the write itself will tell
    if free < needed:
        raise ShiraError(f"{label}: not enough free space in {folder} ({_size(free)} free, about {_size(needed)} "
                         "needed); free some space or choose another place")


def _existing(folder: str) -> str:
    """``folder``, or the nearest folder above it that exists (one not yet made)."""
    folder = os.path.abspath(folder)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n} bytes"


@contextmanager
def atomic_path(path: str):
    """A temporary path in ``path``'s folder, ending like ``path``; moved onto ``path`` when the block
    completes, removed when it fails."""
    folder, name = os.path.split(os.path.abspath(path))
    base, dot, suffix = name.partition(".")
    temporary = create_temporary(folder, base, suffix=f".tmp.{suffix}" if dot else ".tmp")
    mode = os.stat(temporary).st_mode
    try:
        yield temporary
        os.chmod(temporary, mode)  # writers that replace the file (safetensors' save_file) leave it 0600
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
