"""Files written whole or not at all, with the user's permissions, and outputs checked before work.

Used by every writer of the package (adapters, the catalogue, training, transfer, the app): a crash
or a full disk midway leaves any earlier file as it was, and a file that should not be replaced is
refused before anything runs.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

from .errors import OutputExistsError, ShiraError


def write_atomically(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = True) -> None:
    """``write(temporary)`` writes a new file beside ``path``, which then replaces ``path`` in one
    rename: an error or a crash midway leaves the old file whole. Without ``overwrite`` an existing
    ``path`` (also one that appeared while writing) is refused and left alone."""
    shown = os.fspath(path)
    path = os.path.abspath(shown)
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(f"{shown} already exists; --overwrite replaces it")
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    temporary = create_temporary(folder, os.path.basename(path))
    mode = os.stat(temporary).st_mode
    try:
        write(temporary)
        os.chmod(temporary, mode)  # writers that replace the file (safetensors' save_file) leave it 0600
        if overwrite:
            os.replace(temporary, path)
            return
        try:
            os.link(temporary, path)  # fails if ``path`` appeared meanwhile: never replaces it
        except FileExistsError:
            raise OutputExistsError(f"{shown} already exists; --overwrite replaces it") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(path):
                raise OutputExistsError(f"{shown} already exists; --overwrite replaces it") from None
            os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def create_temporary(folder: str, name: str, suffix: str = ".tmp") -> str:
    """A new empty file in ``folder`` (mode 0666 less the umask, like any file the user creates; a
    ``tempfile.mkstemp`` file is private, 0600, and would stay so once renamed into place)."""
    for _ in range(100):
        temporary = os.path.join(folder, f".{name}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temporary
        except FileExistsError:
            continue
    raise OSError(f"cannot create a temporary file in {folder}")


def check_output_file(path: str | os.PathLike, overwrite: bool = False, what: str = "") -> None:
    """Refuse an output file before any work is done: one that exists (without ``overwrite``),
    a folder in its place, or a place where nothing can be written. ``what`` names it (a flag)."""
    shown = os.fspath(path)
    label = f"{what} {shown}" if what else shown
    if os.path.isdir(shown):
        raise ShiraError(f"{label} is a folder; give a file name")
    if os.path.lexists(shown) and not overwrite:
        raise OutputExistsError(f"{label} already exists; --overwrite replaces it")
    check_writable_folder(os.path.dirname(os.path.abspath(shown)), label)


def check_writable_folder(folder: str | os.PathLike, label: str = "") -> None:
    """Refuse a folder that cannot be made or written in, by trying: a probe file in the nearest
    folder that exists (permission bits say nothing for root or read-only file systems)."""
    folder = os.path.abspath(os.fspath(folder))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    label = label or folder
    if not os.path.isdir(existing):
        raise ShiraError(f"{label}: {existing} is a file, not a folder")
    try:
        os.unlink(create_temporary(existing, "shira-write-check"))
    except OSError as exc:
        raise ShiraError(f"{label}: cannot write in {existing} ({exc.strerror or exc})") from None
