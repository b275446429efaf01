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

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from .core.adapter import write_atomically
from .errors import ArchitectureMismatchError, ShiraError

logger = logging.getLogger(__name__)

BUNDLED_ROOT = Path(__file__).resolve().parent.parent / "styles"
RECORD_NAME = "style.json"
DEFAULT_VARIANT = "shira"
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


def variant_suffix(variant: str) -> str:
    """File suffix of an adapter variant: ``shira`` (default mask), ``shira-<mask>`` or ``lora``."""
    if variant == DEFAULT_VARIANT:
        return ".safetensors"
    if variant == "lora":
        return ".lora.safetensors"
    kind, _, mask = variant.partition("-")
    if kind != "shira" or not mask:
        raise ShiraError(f"unknown adapter variant {variant!r} (shira, shira-<mask> or lora)")
    return f".{mask}.safetensors"


def base_label(base: str | os.PathLike) -> str:
    """How the catalogue names a base in file names and ``style.json`` keys: a bundled name as is,
    a local folder or file by its name (``/models/toy-sd`` -> ``toy-sd``), a Hub id with ``--``
    for ``/`` (as the Hub cache does)."""
    text = str(base).rstrip("/\\")
    if os.path.exists(text):
        return os.path.basename(os.path.normpath(text))
    return text.replace("/", "--")


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


def check_adapter_for_base(adapter, base: str | os.PathLike) -> str:
    """Refuse an adapter (a ``SparseAdapter``) for a base that does not exist here, or that it was
    not made for, without loading the base: its family from the pipeline's ``model_index.json``
    and, where its UNet weights are safetensors, every adapted tensor's shape from their header,
    through ``SparseAdapter.check_compatible`` (what the app runs on a loaded UNet). The family."""
    from .bases import BUNDLED, PIPELINE_FAMILIES, _cached_hub_folder, resolve

    source = resolve(base)  # an unknown name: one line listing what a base can be
    if source.kind == "single-file":
        family = _single_file_family(source.location)
        _check_against(adapter, _own_shapes(adapter), family, base)
        return family
    folder = _cached_hub_folder(source.location) if source.kind == "hub" else source.location
    if folder is None or not os.path.isdir(folder):
        where = "the local Hugging Face cache" if source.kind == "hub" else folder
        raise ShiraError(f"base {str(base)!r} is not in {where}: a style can only be added for a base this "
                         f"machine has (bundled: {', '.join(BUNDLED)})")
    index = Path(folder) / "model_index.json"
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise ShiraError(f"{index}: not a readable pipeline index ({exc})") from None
    if class_name not in PIPELINE_FAMILIES:
        raise ShiraError(f"{folder} holds a {class_name or 'unknown'} pipeline; shira-diffusion needs SD or SDXL")
    family = PIPELINE_FAMILIES[class_name]
    _check_against(adapter, _unet_shapes(Path(folder) / "unet") or _own_shapes(adapter), family, base)
    return family


def _check_against(adapter, weights, family: str, base) -> None:
    try:
        adapter.check_compatible(weights, family)
    except ArchitectureMismatchError as exc:
        raise ArchitectureMismatchError(f"base {str(base)!r}: {exc}") from None


class _Shaped:
    """A tensor's shape without the tensor: what ``check_compatible`` reads of a weight."""

    def __init__(self, shape):
        self.shape = shape


def _own_shapes(adapter) -> dict:
    # Where the base's shapes cannot be read without loading it, the family alone is checked.
    return {name: _Shaped(shape) for name, shape in adapter.shapes.items()}


def _unet_shapes(unet: Path) -> dict | None:
    """The UNet's tensor shapes from its safetensors header(s) (one file, or an index of shards);
    None where the weights are in another format."""
    from safetensors import safe_open

    index = unet / "diffusion_pytorch_model.safetensors.index.json"
    single = unet / "diffusion_pytorch_model.safetensors"
    try:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else \
            [single.name] if single.is_file() else []
        shapes = {}
        for name in files:
            with safe_open(str(unet / name), "pt") as handle:
                shapes.update({k: _Shaped(tuple(handle.get_slice(k).get_shape())) for k in handle.keys()})
    except Exception as exc:  # a header safetensors cannot read: the loader would fail on it too
        raise ShiraError(f"{unet}: the UNet's weights cannot be read ({type(exc).__name__}: {exc})") from None
    return shapes or None


def _single_file_family(path: str) -> str:
    from safetensors import safe_open

    if not path.endswith(".safetensors"):
        raise ShiraError(f"{path}: the family of a .ckpt base cannot be told without loading it; add the style "
                         "for the base's diffusers folder, or a .safetensors checkpoint")
    try:
        with safe_open(path, "pt") as handle:
            return "sdxl" if any(k.startswith("conditioner.embedders.1") for k in handle.keys()) else "sd"
    except Exception as exc:
        raise ShiraError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


@dataclass
class AdapterEntry:
    """One adapter file's entry in ``style.json``. Fields not named here (validation measurements,
    retrain trials) are kept as they are in ``measurements``."""

    file: str
    mask: str | None = None
    params: int | None = None
    seconds: float | None = None
    steps: int | None = None
    final_loss: float | None = None
    recipe: dict = field(default_factory=dict)
    guidance: float | None = None  # recommended classifier-free guidance, where measured
    weight: float | None = None  # recommended weight, where measured
    measurements: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict, where: str = "style.json") -> AdapterEntry:
        if not isinstance(values, dict) or not isinstance(values.get("file"), str):
            raise ShiraError(f"{where}: an adapter entry needs a 'file' name")
        named = {f.name for f in dataclasses.fields(cls)} - {"measurements"}
        entry = cls(**{k: v for k, v in values.items() if k in named},
                    measurements={k: v for k, v in values.items() if k not in named})
        for key in ("guidance", "weight", "seconds", "final_loss"):
            value = getattr(entry, key)
            if value is not None and not isinstance(value, (int, float)):
                raise ShiraError(f"{where}: '{key}' of {entry.file} must be a number, got {value!r}")
        return entry

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "measurements"}
        values = {k: v for k, v in values.items() if v is not None or k in ("mask",)}
        return {**values, **self.measurements}


@dataclass
class StyleRecord:
    """A style: its ``style.json`` and where it lives."""

    name: str
    folder: Path
    source: str  # "bundled" or "user"
    description: str = ""
    trigger: str = ""
    look: str | None = None  # a toy-world look, for the bundled styles (their strength is measurable)
    images: str | None = None  # training images, relative to the folder
    thumbnail: str | None = None
    files: dict[str, AdapterEntry] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def record_path(self) -> Path:
        return self.folder / RECORD_NAME

    def adapter_path(self, base: str, variant: str = DEFAULT_VARIANT) -> Path:
        """Where this style's adapter for ``base`` is (or would be): the entry's file, else the
        naming convention."""
        base = base_label(base)
        entry = self.files.get(f"{base}/{variant}")
        name = entry.file if entry else f"{self.name}.{base}{variant_suffix(variant)}"
        return self.folder / name

    def has_adapter(self, base: str, variant: str = DEFAULT_VARIANT) -> bool:
        # style.json is the one source of truth: a file it does not name (left by an add that
        # never finished) is no adapter, and is neither listed nor loaded.
        return self.entry(base, variant) is not None and self.adapter_path(base, variant).is_file()

    def entry(self, base: str, variant: str = DEFAULT_VARIANT) -> AdapterEntry | None:
        return self.files.get(f"{base_label(base)}/{variant}")

    def bases(self, variant: str = DEFAULT_VARIANT) -> list[str]:
        """The bases this style has an adapter of ``variant`` for."""
        return sorted(key.rpartition("/")[0] for key in self.files
                      if key.rpartition("/")[2] == variant and self.adapter_path(key.rpartition("/")[0], variant).is_file())

    def thumbnail_path(self) -> Path | None:
        path = self.folder / self.thumbnail if self.thumbnail else None
        return path if path is not None and path.is_file() else None

    def training_captions(self) -> set[str]:
        """The captions of its training images (without trigger words), where they are kept."""
        folder = self.folder / (self.images or "images")
        return {p.read_text(encoding="utf-8").strip() for p in folder.glob("*.txt")} if folder.is_dir() else set()

    def to_dict(self) -> dict:
        top = {"name": self.name, "description": self.description, "trigger": self.trigger, "look": self.look,
               "images": self.images, "thumbnail": self.thumbnail}
        return {**{k: v for k, v in top.items() if v is not None}, **self.extra,
                "files": {k: e.to_dict() for k, e in self.files.items()}}


class StyleRecordError(ShiraError):
    """A style's ``style.json`` is unreadable or malformed."""


def _read_values(path: Path) -> dict:
    """The JSON object in a ``style.json``, or one clear line naming the file."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StyleRecordError(f"{path}: no such style record") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StyleRecordError(f"{path}: not a readable style record ({exc})") from None
    if not isinstance(values, dict):
        raise StyleRecordError(f"{path}: a style record must be a JSON object")
    return values


def read_record(folder: Path, source: str) -> StyleRecord:
    """A style folder's ``style.json`` as a ``StyleRecord`` (a clear error if it is malformed)."""
    path = Path(folder) / RECORD_NAME
    values = _read_values(path)
    files = values.pop("files", {}) or {}
    if not isinstance(files, dict):
        raise StyleRecordError(f"{path}: 'files' must be an object")
    top = {k: values.pop(k) for k in ("description", "trigger", "look", "images", "thumbnail") if k in values}
    for key in ("description", "trigger"):
        if not isinstance(top.get(key, ""), str):
            raise StyleRecordError(f"{path}: '{key}' must be a string")
    values.pop("name", None)  # the folder's name is the style's name
    return StyleRecord(name=Path(folder).name, folder=Path(folder), source=source, **top,
                       files={k: AdapterEntry.from_dict(v, str(path)) for k, v in files.items()}, extra=values)


def _write_json_atomic(path: Path, values: dict) -> None:
    # write_atomically, not mkstemp: a mkstemp file is private (0600), and style.json is shared.
    write_atomically(path, lambda temporary: Path(temporary).write_text(json.dumps(values, indent=1) + "\n",
                                                                         encoding="utf-8"))


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


def recommended_setting(adapter_file: str | os.PathLike) -> dict:
    """``{"guidance", "weight"}`` the self-check after training stored in an adapter file's header
    (``recommended``), or {} (none, or not a readable safetensors file: the adapter's own checks say why)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(adapter_file), framework="pt") as handle:
            value = json.loads((handle.metadata() or {}).get("recommended") or "null")
    except Exception:  # unreadable or not JSON: nothing recommended
        return {}
    if not isinstance(value, dict):
        return {}
    setting = {k: value[k] for k in ("guidance", "weight") if type(value.get(k)) in (int, float)}
    return setting if len(setting) == 2 and all(math.isfinite(v) for v in setting.values()) else {}


def default_catalog() -> StyleCatalog:
    """The catalogue of this installation: ``BUNDLED_ROOT`` and ``$SHIRA_HOME/styles``, read now."""
    return StyleCatalog()
