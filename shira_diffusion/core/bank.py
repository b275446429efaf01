"""StyleBank: many SHiRA adapters held for one plain diffusers UNet, fused into its weights in place.

``bank.apply({"ink": 1.0, "pastel": 0.5})`` writes ``W0 + 1.0 * S_ink + 0.5 * S_pastel`` into the
adapted entries of the UNet's own weights: no wrapper modules, zero inference overhead, and the
UNet stays a plain ``UNet2DConditionModel`` for ``torch.compile``, offloading and the rest.

How switching stays fast and exact:
- Adapters whose masks are identical (all adapters trained with the default mask on one base)
  share one *mask group*: one ScatterPlan per tensor, and one copy of the pristine base values at
  those entries. Every adapter's values are stored once, flat, in the group's plan order, so a
  mix of adapters in one group is one fused vector ``orig + sum(w * values)`` written through
  the plans, and a switch between two such mixes writes that vector and nothing else.
- Restoring writes the saved pristine values back: bit-identical in fp32, fp16 and bf16.
- Mixes that span several groups (adapters with different masks) lift the groups that were
  fused, write the first group whole, then add each other group on top of what is there, so
  overlapping masks add up correctly.
- One re-entrant lock guards every write. ``with bank.use(mix): pipe(...)`` holds it for the
  whole generation, so no generation ever sees a half-applied mix.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .adapter import SparseAdapter
from .architecture import unet_family
from ..errors import ShiraError
from .scatter_plan import ScatterPlan


class _MaskGroup:
    """Tensors and entries shared by every adapter with one mask; keeps the pristine values there."""

    def __init__(self, indices: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]):
        self.names = sorted(indices)
        self.indices = {name: indices[name].to(torch.int32) for name in self.names}
        # Tensors whose indices are one shared tensor (a described mask repeats per shape) share a plan.
        plans_by_id: dict[int, ScatterPlan] = {}
        for name in self.names:
            if id(indices[name]) not in plans_by_id:
                plans_by_id[id(indices[name])] = ScatterPlan(indices[name])
        self.plans = {name: plans_by_id[id(indices[name])] for name in self.names}
        self.spans: dict[str, tuple[int, int]] = {}
        start = 0
        for name in self.names:
            self.spans[name] = (start, start + self.plans[name].size)
            start += self.plans[name].size
        self.size = start
        dtypes = {weights[name].dtype for name in self.names}
        if len(dtypes) != 1:
            raise ShiraError(f"adapted tensors must share one dtype, found {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop()
        self.original = self.read(weights)  # caller guarantees the weights are pristine here
        low, high = (float(v) for v in torch.aminmax(self.original)) if self.size else (0.0, 0.0)
        self.abs_max = max(-low, high)  # nan if the base holds a non-finite weight: exact checks then
        self._original_pieces = self._split(self.original)
        self._scratch: torch.Tensor | None = None  # fused values of the current fp32 mix
        self._scratch_pieces: tuple | None = None
        self._views: list[torch.Tensor] = []  # cached: slicing 500 views costs ~1 ms per switch
        self._pointers: list[int] = []

    def gather(self, adapter: SparseAdapter, device: torch.device, compare: bool) -> torch.Tensor | None:
        """The adapter's values in plan order, one flat buffer (its storage in the bank).

        With ``compare``, also check that the adapter's indices are this group's (None if not),
        tensor by tensor in the same pass, while each tensor's pages are fresh in cache.
        """
        if sorted(adapter.indices) != self.names:
            return None
        if compare and any(adapter.indices[n].shape != self.indices[n].shape for n in self.names):
            return None
        dtype = adapter.values[self.names[0]].dtype
        if any(adapter.values[n].dtype != dtype for n in self.names):
            raise ShiraError(f"{adapter.name}: all value tensors must share one dtype")
        out = torch.empty(self.size, dtype=dtype, device=device)

        for name in self.names:
            if compare and not torch.equal(adapter.indices[name], self.indices[name]):
                return None
            start, end = self.spans[name]
            values = adapter.values[name].to(device)
            torch.index_select(values, 0, self.plans[name].order_on(device), out=out[start:end])
        return out

    def read(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.plans[n].gather(weights[n].data) for n in self.names])

    def write(self, weights: Mapping[str, torch.Tensor], flat: torch.Tensor) -> None:
        """Write plan-order ``flat`` into the weights: one batched copy for all blocks of all tensors."""
        targets = self._targets(weights)
        if flat is self.original:
            sources = self._original_pieces
        elif flat is self._scratch:
            sources = self._scratch_pieces
        else:
            sources = self._split(flat)
        block_sources, remainders = sources
        _copy_all(self._views, block_sources)
        for name, values in remainders:
            self.plans[name].scatter_remainder(targets[name], values)

    def _split(self, flat: torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[str, torch.Tensor]]]:
        """``flat`` cut into the source piece of every block, plus each tensor's remainder."""
        blocks, remainders = [], []
        for name in self.names:
            pieces = self.plans[name].split(flat[slice(*self.spans[name])])
            blocks.extend(pieces[:-1])
            if len(self.plans[name].remainder):
                remainders.append((name, pieces[-1]))
        return blocks, remainders

    def _targets(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weights' data, and the block views into them, rebuilt only if a weight's memory moved."""
        data = {n: weights[n].data for n in self.names}
        pointers = [data[n].data_ptr() for n in self.names]
        if pointers != self._pointers:
            first = data[self.names[0]]
            if first.device != self.original.device or first.dtype != self.dtype:
                raise ShiraError(
                    f"the UNet's weights moved from {self.original.device}/{self.dtype} to "
                    f"{first.device}/{first.dtype} after its adapters were added; restore() the bank "
                    "before moving or casting the UNet, then create a new StyleBank"
                )
            self._views = [view for n in self.names for view in self.plans[n].views(data[n])]
            self._pointers = pointers
        return data

    def overlaps(self, other: "_MaskGroup") -> bool:
        """Whether this group and ``other`` share any entry of any tensor."""
        return any(bool(torch.isin(self.indices[name], other.indices[name]).any())
                   for name in set(self.names) & set(other.names))

    def compose(self, base: torch.Tensor, members: list[tuple["_Entry", float]]) -> torch.Tensor:
        """``base + sum(w * values)`` in the weights' dtype, accumulated in fp32 unless all is fp32."""
        if self.dtype == torch.float32 and all(e.values.dtype == torch.float32 for e, _ in members):
            # Reuse one scratch buffer: a fresh 10+ MB allocation per switch costs page faults.
            if self._scratch is None:
                self._scratch = torch.empty_like(base)
                self._scratch_pieces = self._split(self._scratch)
            out = torch.add(base, members[0][0].values, alpha=members[0][1], out=self._scratch)
            for entry, weight in members[1:]:
                out.add_(entry.values, alpha=weight)
            return out
        acc = base.to(torch.float32, copy=True)  # never .float(): on fp32 weights it would alias ``base``
        for entry, weight in members:
            acc.add_(entry.values.float(), alpha=weight)
        return acc.to(self.dtype)


def _signature(members: list[tuple["_Entry", float]]) -> tuple:
    """What a group's fused values depend on: its members (by identity) and their weights."""
    return tuple(sorted((id(entry), weight) for entry, weight in members))


def _copy_all(destinations: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    # One dispatch for hundreds of small strided copies; the Python loop costs ~20 % more.
    if destinations:
        torch._foreach_copy_(destinations, sources)


@dataclass
class _Entry:
    adapter: SparseAdapter  # header only: the values live in ``values``, the indices in the group
    group: _MaskGroup
    values: torch.Tensor  # flat, in the group's plan order, on the weights' device
    abs_max: float = math.inf  # largest |value|: bounds what a weight can add (overflow check)


class StyleBank:
    """Holds SHiRA adapters for one UNet and fuses mixes of them into its weights in place.

    >>> bank = StyleBank(pipe.unet)
    >>> bank.load("styles/ink/ink.toy-sd.safetensors")      # name from the file
    >>> with bank.use({"ink": 1.0}):
    ...     image = pipe(prompt).images[0]
    >>> bank.restore()                                      # base weights, bit-identical
    """

    def __init__(self, unet: nn.Module):
        self.unet = unet
        self.family = unet_family(unet)
        self._params = dict(unet.named_parameters())
        self._entries: dict[str, _Entry] = {}
        self._groups: list[_MaskGroup] = []
        self._active: dict[str, float] = {}
        self._overlaps: dict[frozenset, bool] = {}  # pairs of groups (by id): do they share entries?
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ adapters
    @property
    def names(self) -> list[str]:
        return list(self._entries)

    @property
    def active(self) -> dict[str, float]:
        """The mix currently fused into the weights (empty: pristine base)."""
        return dict(self._active)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def info(self, name: str) -> dict:
        """What the bank knows of a held adapter: name, trigger, mask, family, size, recipe."""
        entry = self._entry(name)
        meta = entry.adapter
        entries = sum(plan.numel for plan in entry.group.plans.values())
        total = sum(math.prod(shape) for shape in meta.shapes.values())
        return {
            "name": name,
            "trigger": meta.trigger,
            "mask": meta.mask,
            "base_arch": meta.base_arch,
            "description": meta.description,
            "params": entries,
            "density": entries / total,
            "dtype": str(entry.values.dtype).removeprefix("torch."),
            "recipe": dict(meta.recipe),
            "active_weight": self._active.get(name, 0.0),
        }

    def adapter(self, name: str) -> SparseAdapter:
        """Rebuild the full SparseAdapter (indices and values) of a held adapter."""
        entry = self._entry(name)
        group, meta = entry.group, entry.adapter
        values = {}
        for n in group.names:
            start, end = group.spans[n]
            values[n] = group.plans[n].to_sorted_order(entry.values[start:end].cpu())
        return SparseAdapter(
            indices={n: group.indices[n].to(torch.int32) for n in group.names},
            values=values,
            shapes=dict(meta.shapes),
            base_arch=meta.base_arch,
            mask=meta.mask,
            trigger=meta.trigger,
            name=meta.name,
            description=meta.description,
            recipe=dict(meta.recipe),
            recommended=meta.recommended,
        )

    def load(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Read an adapter file (fully validated) and add it; returns the name it is held under."""
        adapter = SparseAdapter.load(path, validate=False)  # add() validates, skipping known masks
        return self.add(adapter, name=name, source=str(path))

    def add(self, adapter: SparseAdapter, name: str | None = None, source: str | None = None) -> str:
        """Add an adapter; checks it against this UNet first and never touches the weights if it fails."""
        name = name or adapter.name
        if not name:
            raise ShiraError("an adapter needs a name to be held in a bank")
        adapter.check_compatible(self._params, self.family)
        with self._lock:
            if name in self._entries:
                raise ShiraError(f"an adapter named {name!r} is already in the bank; remove it first")
            # Structure first (keys, dtypes, lengths); then indices equal to a held mask are valid
            # by construction, and values are checked in one pass over the gathered buffer.
            adapter.validate(source or name, check_indices=False, check_values=False)
            device = next(iter(self._params.values())).device
            group, values = None, None
            for candidate in self._groups:
                values = candidate.gather(adapter, device, compare=True)
                if values is not None:
                    group = candidate
                    break
            if group is None:
                adapter.validate(source or name, check_values=False)
                group = self._new_group(adapter.indices)
                values = group.gather(adapter, device, compare=False)
            low, high = (float(v) for v in torch.aminmax(values))  # one pass: finite, and the bound
            if not (math.isfinite(low) and math.isfinite(high)):
                adapter.validate(source or name)  # raises, naming the tensor and position
            abs_max = max(-low, high)
            self._entries[name] = _Entry(adapter.header_only(name), group, values, abs_max)
        return name

    def remove(self, name: str) -> None:
        with self._lock:
            entry = self._entry(name)
            if name in self._active:
                self.apply({k: w for k, w in self._active.items() if k != name})
            del self._entries[name]
            if all(e.group is not entry.group for e in self._entries.values()):
                self._groups.remove(entry.group)
                self._overlaps = {k: v for k, v in self._overlaps.items() if id(entry.group) not in k}

    def _entry(self, name: str) -> _Entry:
        if name not in self._entries:
            held = ", ".join(sorted(self._entries)) or "none"
            raise ShiraError(f"no adapter named {name!r} in the bank (held: {held})")
        return self._entries[name]

    def _new_group(self, indices: Mapping[str, torch.Tensor]) -> _MaskGroup:
        # The pristine values must be read from pristine weights: lift the current mix meanwhile.
        active = dict(self._active)
        if active:
            self.restore()
        try:
            group = _MaskGroup(indices, self._params)
            self._groups.append(group)
        finally:
            if active:
                self.apply(active)
        return group

    # ------------------------------------------------------------------ mixing
    def apply(self, mix: Mapping[str, float] | None = None) -> None:
        """Fuse ``mix`` ({name: weight}) into the weights, replacing whatever mix was fused before.

        ``active`` always describes the weights. A mix that would overflow the weights' dtype is
        refused before anything is written (the previous mix stays); if a write fails midway (an
        error, Ctrl-C), every group is put back to the base weights and ``active`` is empty."""
        mix = self._check_mix(mix or {})
        with self._lock, torch.no_grad():
            new_groups: dict[_MaskGroup, list[tuple[_Entry, float]]] = {}
            for name, weight in mix.items():
                entry = self._entries[name]
                new_groups.setdefault(entry.group, []).append((entry, weight))
            old_groups = {self._entries[n].group for n in self._active}
            may_overflow = self._may_overflow(new_groups)
            if len(new_groups) <= 1 or self._disjoint(list(new_groups)):
                # Groups on disjoint entries (one mask, or Struct slots) are each written whole from
                # their own pristine values: one fused write per group, in any order. A group whose
                # members and weights stay is not written again, unless a leaving group shares entries.
                leaving = old_groups - set(new_groups)
                previous = self._members_by_group(self._active)
                fused = [(group, group.compose(group.original, members)) for group, members in new_groups.items()
                         if previous.get(group) != _signature(members)
                         or any(not self._disjoint([group, gone]) for gone in leaving)]
                if may_overflow:
                    for _, values in fused:
                        self._check_finite(values, mix)  # before any write: the old mix stays
            try:
                if len(new_groups) <= 1 or self._disjoint(list(new_groups)):
                    for group in leaving:
                        group.write(self._params, group.original)
                    for group, values in fused:
                        group.write(self._params, values)
                else:
                    # Masks may overlap. Lifting the old groups leaves every entry pristine; the first
                    # group is then written whole, the others added on top of what is there.
                    for group in old_groups:
                        group.write(self._params, group.original)
                    self._active = {}
                    for i, (group, members) in enumerate(new_groups.items()):
                        base = group.original if i == 0 else group.read(self._params)
                        values = group.compose(base, members)
                        if may_overflow:
                            self._check_finite(values, mix)
                        group.write(self._params, values)
            except BaseException:
                try:
                    self._lift_all()
                except Exception:  # the weights moved: nothing could be written, nor was it
                    pass
                raise
            self._active = mix

    def _members_by_group(self, mix: Mapping[str, float]) -> dict[_MaskGroup, tuple]:
        groups: dict[_MaskGroup, list[tuple[_Entry, float]]] = {}
        for name, weight in mix.items():
            groups.setdefault(self._entries[name].group, []).append((self._entries[name], weight))
        return {group: _signature(members) for group, members in groups.items()}

    def _disjoint(self, groups: list[_MaskGroup]) -> bool:
        """Whether no two of ``groups`` share an entry (computed once per pair, then kept)."""
        for i, first in enumerate(groups):
            for second in groups[i + 1 :]:
                key = frozenset((id(first), id(second)))
                if key not in self._overlaps:
                    self._overlaps[key] = first.overlaps(second)
                if self._overlaps[key]:
                    return False
        return True

    def _lift_all(self) -> None:
        """After a failed write: every group back to the base values, and ``active`` says so."""
        for group in self._groups:
            group.write(self._params, group.original)
        self._active = {}

    def _may_overflow(self, groups: Mapping[_MaskGroup, list[tuple[_Entry, float]]]) -> bool:
        """Whether the mix could leave the weights' finite range: a bound from each adapter's
        largest value, so the exact check (a pass over the fused values) runs only when needed."""
        if not groups:
            return False
        bound = max(group.abs_max for group in groups)
        bound += sum(abs(w) * entry.abs_max for members in groups.values() for entry, w in members)
        limit = min(torch.finfo(group.dtype).max for group in groups)
        return not bound < 0.5 * limit

    @staticmethod
    def _check_finite(values: torch.Tensor, mix: Mapping[str, float]) -> None:
        if not bool(torch.isfinite(values).all()):
            weights = ", ".join(f"{name}={weight:g}" for name, weight in mix.items())
            raise ShiraError(f"the mix {weights} makes weights non-finite (overflow in "
                             f"{str(values.dtype).removeprefix('torch.')}); use smaller weights")

    def restore(self) -> None:
        """Put the base weights back, bit-identical to what they were before any apply."""
        self.apply({})

    @contextmanager
    def use(self, mix: Mapping[str, float] | None = None) -> Iterator["StyleBank"]:
        """Hold the bank's lock with ``mix`` fused: generate inside, and no other thread can switch."""
        with self._lock:
            self.apply(mix)
            yield self

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def _check_mix(self, mix: Mapping[str, float]) -> dict[str, float]:
        checked = {}
        for name, weight in mix.items():
            self._entry(name)
            try:
                weight = float(weight)
            except (TypeError, ValueError):
                raise ShiraError(f"weight of {name!r} must be a number, got {weight!r}") from None
            if not math.isfinite(weight):
                raise ShiraError(f"weight of {name!r} must be finite, got {weight}")
            if abs(weight) > torch.finfo(torch.float32).max:
                raise ShiraError(f"weight of {name!r} is {weight:g}, beyond what float32 weights hold")
            if weight != 0.0:
                checked[name] = weight
        return checked

    def __repr__(self) -> str:
        return (
            f"StyleBank(family={self.family!r}, adapters={len(self._entries)}, "
            f"mask_groups={len(self._groups)}, active={self._active})"
        )
