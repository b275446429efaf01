"""Which entries of each weight a SHiRA adapter trains: the mask strategies of the SHiRA paper.

A mask is a sorted int64 tensor of flat indices into a weight viewed as ``(rows, cols)``:
Linear ``(out, in)``; Conv2d ``(out, in * kh * kw)``, the layout ``weight.view(out, -1)`` has.

- ``struct`` (default): the diagonal, a band of up to 16 contiguous columns, and whole rows at a
  constant stride. High rank (diagonal + rows + columns), and every part is one strided block in
  memory, so the bank writes it with three ``copy_`` calls per tensor (see ``layout.py``).
  The paper's Struct spaces the columns too; a contiguous band touches one cache line per row
  instead of one per column entry, which makes the writes several times cheaper (see
  ``shira bench switch``). The columns of a layer are interchangeable up to a permutation of its
  input neurons, so the band costs nothing in expressiveness.
- ``rand``: uniformly random entries (PEFT's only mask), seeded per tensor.
- ``wm``: the largest ``|W|`` per tensor.
- ``grad``: the largest accumulated ``|grad|`` over calibration batches.
- ``snip``: the largest ``|W * grad|``.

Size a mask by ``density`` (share of each tensor's entries, the paper's 1-2 %) or by a
LoRA-equivalent ``rank`` r: ``r * (rows + cols)`` entries, exactly what a rank-r LoRA trains,
so SHiRA and LoRA can be compared at equal parameter count (PEFT's ShiraConfig does the same).
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

import torch

from ..errors import ShiraError

MASK_STRATEGIES = ("struct", "rand", "wm", "grad", "snip")
DEFAULT_MASK = "struct"
DEFAULT_DENSITY = 0.01
BAND_WIDTH = 16


def matrix_shape(shape: Iterable[int]) -> tuple[int, int]:
    """(rows, cols) of a Linear or Conv2d weight as the masks see it."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2:
        return shape
    if len(shape) == 4:
        return shape[0], shape[1] * shape[2] * shape[3]
    raise ShiraError(f"masks cover Linear (2-D) and Conv2d (4-D) weights, got shape {list(shape)}")


def mask_size(shape: Iterable[int], density: float | None = None, rank: int | None = None) -> int:
    """Number of entries of a mask for a weight of ``shape``: by density or LoRA-equivalent rank."""
    rows, cols = matrix_shape(shape)
    numel = rows * cols
    if (density is None) == (rank is None):
        raise ShiraError("size a mask by exactly one of density or rank")
    if rank is not None:
        if rank <= 0:
            raise ShiraError(f"rank must be positive, got {rank}")
        size = rank * (rows + cols)
    else:
        if not 0.0 < density <= 1.0:
            raise ShiraError(f"density must be in (0, 1], got {density}")
        size = max(1, round(density * numel))
    if size > numel:
        raise ShiraError(
            f"a mask of {size} entries does not fit a {rows}x{cols} weight ({numel} entries); lower the rank or density"
        )
    return size


def struct_mask(shape: Iterable[int], size: int) -> torch.Tensor:
    """Diagonal, then a band of columns from column 0, then whole rows at a constant stride.

    The band is at most ``BAND_WIDTH`` columns (one 64-byte cache line of fp32 per row) and at
    most half the budget; rows take the rest, the last one cut at ``size``.
    """
    rows, cols = matrix_shape(shape)
    diag_len = min(rows, cols)
    diagonal = torch.arange(diag_len, dtype=torch.int64) * (cols + 1)
    if size <= diag_len:  # tiny budgets: an evenly spaced part of the diagonal
        picks = torch.linspace(0, diag_len - 1, size).round().long().unique()
        return _fill_to(diagonal[picks], size, rows * cols)
    budget = size - diag_len
    width = min(BAND_WIDTH, cols, max(1, (budget // 2) // rows))
    band = (torch.arange(rows)[:, None] * cols + torch.arange(width)).flatten()
    # Enough rows for the rest even after overlaps; a constant stride keeps them one strided block.
    n_rows = min(rows, -(-(budget - len(band) + rows + cols) // cols))
    row_ids = torch.arange(n_rows, dtype=torch.int64) * (rows // n_rows) if n_rows else torch.empty(0, dtype=torch.int64)
    row_entries = (row_ids[:, None] * cols + torch.arange(cols)).flatten()
    ordered = torch.cat([diagonal, band, row_entries])
    return _fill_to(_first_unique(ordered)[:size], size, rows * cols)


SLOTS = 8  # Struct slots per base: up to 8 styles of one size on pairwise disjoint entries


def struct_slot_mask(shape: Iterable[int], size: int, slot: int, slots: int = SLOTS) -> torch.Tensor:
    """Struct on slot ``slot`` of ``slots``: masks of one size on different slots share no entry,
    and each is still three strided blocks, so styles mix without touching each other's weights.

    All slots share one layout: the last ``n_rows * slots`` rows are the slots' whole rows (slot k
    owns every ``slots``-th of them, from the k-th), the first ``slots * width`` columns of the other
    rows are the slots' bands (slot k owns band k), and right of the bands each slot has a diagonal
    shifted by k. Rows, like columns, are interchangeable up to a permutation of the layer's
    neurons, so grouping them costs nothing. The layout depends on the shape and size only.
    """
    rows, cols = matrix_shape(shape)
    if not 0 <= slot < slots:
        raise ShiraError(f"mask slot must be in [0, {slots}), got {slot}")
    if size * slots > rows * cols:
        raise ShiraError(f"{slots} slots of {size} entries do not fit a {rows}x{cols} weight; lower the rank")
    budget = max(size - min(rows, cols), 0)
    width = min(BAND_WIDTH, max(1, (budget // 2) // rows))
    band_start = slots * width  # columns [0, band_start): the bands; the diagonals start right of them
    n_rows = max(0, -(-(budget - width * rows) // cols))
    while True:
        free = rows - n_rows * slots  # rows [0, free) hold the bands and diagonals
        if free < 1 or band_start + slots >= cols:
            # Too narrow or too short for the layout: every slots-th entry, offset by the slot.
            return torch.arange(slot, min(rows * cols, slot + size * slots), slots, dtype=torch.int64)
        shortest_diagonal = max(0, min(free, cols - band_start - slots + 1))  # the last slot's
        if shortest_diagonal + width * free + n_rows * cols >= size:
            break
        n_rows += 1
    diagonal = torch.arange(max(0, min(free, cols - band_start - slot)), dtype=torch.int64)
    diagonal = diagonal * cols + diagonal + band_start + slot
    band = (torch.arange(free)[:, None] * cols + slot * width + torch.arange(width)).flatten()
    own_rows = free + slot + slots * torch.arange(n_rows, dtype=torch.int64)
    row_entries = (own_rows[:, None] * cols + torch.arange(cols)).flatten()
    if size <= len(diagonal):  # tiny budgets: an evenly spaced part of the diagonal
        chosen = diagonal[torch.linspace(0, len(diagonal) - 1, size).round().long().unique()]
    else:
        chosen = torch.cat([diagonal, band, row_entries])[:size]
    if len(chosen) < size:
        raise ShiraError(f"a slot mask of {size} entries does not fit a {rows}x{cols} weight; lower the rank")
    return chosen.sort().values


class _TensorCache:
    """Tensors by key, least recently used dropped first once they hold more than ``max_bytes``.

    ``functools.lru_cache`` bounds entries, not bytes: 256 entries of adapters from anywhere (an
    app serving uploads) could hold gigabytes. Thread-safe: the app's requests share it."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: other shapes need not wait
        size = value.numel() * value.element_size()
        with self._lock:
            if key not in self._items and size <= self.max_bytes:
                self._items[key] = value
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, dropped = self._items.popitem(last=False)
                    self._bytes -= dropped.numel() * dropped.element_size()
        return value

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


DESCRIBED_MASK_CACHE = _TensorCache(max_bytes=256 * 2**20)  # every SD1.5/SDXL slot of one size fits


def described_struct_indices(shape: tuple, size: int, slot: int | None) -> torch.Tensor:
    """The int32 indices a described Struct mask stands for, computed once per (shape, size, slot)
    in a process: a UNet repeats a dozen shapes over its 100+ adapted tensors, and every style on a
    base repeats them all. The tensor is shared: treat it as read-only."""
    def make() -> torch.Tensor:
        mask = struct_mask(shape, size) if slot is None else struct_slot_mask(shape, size, slot)
        return mask.to(torch.int32)

    return DESCRIBED_MASK_CACHE.get((tuple(shape), int(size), slot), make)


described_struct_indices.cache_clear = DESCRIBED_MASK_CACHE.clear  # as functools' caches have


def _first_unique(ordered: torch.Tensor) -> torch.Tensor:
    """Unique values of ``ordered`` in order of first occurrence."""
    uniq, inverse = torch.unique(ordered, return_inverse=True)
    first = torch.full((len(uniq),), len(ordered), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(len(ordered)), reduce="amin")
    return uniq[first.argsort()]


def _fill_to(chosen: torch.Tensor, size: int, numel: int) -> torch.Tensor:
    """Sorted ``chosen``, topped up with the lowest unused indices if it is short of ``size``.
    Those lie below ``len(chosen) + size``: only that much is marked, never the whole weight."""
    if len(chosen) < size:
        span = min(numel, len(chosen) + size)
        taken = torch.zeros(span, dtype=torch.bool)
        taken[chosen[chosen < span]] = True
        chosen = torch.cat([chosen, torch.nonzero(~taken).flatten()[: size - len(chosen)]])
    return chosen.sort().values


def rand_mask(shape: Iterable[int], size: int, generator: torch.Generator) -> torch.Tensor:
    rows, cols = matrix_shape(shape)
    return torch.randperm(rows * cols, generator=generator)[:size].sort().values


def topk_mask(scores: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` entries with the largest scores (ties broken by torch.topk, deterministically)."""
    return torch.topk(scores.detach().flatten().float(), size, sorted=False).indices.sort().values


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed that does not depend on the order tensors are visited in."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def build_masks(
    weights: Mapping[str, torch.Tensor],
    strategy: str = DEFAULT_MASK,
    *,
    density: float | None = None,
    rank: int | None = None,
    gradients: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    slot: int | None = None,
) -> dict[str, torch.Tensor]:
    """One mask (sorted int64 flat indices) per weight. ``density`` defaults to 1 % when no rank is given.
    ``slot`` (Struct only): the disjoint Struct slot (``struct_slot_mask``); None: the plain Struct."""
    if strategy not in MASK_STRATEGIES:
        raise ShiraError(f"unknown mask {strategy!r}; choose one of {', '.join(MASK_STRATEGIES)}")
    if slot is not None and strategy != "struct":
        raise ShiraError(f"mask slots are for the struct mask, not {strategy!r}")
    if density is None and rank is None:
        density = DEFAULT_DENSITY
    if strategy in ("grad", "snip"):
        if gradients is None:
            raise ShiraError(f"the {strategy!r} mask needs gradients from calibration batches (see calibration_gradients)")
        if missing := sorted(set(weights) - set(gradients)):
            raise ShiraError(f"no calibration gradient for tensor {missing[0]!r}")
    masks = {}
    for name, weight in weights.items():
        size = mask_size(weight.shape, density=density, rank=rank)
        if strategy == "struct":
            masks[name] = struct_mask(weight.shape, size) if slot is None else struct_slot_mask(weight.shape, size, slot)
        elif strategy == "rand":
            masks[name] = rand_mask(weight.shape, size, torch.Generator().manual_seed(tensor_seed(seed, name)))
        elif strategy == "wm":
            masks[name] = topk_mask(weight.abs(), size)
        elif strategy == "grad":
            masks[name] = topk_mask(gradients[name].abs(), size)
        else:  # snip
            masks[name] = topk_mask((weight.float() * gradients[name].float()).abs(), size)
    return masks


def calibration_gradients(
    model: torch.nn.Module,
    weights: Mapping[str, torch.Tensor],
    loss_fn: Callable[[torch.nn.Module, object], torch.Tensor],
    batches: Iterable,
) -> dict[str, torch.Tensor]:
    """Sum over ``batches`` of ``|d loss / d W|`` for each weight (the Grad and SNIP masks' scores).

    Only the named weights get gradients; everything else stays frozen, and each weight's
    ``requires_grad`` is put back as it was.
    """
    before = {name: w.requires_grad for name, w in weights.items()}
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    scores = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    count = 0
    try:
        for w in weights.values():
            w.requires_grad_(True)
            w.grad = None
        for batch in batches:
            with torch.enable_grad():
                loss = loss_fn(model, batch)
                grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
            for (name, _), grad in zip(weights.items(), grads):
                if grad is not None:
                    scores[name] += grad.detach().float().abs()
            count += 1
    finally:
        for name, w in weights.items():
            w.requires_grad_(before[name])
        for p in frozen:
            p.requires_grad_(True)
    if count == 0:
        raise ShiraError("calibration needs at least one batch")
    return scores
