"""SparseAdapter: a SHiRA adapter as sorted flat indices + values per weight tensor.

File format (one ``.safetensors`` file):
- for each adapted parameter ``P`` (named as in ``unet.named_parameters()``):
  ``P.shira_indices`` (int32, 1-D, strictly increasing flat indices into ``P``) and
  ``P.shira_values`` (float16 / bfloat16 / float32, same length);
- header metadata (strings): ``format``, ``format_version``, ``base_arch``, ``base_fingerprint``
  (hash of the adapted tensors' names and shapes), ``shapes`` (JSON), ``mask``, ``trigger``,
  ``name``, ``description``, ``recipe`` (JSON).

Loading validates everything before returning, so nothing is ever applied from a bad file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .architecture import FAMILIES, shape_fingerprint
from ..errors import AdapterFileError, ArchitectureMismatchError, ShiraError
from ..files import write_atomically

FORMAT_NAME = "shira-diffusion/sparse-adapter"
FORMAT_VERSION = 1
# Version 2: a Struct adapter stores its mask as a description (``mask_spec``: strategy, slot,
# entries per tensor) instead of its indices, which are rebuilt on load: the file holds values
# only, no larger than a LoRA's at equal parameter count. Files with indices stay version 1.
SPEC_FORMAT_VERSION = 2
INDICES_SUFFIX = ".shira_indices"
VALUES_SUFFIX = ".shira_values"
VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_INT32 = 2**31 - 1


@dataclass
class SparseAdapter:
    """Per-tensor sparse deltas plus what is needed to check and describe them.

    ``indices[name]`` are int32 flat indices into a tensor of shape ``shapes[name]``, strictly
    increasing; ``values[name]`` are the deltas at those indices. ``base_arch`` is the UNet family
    (``"sd"`` or ``"sdxl"``).
    """

    indices: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    base_arch: str
    mask: str = "unknown"
    trigger: str | None = None
    name: str | None = None
    description: str = ""
    recipe: dict = field(default_factory=dict)
    # {"strategy": "struct", "slot": int | None, "sizes": {tensor: entries}}: the mask rebuilt from
    # the shapes alone. Set (and checked against the indices) by ``with_mask_spec``.
    mask_spec: dict | None = None
    # {"guidance", "weight", "strength", "content", ...}: the setting the self-check after training
    # chose (``quality.self_check``); ``shira generate`` and the app use it for this file.
    recommended: dict | None = None

    def __post_init__(self):
        self.shapes = {k: tuple(int(d) for d in v) for k, v in self.shapes.items()}
        self.validate()

    # ---------------------------------------------------------------- properties
    @property
    def fingerprint(self) -> str:
        return shape_fingerprint(self.shapes)

    @property
    def num_params(self) -> int:
        return sum(int(v.numel()) for v in self.values.values())

    @property
    def density(self) -> float:
        total = sum(math.prod(s) for s in self.shapes.values())
        return self.num_params / total if total else 0.0

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.values.values())).dtype

    # ---------------------------------------------------------------- checks
    def validate(self, source: str = "adapter", check_indices: bool = True, check_values: bool = True) -> None:
        """Raise AdapterFileError naming the first problem found; return None if all is well.

        A StyleBank skips the two scans it does better itself: ``check_indices=False`` when the
        indices equal a mask it already holds (valid by construction), ``check_values=False``
        when it checks finiteness once over all values gathered into its own buffer.
        """
        if self.base_arch not in FAMILIES:
            raise AdapterFileError(f"{source}: unknown base_arch {self.base_arch!r} (expected one of {FAMILIES})")
        names = set(self.shapes)
        for label, keys in (("indices", set(self.indices)), ("values", set(self.values))):
            if missing := sorted(names - keys):
                raise AdapterFileError(f"{source}: missing {label} for tensor {missing[0]!r}")
            if extra := sorted(keys - names):
                raise AdapterFileError(f"{source}: unexpected {label} key {extra[0]!r} (no shape recorded for it)")
        if not names:
            raise AdapterFileError(f"{source}: the adapter holds no tensors")
        for name in sorted(names):
            _check_tensor(
                source, name, self.indices[name], self.values[name], self.shapes[name], check_indices, check_values
            )

    def check_compatible(self, weights: Mapping[str, torch.Tensor], family: str) -> None:
        """Raise ArchitectureMismatchError unless every adapted tensor exists in ``weights`` with its shape."""
        label = self.name or "adapter"
        if self.base_arch != family:
            raise ArchitectureMismatchError(
                f"{label} was made for an {self.base_arch.upper()}-family UNet, this UNet is {family.upper()}-family"
            )
        for name in sorted(self.shapes):
            if name not in weights:
                raise ArchitectureMismatchError(
                    f"{label}: tensor {name!r} does not exist in this UNet (adapter fingerprint {self.fingerprint})"
                )
            actual = tuple(weights[name].shape)
            if actual != self.shapes[name]:
                raise ArchitectureMismatchError(
                    f"{label}: tensor {name!r} has shape {list(self.shapes[name])} in the adapter "
                    f"but {list(actual)} in this UNet"
                )

    # ---------------------------------------------------------------- conversions
    def delta(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense delta of one tensor (for inspection and tests; the bank never builds it)."""
        dense = torch.zeros(math.prod(self.shapes[name]), dtype=dtype)
        dense[self.indices[name].long()] = self.values[name].to(dtype)
        return dense.view(self.shapes[name])

    def to(self, dtype: torch.dtype) -> "SparseAdapter":
        if dtype not in VALUE_DTYPES:
            raise AdapterFileError(f"values dtype must be one of {VALUE_DTYPES}, got {dtype}")
        return SparseAdapter(
            indices=dict(self.indices),
            values={k: v.to(dtype) for k, v in self.values.items()},
            shapes=dict(self.shapes),
            **self._describe(),
        )

    def header_only(self, name: str | None = None) -> "SparseAdapter":
        """A copy with the metadata and shapes but no tensors (not a valid adapter on its own):
        what a StyleBank keeps once it holds the values in its own layout."""
        header = SparseAdapter.__new__(SparseAdapter)
        header.__dict__.update(self.__dict__, indices={}, values={}, recipe=dict(self.recipe))
        header.name = name or self.name
        return header

    def with_mask_spec(self, slot: int | None = None) -> "SparseAdapter":
        """This adapter, saved with its Struct mask described rather than listed (format version 2),
        if its indices are exactly the Struct mask (on ``slot``) of each tensor's size; else unchanged."""
        from .masks import matrix_shape

        sizes = {n: int(len(i)) for n, i in self.indices.items()}
        first = next(iter(sizes))
        rank = sizes[first] // max(1, sum(matrix_shape(self.shapes[first])))
        if rank >= 1 and all(size == rank * sum(matrix_shape(self.shapes[n])) for n, size in sizes.items()):
            spec = {"strategy": "struct", "slot": slot, "rank": rank}  # on every tensor the file holds values of
        else:  # sized by density: each tensor's count
            spec = {"strategy": "struct", "slot": slot, "sizes": sizes}
        try:
            rebuilt = _indices_from_spec(spec, self.shapes, tensors=list(self.indices))
        except (ShiraError, KeyError):
            return self
        if any(not torch.equal(rebuilt[n], self.indices[n].to(torch.int32)) for n in self.indices):
            return self
        self.mask_spec = spec
        return self

    def _describe(self) -> dict:
        return dict(
            base_arch=self.base_arch,
            mask=self.mask,
            trigger=self.trigger,
            name=self.name,
            description=self.description,
            recipe=dict(self.recipe),
            recommended=dict(self.recommended) if self.recommended else None,
        )

    # ---------------------------------------------------------------- I/O
    def metadata(self) -> dict[str, str]:
        spec = {"mask_spec": json.dumps(self.mask_spec, sort_keys=True)} if self.mask_spec else {}
        if self.recommended:
            spec["recommended"] = json.dumps(self.recommended, sort_keys=True)
        return {
            "format": FORMAT_NAME,
            "format_version": str(SPEC_FORMAT_VERSION if self.mask_spec else FORMAT_VERSION),
            **spec,
            "base_arch": self.base_arch,
            "base_fingerprint": self.fingerprint,
            "shapes": json.dumps({k: list(v) for k, v in sorted(self.shapes.items())}),
            "mask": self.mask,
            "density": f"{self.density:.6g}",
            "num_params": str(self.num_params),
            "trigger": self.trigger or "",
            "name": self.name or "",
            "description": self.description,
            "recipe": json.dumps(self.recipe, sort_keys=True),
        }

    def save(self, path: str | os.PathLike, overwrite: bool = True) -> None:
        """Write the adapter file atomically (a temporary file beside it, then one rename): an
        error or a crash leaves any earlier file as it was. ``overwrite=False`` refuses an
        existing ``path`` with ``OutputExistsError``."""
        tensors = {}
        for name in self.shapes:
            if not self.mask_spec:  # a described mask is rebuilt on load: no indices stored
                tensors[name + INDICES_SUFFIX] = self.indices[name].to(torch.int32).contiguous()
            tensors[name + VALUES_SUFFIX] = self.values[name].contiguous()
        metadata = self.metadata()
        write_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=metadata), overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, validate: bool = True) -> "SparseAdapter":
        """Read and fully validate an adapter file.

        ``validate=False`` checks only the header; the caller must then call ``validate`` (as
        ``StyleBank.load`` does, after comparing the indices with the masks it already holds).
        """
        path = str(path)
        if not os.path.isfile(path):
            raise AdapterFileError(f"{path}: " + ("a folder, not an adapter file" if os.path.isdir(path) else "no such file"))
        try:
            open(path, "rb").close()
        except OSError as exc:
            raise AdapterFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
        try:
            with safe_open(path, framework="pt") as handle:
                meta = handle.metadata() or {}
                _check_header(path, meta)
                keys = list(handle.keys())
                _check_keys(path, keys)
                tensors = {k: handle.get_tensor(k) for k in keys}
        except AdapterFileError:
            raise
        except Exception as exc:  # safetensors raises its own error types, and OSError for short files
            raise AdapterFileError(f"{path}: not a valid safetensors file ({exc})") from None
        shapes = _header_json(path, meta, "shapes", "{}")
        recipe = _header_json(path, meta, "recipe", "{}")
        if not isinstance(recipe, dict):
            raise AdapterFileError(f"{path}: header field 'recipe' must be a JSON object, got {_json_type(recipe)}")
        _check_shapes_field(path, shapes)
        indices = {k[: -len(INDICES_SUFFIX)]: v for k, v in tensors.items() if k.endswith(INDICES_SUFFIX)}
        values = {k[: -len(VALUES_SUFFIX)]: v for k, v in tensors.items() if k.endswith(VALUES_SUFFIX)}
        spec = None
        if meta.get("format_version") == str(SPEC_FORMAT_VERSION):
            spec = _header_json(path, meta, "mask_spec", "null")
            if indices:
                raise AdapterFileError(f"{path}: a version-2 file describes its mask; it may not also list indices")
            indices = _indices_from_spec(spec, {k: tuple(v) for k, v in shapes.items()}, path, tensors=list(values),
                                         counts={k: int(v.numel()) for k, v in values.items()})
        adapter = cls.__new__(cls)
        adapter.indices, adapter.values = indices, values
        adapter.shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
        adapter.base_arch = meta.get("base_arch", "")
        adapter.mask = meta.get("mask") or "unknown"
        adapter.trigger = meta.get("trigger") or None
        adapter.name = meta.get("name") or os.path.splitext(os.path.basename(path))[0]
        adapter.description = meta.get("description", "")
        adapter.recipe = recipe
        adapter.mask_spec = spec
        adapter.recommended = _recommended_field(path, meta)
        if validate:
            adapter.validate(source=path)
        if meta.get("base_fingerprint") and meta["base_fingerprint"] != adapter.fingerprint:
            raise AdapterFileError(
                f"{path}: header fingerprint {meta['base_fingerprint']} does not match its shapes "
                f"({adapter.fingerprint}); the file was edited or truncated"
            )
        return adapter

    def __repr__(self) -> str:
        return (
            f"SparseAdapter(name={self.name!r}, base_arch={self.base_arch!r}, mask={self.mask!r}, "
            f"tensors={len(self.shapes)}, params={self.num_params}, density={self.density:.4%}, "
            f"dtype={self.dtype if self.values else None}, trigger={self.trigger!r})"
        )


def _check_header(path: str, meta: Mapping[str, str]) -> None:
    if meta.get("format") != FORMAT_NAME:
        found = meta.get("format")
        hint = "" if found is None else f" (format {found!r})"
        raise AdapterFileError(f"{path}: not a shira-diffusion adapter{hint}; header has no format {FORMAT_NAME!r}")
    version = meta.get("format_version", "")
    if version not in (str(FORMAT_VERSION), str(SPEC_FORMAT_VERSION)):
        raise AdapterFileError(
            f"{path}: unknown format_version {version!r}; this shira-diffusion reads versions "
            f"{FORMAT_VERSION} and {SPEC_FORMAT_VERSION}"
        )
    if "shapes" not in meta:
        raise AdapterFileError(f"{path}: header lacks the 'shapes' entry")


def _header_json(path: str, meta: Mapping[str, str], field: str, default: str):
    try:
        return json.loads(meta.get(field) or default)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise AdapterFileError(f"{path}: header field {field!r} is not valid JSON ({exc})") from None


def _recommended_field(path: str, meta: Mapping[str, str]) -> dict | None:
    """The header's ``recommended`` setting, checked: a finite guidance in [0, 100] and weight in [-10, 10]."""
    if not meta.get("recommended"):
        return None
    value = _header_json(path, meta, "recommended", "null")
    ok = isinstance(value, dict) and all(
        type(value.get(key)) in (int, float) and math.isfinite(value[key]) and low <= value[key] <= high
        for key, low, high in (("guidance", 0, 100), ("weight", -10, 10)))
    if not ok:
        raise AdapterFileError(f"{path}: header field 'recommended' must hold a guidance (0-100) and a weight "
                               "(-10 to 10)")
    return value


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _check_shapes_field(path: str, shapes) -> None:
    """``shapes`` must be {tensor name: [positive int, ...]}: anything else names the file and field."""
    if not isinstance(shapes, dict):
        raise AdapterFileError(f"{path}: header field 'shapes' must be a JSON object of tensor name to shape, "
                               f"got {_json_type(shapes)}")
    for name, shape in shapes.items():
        if not isinstance(shape, list) or not all(type(d) is int and d > 0 for d in shape):
            raise AdapterFileError(f"{path}: header field 'shapes': tensor {name!r} has shape {json.dumps(shape)[:80]}, "
                                   "expected a list of positive integers")
        if math.prod(shape) > MAX_INT32:
            raise AdapterFileError(f"{path}: header field 'shapes': tensor {name!r} has {math.prod(shape)} elements, "
                                   "more than int32 flat indices address")


def _indices_from_spec(spec, shapes: Mapping[str, tuple], path: str = "adapter",
                       tensors: list[str] | None = None,
                       counts: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """The int32 indices a ``mask_spec`` describes: per-tensor ``sizes``, or a ``rank`` (r * (rows +
    cols) entries) on each of ``tensors`` (those the file holds values of).

    With ``counts`` (the stored values per tensor, as in a file being loaded) every size the header
    claims is checked against them, and the work of rebuilding against what is stored, before
    anything is built: a 330-byte file must not make the loader build a mask of 1e8 entries."""
    from .masks import described_struct_indices, matrix_shape

    if not isinstance(spec, dict) or spec.get("strategy") != "struct":
        raise AdapterFileError(f"{path}: header field 'mask_spec' must describe a struct mask")
    if type(spec.get("rank")) is int and tensors is not None:  # r * (rows + cols) each
        if missing := [n for n in tensors if n not in shapes]:
            raise AdapterFileError(f"{path}: tensor {missing[0]!r} has values but no shape")
        spec = {**spec, "sizes": {n: spec["rank"] * sum(matrix_shape(shapes[n])) for n in tensors}}
    if not isinstance(spec.get("sizes"), dict):
        raise AdapterFileError(f"{path}: header field 'mask_spec' must give a rank and tensors, or per-tensor sizes")
    slot = spec.get("slot")
    if slot is not None and type(slot) is not int:
        raise AdapterFileError(f"{path}: header field 'mask_spec' has slot {slot!r}, expected an integer or null")
    for name, size in spec["sizes"].items():
        if name not in shapes or type(size) is not int or not 0 < size <= math.prod(shapes[name]):
            raise AdapterFileError(f"{path}: header field 'mask_spec' sizes tensor {name!r} as {size!r}")
        if counts is not None and size != counts.get(name):
            raise AdapterFileError(f"{path}: header field 'mask_spec' sizes tensor {name!r} as {size} entries "
                                   f"but the file stores {counts.get(name, 0)} values for it")
    if counts is not None:
        _check_rebuild_work(path, {n: shapes[n] for n in spec["sizes"]}, sum(counts.values()))
    return {name: described_struct_indices(tuple(shapes[name]), size, slot) for name, size in spec["sizes"].items()}


# Rebuilding a described mask touches about rows + cols entries per tensor beyond the mask itself;
# every real adapter's masks are at least that large (r * (rows + cols), or 1-2 % of a UNet weight).
# A header whose shapes are far larger than its stored values is refused rather than rebuilt.
REBUILD_WORK_PER_VALUE = 64
REBUILD_WORK_FLOOR = 2**22


def _check_rebuild_work(path: str, shapes: Mapping[str, tuple], stored: int) -> None:
    from .masks import matrix_shape

    work = sum(sum(matrix_shape(shape)) for shape in shapes.values())
    if work > REBUILD_WORK_PER_VALUE * stored + REBUILD_WORK_FLOOR:
        raise AdapterFileError(f"{path}: header shapes (rows + cols = {work}) are far too large for the "
                               f"{stored} values the file stores; the file was crafted or damaged")


def _check_keys(path: str, keys: list[str]) -> None:
    for key in keys:
        if not (key.endswith(INDICES_SUFFIX) or key.endswith(VALUES_SUFFIX)):
            raise AdapterFileError(f"{path}: unexpected tensor key {key!r}")


def _check_tensor(
    source: str,
    name: str,
    indices: torch.Tensor,
    values: torch.Tensor,
    shape: tuple,
    check_indices: bool = True,
    check_values: bool = True,
) -> None:
    where = f"{source}: tensor {name!r}"
    numel = math.prod(shape)
    if not shape or numel <= 0:
        raise AdapterFileError(f"{where}: invalid shape {list(shape)}")
    if numel > MAX_INT32:
        raise AdapterFileError(f"{where}: {numel} elements do not fit int32 flat indices")
    if indices.dtype != torch.int32 or indices.dim() != 1:
        raise AdapterFileError(f"{where}: indices must be a 1-D int32 tensor, got {indices.dtype} {list(indices.shape)}")
    if values.dtype not in VALUE_DTYPES or values.dim() != 1:
        raise AdapterFileError(f"{where}: values must be a 1-D float16/bfloat16/float32 tensor, got {values.dtype}")
    if indices.numel() != values.numel():
        raise AdapterFileError(f"{where}: {indices.numel()} indices but {values.numel()} values")
    if indices.numel() == 0:
        raise AdapterFileError(f"{where}: no entries")
    if check_indices:
        _check_indices(where, indices, shape, numel)
    if check_values and not all_finite(values):
        pos = int(torch.nonzero(~torch.isfinite(values))[0])
        raise AdapterFileError(f"{where}: non-finite value {float(values[pos])} at position {pos}")


def all_finite(values: torch.Tensor) -> bool:
    """True when every value is finite. A sum is finite when every term is: one cheap reduction
    instead of a boolean tensor; on overflow (or a real NaN/Inf) look at every entry."""
    if bool(torch.isfinite(values.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(values).all())


def _check_indices(where: str, indices: torch.Tensor, shape: tuple, numel: int) -> None:
    steps = indices[1:] - indices[:-1]
    if steps.numel() and int(steps.min()) <= 0:
        pos = int(torch.nonzero(steps <= 0)[0])
        kind = "duplicated" if int(steps[pos]) == 0 else "unsorted"
        raise AdapterFileError(f"{where}: indices {kind} at position {pos + 1} (index {int(indices[pos + 1])})")
    low, high = int(indices[0]), int(indices[-1])  # sorted: the ends bound the rest
    if low < 0 or high >= numel:
        bad = low if low < 0 else high
        raise AdapterFileError(f"{where}: index {bad} out of range for shape {list(shape)} ({numel} elements)")


def recommended_setting(adapter_file: str | os.PathLike) -> dict:
    """``{"guidance", "weight"}`` the self-check after training stored in an adapter file's header
    (``recommended``), or {} (none, or not a readable safetensors file: the adapter's own checks say why)."""
    try:
        with safe_open(os.fspath(adapter_file), framework="pt") as handle:
            value = json.loads((handle.metadata() or {}).get("recommended") or "null")
    except Exception:  # unreadable or not JSON: nothing recommended
        return {}
    if not isinstance(value, dict):
        return {}
    setting = {k: value[k] for k in ("guidance", "weight") if type(value.get(k)) in (int, float)}
    return setting if len(setting) == 2 and all(math.isfinite(v) for v in setting.values()) else {}
