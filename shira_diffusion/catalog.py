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
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from .core.adapter import write_atomically
from .errors import ShiraError

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
        return self.adapter_path(base, variant).is_file()

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


def read_record(folder: Path, source: str) -> StyleRecord:
    """A style folder's ``style.json`` as a ``StyleRecord`` (a clear error if it is malformed)."""
    path = Path(folder) / RECORD_NAME
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShiraError(f"{path}: no such style record") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShiraError(f"{path}: not a readable style record ({exc})") from None
    if not isinstance(values, dict):
        raise ShiraError(f"{path}: a style record must be a JSON object")
    files = values.pop("files", {}) or {}
    if not isinstance(files, dict):
        raise ShiraError(f"{path}: 'files' must be an object")
    top = {k: values.pop(k) for k in ("description", "trigger", "look", "images", "thumbnail") if k in values}
    for key in ("description", "trigger"):
        if not isinstance(top.get(key, ""), str):
            raise ShiraError(f"{path}: '{key}' must be a string")
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
                    if (folder / RECORD_NAME).is_file():
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
        if not path.is_file():
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
            values = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
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
        the same base unless ``overwrite``."""
        check_style_name(name)
        base = base_label(base)
        if (self.bundled_root / name / RECORD_NAME).is_file():
            raise ShiraError(f"{name!r} is a bundled style's name; choose another")
        folder = self.user_root / name
        target = folder / f"{name}.{base}{variant_suffix(variant)}"
        if target.exists() and not overwrite:
            raise ShiraError(f"style {name!r} already has a {variant} adapter for {base} ({target}); "
                             "remove it first or overwrite")
        with self._lock(folder):
            folder.mkdir(parents=True, exist_ok=True)
            _copy_atomic(adapter_file, target)
            fields = {"name": name, "description": description, "trigger": trigger}
            if thumbnail is not None:
                _copy_atomic(thumbnail, folder / "thumbnail.png")
                fields["thumbnail"] = "thumbnail.png"
            if images is not None:
                shutil.copytree(images, folder / "images", dirs_exist_ok=True)
                fields["images"] = "images/"
            record_path = folder / RECORD_NAME
            values = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
            values.update(fields)
            values.setdefault("files", {})[f"{base}/{variant}"] = {**(entry or {}), "file": target.name}
            _write_json_atomic(record_path, values)
        logger.info("added style %s (%s adapter for %s) in %s", name, variant, base, folder)
        return self.get(name)

    def remove(self, name: str) -> None:
        """Delete one of the user's styles (bundled styles are part of the installation)."""
        record = self.get(name)
        if record.source != "user":
            raise ShiraError(f"{name!r} is a bundled style; only your own styles can be removed")
        with self._lock(record.folder):
            shutil.rmtree(record.folder)


def _copy_atomic(source, target: Path) -> None:
    write_atomically(target, lambda temporary: shutil.copyfile(source, temporary))


def default_catalog() -> StyleCatalog:
    """The catalogue of this installation: ``BUNDLED_ROOT`` and ``$SHIRA_HOME/styles``, read now."""
    return StyleCatalog()
