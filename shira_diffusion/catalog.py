"""The style catalogue: every style this installation knows, and the one owner of ``style.json``.

Two roots: the bundled styles (``styles/`` in the repository, read-only for users) and the user's
own (``$SHIRA_HOME/styles``, by default under the user's cache folder, created on demand). A style
is a folder ``<root>/<name>/`` holding ``style.json``, its adapter files
(``<name>.<base>.safetensors`` for SHiRA with the default mask, ``<name>.<base>.lora.safetensors``,
``<name>.<base>.<mask>.safetensors``), and optionally training images and a thumbnail.

``style.json`` keeps one entry per adapter file under ``files["<base>/<variant>"]``: how it was
trained and, for the bundled styles, its recommended guidance and weight with the measurements
they were chosen on. Writes are locked (``filelock``, on every OS) and atomic (a temporary file
renamed over the old one), so runs for two bases side by side and the app's threads never lose
each other's entries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
from pathlib import Path

from filelock import FileLock

from .core.adapter import recommended_setting
from .errors import ShiraError
from .files import write_atomically
from .style_record import (DEFAULT_VARIANT, RECORD_NAME, AdapterEntry, StyleRecord, StyleRecordError,
                           _read_values, _write_json_atomic, base_label, read_record, variant_suffix)

logger = logging.getLogger(__name__)

BUNDLED_ROOT = Path(__file__).resolve().parent.parent / "styles"
# In a mix of two or more, a style with an adapter on its own Struct slot uses it: styles on
# different slots share no weight entry, and on toy-sd they keep more of themselves in a mix than
# on the one mask every bundled default adapter shares (docs/fusion.md).
MIX_VARIANT = "shira-slot"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def shira_home() -> Path:
    """``$SHIRA_HOME``, else ``shira-diffusion`` in the user's cache folder (``$XDG_CACHE_HOME`` or
    ``~/.cache``): where the user's styles and the app's data live."""
    if os.environ.get("SHIRA_HOME"):
        return Path(os.environ["SHIRA_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "shira-diffusion"


def user_root() -> Path:
    return shira_home() / "styles"


def check_style_name(name: str) -> str:
    """A style name usable as a folder and file name on every OS, or a clear error."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ShiraError(f"style name {name!r}: use 1-64 lowercase letters, digits, '-' or '_', starting "
                         "with a letter or digit")
    return name


def sanitize_name(text: str) -> str:
    """A valid style name made from free text (an upload's file name, a title)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")[:64]
    return name or "style"


def bank_key(path: str | os.PathLike) -> str:
    """A ``StyleBank`` entry name for an adapter file, unique per file: its stem plus a hash of its
    resolved path. Two files that share a name (``a/frame.safetensors``, ``b/frame.safetensors``)
    never land on one entry."""
    resolved = os.path.realpath(path)
    stem = os.path.basename(resolved).split(".")[0]
    return f"{stem}@{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"


class StyleCatalog:
    """The bundled styles and the user's, by name. Names are unique across both roots: a user style
    may not take a bundled style's name."""

    def __init__(self, bundled_root: str | os.PathLike | None = None, user_root_: str | os.PathLike | None = None):
        self.bundled_root = Path(bundled_root) if bundled_root is not None else BUNDLED_ROOT
        self.user_root = Path(user_root_) if user_root_ is not None else user_root()

    # reading
    def _folders(self):
        for source, root in (("bundled", self.bundled_root), ("user", self.user_root)):
            if root.is_dir():
                for folder in sorted(root.iterdir()):
                    # A dot folder is an add being staged (or one that was killed): never a style.
                    if not folder.name.startswith(".") and (folder / RECORD_NAME).is_file():
                        yield source, folder

    def names(self) -> list[str]:
        return [folder.name for _, folder in self._folders()]

    def list(self, base: str | None = None, variant: str = DEFAULT_VARIANT) -> list[StyleRecord]:
        """Every style (with an adapter of ``variant`` for ``base``, when given). A style whose
        record is unreadable is skipped with a warning, so one bad folder never hides the rest."""
        records = []
        for source, folder in self._folders():
            try:
                record = read_record(folder, source)
            except ShiraError as exc:
                logger.warning("skipping style %s: %s", folder.name, exc)
                continue
            if base is None or record.has_adapter(base, variant):
                records.append(record)
        return records

    def folder(self, name: str) -> Path:
        """The folder of style ``name`` (bundled first), existing or not: new bundled styles are
        written there by ``shira styles build``."""
        for root in (self.bundled_root, self.user_root):
            if (root / name / RECORD_NAME).is_file():
                return root / name
        return self.bundled_root / name

    def __contains__(self, name: str) -> bool:
        return any(folder.name == name for _, folder in self._folders())

    def get(self, name: str) -> StyleRecord:
        for source, folder in self._folders():
            if folder.name == name:
                return read_record(folder, source)
        raise ShiraError(f"no style {name!r} (styles: {', '.join(self.names()) or 'none yet'})")

    def resolve_adapter(self, style: str, base: str, variant: str = DEFAULT_VARIANT) -> Path:
        """An adapter file for ``style``: a path as given, or a catalogue style's adapter for ``base``."""
        if os.path.isfile(style):
            return Path(style)
        if style not in self:
            looks_like_path = os.sep in style or style.endswith(".safetensors")
            raise ShiraError(f"no style {style!r}: " + ("no such file" if looks_like_path else
                             f"not a file, and not a style (styles: {', '.join(self.names()) or 'none yet'})"))
        record = self.get(style)
        path = record.adapter_path(base, variant)
        if not record.has_adapter(base, variant):
            have = ", ".join(record.bases(variant)) or "none"
            raise ShiraError(f"style {style!r} has no {variant} adapter for base {base!r} (bases it has: {have})")
        return path

    def resolve_mix(self, styles: list[str], base: str) -> list[Path]:
        """Adapter files for a mix of ``styles`` (names or paths) on ``base``: with two or more, each
        catalogue style's ``MIX_VARIANT`` adapter where it has one, else its default adapter."""
        files = []
        for style in styles:
            if len(styles) > 1 and not os.path.isfile(style) and style in self and \
                    self.get(style).has_adapter(base, MIX_VARIANT):
                files.append(self.get(style).adapter_path(base, MIX_VARIANT))
            else:
                files.append(self.resolve_adapter(style, base))
        return files

    def training_captions(self) -> set[str]:
        """Every caption any catalogued style trained on."""
        return set().union(*(r.training_captions() for r in self.list())) if self.names() else set()

    # writing
    def _lock(self, folder: Path) -> FileLock:
        # Beside the folder, not in it: ``remove`` deletes the folder while holding the lock.
        folder.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(folder.parent / f".{folder.name}.lock"))

    def update_entry(self, name: str, key: str, entry: dict, /, replace: bool = False, **fields) -> None:
        """Merge (or with ``replace``, set) one adapter entry ``files[key]`` of a style's record, and
        top-level ``fields``. Read just before writing, under the style's lock."""
        folder = self.folder(name)
        with self._lock(folder):
            folder.mkdir(parents=True, exist_ok=True)
            record_path = folder / RECORD_NAME
            values = _read_values(record_path) if record_path.is_file() else {}
            values.update(fields)
            files = values.setdefault("files", {})
            files[key] = entry if replace else {**files.get(key, {}), **entry}
            AdapterEntry.from_dict(files[key], str(record_path))  # refuse an entry readers would refuse
            _write_json_atomic(record_path, values)

    def add(self, name: str, adapter_file: str | os.PathLike, base: str, *, variant: str = DEFAULT_VARIANT,
            description: str = "", trigger: str = "", thumbnail: str | os.PathLike | None = None,
            images: str | os.PathLike | None = None, entry: dict | None = None, overwrite: bool = False) -> StyleRecord:
        """Add (a copy of) an adapter to the user's styles as ``name`` for ``base``; a style may hold
        adapters for several bases. ``thumbnail``: a PNG; ``images``: a folder of training images
        and captions to keep beside it. Refuses a bundled style's name, and an existing adapter for
        the same base unless ``overwrite``.

        All or nothing: a new style is made in a staging folder and appears with one rename; an
        adapter joining a style is named in ``style.json`` only once its file is whole, and what an
        add that fails wrote is deleted again. What a killed add left is swept by the next add or
        ``remove`` of that name."""
        check_style_name(name)
        base = base_label(base)
        key = f"{base}/{variant}"
        target = f"{name}.{base}{variant_suffix(variant)}"
        entry = {**recommended_setting(adapter_file), **(entry or {})}  # the self-check's choice, unless given
        AdapterEntry.from_dict({**entry, "file": target})  # refuse a bad entry before any change
        if (self.bundled_root / name / RECORD_NAME).is_file():
            raise ShiraError(f"{name!r} is a bundled style's name; choose another")
        folder = self.user_root / name
        fields = {"name": name, "description": description, "trigger": trigger}
        self._check_addable(name, base, variant, overwrite)  # a refusal changes nothing, not even the lock file
        with self._lock(folder):  # checked again under the lock: of two adds of one name, one wins
            self._sweep_staging(name)
            if self._check_addable(name, base, variant, overwrite) is not None:
                _sweep_temporaries(folder)
                _fill_style(folder, _read_values(folder / RECORD_NAME), key, target, adapter_file, fields,
                            thumbnail, images, entry)
            else:
                self._clear_leftover(folder)
                stage = self._new_stage(name)
                try:
                    _fill_style(stage, {}, key, target, adapter_file, fields, thumbnail, images, entry)
                    os.rename(stage, folder)
                finally:
                    shutil.rmtree(stage, ignore_errors=True)  # gone already, unless something failed
        logger.info("added style %s (%s adapter for %s) in %s", name, variant, base, folder)
        return self.get(name)

    def remove(self, name: str, force: bool = False) -> list[Path]:
        """Delete one of the user's styles (bundled styles are part of the installation), and what
        an unfinished add of it left; the paths deleted. A style whose ``style.json`` is unreadable
        is refused unless ``force``: it may be a style worth repairing."""
        check_style_name(name)  # the name becomes a path to delete
        if (self.bundled_root / name / RECORD_NAME).is_file():
            raise ShiraError(f"{name!r} is a bundled style; only your own styles can be removed")
        folder = self.user_root / name
        self._check_removable(name, force)  # a refusal changes nothing, not even the lock file
        with self._lock(folder):
            self._check_removable(name, force)
            removed = self._sweep_staging(name)
            if os.path.lexists(folder):
                if folder.is_dir() and not folder.is_symlink():
                    shutil.rmtree(folder)
                else:
                    folder.unlink()
                removed.append(folder)
        return removed

    # what an add leaves behind, and how it is cleaned
    def _check_addable(self, name: str, base: str, variant: str, overwrite: bool) -> StyleRecord | None:
        """The user style ``name`` (None if there is none yet), refused if its record is unreadable
        or it has an adapter for ``base`` already (unless ``overwrite``)."""
        folder = self.user_root / name
        if not (folder / RECORD_NAME).is_file():
            return None
        record = self._readable(name, folder)
        if record.has_adapter(base, variant) and not overwrite:
            raise ShiraError(f"style {name!r} already has a {variant} adapter for {base} "
                             f"({record.adapter_path(base, variant)}); remove it first or overwrite")
        return record

    def _check_removable(self, name: str, force: bool) -> None:
        folder = self.user_root / name
        if (folder / RECORD_NAME).is_file() and not force:
            self._readable(name, folder)
        if not os.path.lexists(folder) and not self._staging(name):
            raise ShiraError(f"no style {name!r}, and nothing an unfinished add of it left "
                             f"(styles: {', '.join(self.names()) or 'none yet'})")

    def _readable(self, name: str, folder: Path) -> StyleRecord:
        """The user style's record, or one line naming its file and the way out."""
        try:
            return read_record(folder, "user")
        except ShiraError as exc:
            raise StyleRecordError(f"{exc}; repair or delete that file, or delete the style with "
                                   f"`shira styles remove {name} --force`") from None

    def _new_stage(self, name: str) -> Path:
        # os.mkdir, not mkdtemp: a mkdtemp folder is private (0700) and would stay so once renamed.
        for _ in range(100):
            stage = self.user_root / f".{name}.adding-{secrets.token_hex(4)}"
            try:
                stage.mkdir()
                return stage
            except FileExistsError:
                continue
        raise OSError(f"cannot create a staging folder in {self.user_root}")

    def _staging(self, name: str) -> list[Path]:
        return sorted(self.user_root.glob(f".{name}.adding-*")) if self.user_root.is_dir() else []

    def _sweep_staging(self, name: str) -> list[Path]:
        """Delete the staging folders of adds of ``name`` that were killed. Called under the
        style's lock, so no add of ``name`` is running: every one found is dead."""
        stale = self._staging(name)
        for stage in stale:
            shutil.rmtree(stage, ignore_errors=True)
            logger.info("deleted %s, left by an add of %s that did not finish", stage, name)
        return stale

    def _clear_leftover(self, folder: Path) -> None:
        """A style folder without ``style.json`` (an earlier version's add that did not finish):
        deleted when it holds only what an add writes; otherwise refused, naming what is there."""
        if not os.path.lexists(folder):
            return
        foreign = [p.name for p in folder.iterdir() if not _written_by_add(folder.name, p)] \
            if folder.is_dir() and not folder.is_symlink() else [folder.name]
        if foreign:
            raise ShiraError(f"{folder} has no {RECORD_NAME} and holds files no add wrote ({', '.join(foreign[:3])}); "
                             f"move them away, or `shira styles remove {folder.name}` deletes the folder")
        shutil.rmtree(folder)
        logger.info("deleted %s, left by an add that did not finish", folder)


def _sweep_temporaries(folder: Path) -> None:
    # Under the style's lock every writer of its folder is done: a temporary (".<file>.<hex>.tmp",
    # write_atomically's) is what a killed copy or record write left.
    for temporary in folder.glob(".*.tmp"):
        if temporary.is_file():
            temporary.unlink()
            logger.info("deleted %s, left by a write that did not finish", temporary)


def _written_by_add(name: str, path: Path) -> bool:
    """Whether ``path``, in style ``name``'s folder, is something ``add`` writes: an adapter,
    the thumbnail, the images, or a temporary of those."""
    if path.name == "images":
        return path.is_dir()
    return path.is_file() and (path.name == "thumbnail.png" or path.name.endswith(".tmp")
                               or (path.name.startswith(f"{name}.") and path.name.endswith(".safetensors")))


def _fill_style(folder: Path, values: dict, key: str, target: str, adapter_file, fields: dict, thumbnail, images,
                entry: dict | None) -> None:
    """Copy an adapter (and thumbnail, images) into ``folder``, then name it in ``style.json``:
    the record never names a file that is not whole. On failure, deletes the files it created."""
    created = [folder / n for n in (target, "thumbnail.png", "images") if not (folder / n).exists()]
    try:
        _copy_atomic(adapter_file, folder / target)
        if thumbnail is not None:
            _copy_atomic(thumbnail, folder / "thumbnail.png")
            fields = {**fields, "thumbnail": "thumbnail.png"}
        if images is not None:
            shutil.copytree(images, folder / "images", dirs_exist_ok=True)
            fields = {**fields, "images": "images/"}
        values.update(fields)
        values.setdefault("files", {})[key] = {**(entry or {}), "file": target}
        _write_json_atomic(folder / RECORD_NAME, values)
    except BaseException:
        for path in created:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        raise


def _copy_atomic(source, target: Path) -> None:
    write_atomically(target, lambda temporary: shutil.copyfile(source, temporary))


def default_catalog() -> StyleCatalog:
    """The catalogue of this installation: ``BUNDLED_ROOT`` and ``$SHIRA_HOME/styles``, read now."""
    return StyleCatalog()
