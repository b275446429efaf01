"""A style's record: its ``style.json`` as typed values (``StyleRecord``, one ``AdapterEntry`` per
adapter file), read with one clear line for anything malformed and written atomically, and how
adapter files and bases are named in it. ``catalog.StyleCatalog`` is the one caller that writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ShiraError
from .files import write_atomically

RECORD_NAME = "style.json"
DEFAULT_VARIANT = "shira"


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
