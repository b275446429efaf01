"""ScatterPlan: read and write a fixed set of entries of one weight tensor as fast as memory allows.

Writing K values at K sorted indices with ``index_put_`` costs about one cache miss per value.
Structured masks have far more locality: whole rows, a band of columns, a diagonal. A plan finds
that structure in the indices alone, with no hint from the mask that made them: it cuts the sorted
indices into runs of consecutive entries and, longest runs first, extends each into the longest
progression of equal runs at a constant stride that stays inside the index set; each progression
becomes one strided 2-D view of the weight. Blocks may overlap (the diagonal crosses the column
band and the full rows); overlapping entries are written twice with the same value. Writing is
then a few ``copy_`` calls per tensor. Entries no worthwhile block covers go through one
``index_put_``, so unstructured masks cost what they must and no more. (The ``restore`` column
of ``shira bench switch`` shows both: ~3 ms for struct against ~24 ms for rand at 3.2 M entries.)

Values are kept in *plan order*: the elements of view 0 row-major, then view 1, ..., then the
remainder in sorted order. ``plan.order`` maps plan order to sorted order; views may overlap, so
an entry can appear more than once, always with the same value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# A view must cover at least this many entries to be worth a Python-level copy_ call.
MIN_VIEW_ENTRIES = 64
# Below this mean run length the indices have no usable structure: skip the analysis.
MIN_MEAN_RUN = 4


@dataclass(frozen=True)
class StridedBlock:
    """Entries ``offset + i * stride + j`` for ``i < count``, ``j < length`` of a flat tensor."""

    offset: int
    count: int
    length: int
    stride: int

    @property
    def size(self) -> int:
        return self.count * self.length


class ScatterPlan:
    """How to gather and scatter the entries at ``indices`` (sorted, unique) of one contiguous tensor."""

    def __init__(self, indices: torch.Tensor):
        flat = indices.detach().cpu().to(torch.int64).numpy()
        self.numel = len(flat)
        self.blocks, order, remainder = _analyse(flat)
        # plan position -> sorted position; int32 halves the index traffic of the gather on a cold load
        self.order = torch.from_numpy(order.astype(np.int32))
        self.remainder = torch.from_numpy(flat[remainder])  # sorted int64 flat indices
        self.size = len(self.order)  # plan-order length: numel plus entries where blocks overlap
        self._device_remainder: dict[torch.device, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"ScatterPlan(entries={self.numel}, blocks={len(self.blocks)}, scattered={len(self.remainder)})"

    def to_plan_order(self, sorted_values: torch.Tensor) -> torch.Tensor:
        return torch.index_select(sorted_values, 0, self.order_on(sorted_values.device))

    def order_on(self, device: torch.device) -> torch.Tensor:
        return self.order if self.order.device == device else self.order.to(device)

    def to_sorted_order(self, plan_values: torch.Tensor) -> torch.Tensor:
        out = plan_values.new_empty(self.numel)
        out[self.order.to(plan_values.device)] = plan_values
        return out

    def _remainder_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._device_remainder:
            self._device_remainder[device] = self.remainder.to(device)
        return self._device_remainder[device]

    def views(self, weight: torch.Tensor) -> list[torch.Tensor]:
        """One strided view of ``weight`` per block (they write into the weight's own memory)."""
        _check_contiguous(weight)
        base = weight.storage_offset()
        return [weight.as_strided((b.count, b.length), (b.stride, 1), base + b.offset) for b in self.blocks]

    def scatter_remainder(self, weight: torch.Tensor, values: torch.Tensor) -> None:
        if len(self.remainder):
            weight.view(-1).index_put_((self._remainder_on(weight.device),), values)

    def gather(self, weight: torch.Tensor) -> torch.Tensor:
        """The current values at the plan's entries, in plan order (a new tensor)."""
        parts = [view.reshape(-1) for view in self.views(weight)]
        if len(self.remainder):
            parts.append(weight.reshape(-1)[self._remainder_on(weight.device)])
        return torch.cat(parts) if parts else weight.new_empty(0)

    def split(self, plan_values: torch.Tensor) -> list[torch.Tensor]:
        """``plan_values`` cut into one piece per block (shaped like it) plus the remainder.

        Callers that write the same buffer again and again keep the pieces: slicing 500 views
        per switch costs a millisecond of pure Python.
        """
        pieces, start = [], 0
        for block in self.blocks:
            pieces.append(plan_values[start : start + block.size].view(block.count, block.length))
            start += block.size
        pieces.append(plan_values[start:])
        return pieces

    def scatter(self, weight: torch.Tensor, plan_values: torch.Tensor) -> None:
        """Write plan-order values into the plan's entries, in place."""
        pieces = self.split(plan_values)
        for view, piece in zip(self.views(weight), pieces):
            view.copy_(piece)
        self.scatter_remainder(weight, pieces[-1])


def _check_contiguous(weight: torch.Tensor) -> None:
    if not weight.is_contiguous():
        raise RuntimeError("ScatterPlan needs a contiguous weight tensor")


def _analyse(flat: np.ndarray):
    """Cover sorted unique indices with strided blocks, leaving the rest to ``index_put_``.

    Blocks may overlap (a band of columns crossing full rows, the diagonal crossing both): an
    entry written twice gets the same value twice, and three long blocks are far cheaper than the
    many short ones a strict partition would need. Returns (blocks, order, remainder_positions):
    ``order`` lists sorted positions in plan order (with repeats where blocks overlap) and
    ``remainder_positions`` are the sorted positions no block covers.
    """
    n = len(flat)
    everything = np.arange(n, dtype=np.int64)
    if n < MIN_VIEW_ENTRIES:
        return [], everything, everything
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1
    if len(breaks) + 1 > n / MIN_MEAN_RUN:
        return [], everything, everything
    run_pos = np.concatenate(([0], breaks))  # sorted position where each run starts
    run_len = np.diff(np.concatenate((run_pos, [n])))
    run_start = flat[run_pos]

    covered = np.zeros(n, dtype=bool)
    blocks: list[StridedBlock] = []
    block_positions: list[np.ndarray] = []
    # Longest runs first: they seed the big blocks, and the short runs inside them are then covered.
    # Which runs a block covers is recomputed in one vectorised pass per block (blocks are few), not
    # checked run by run in Python: an SD1.5 UNet has ~190k runs and that loop cost a second.
    run_order = np.argsort(-run_len, kind="stable")
    run_covered = np.zeros(len(run_pos), dtype=bool)
    done = 0  # runs of ``run_order`` already tried or covered
    while done < len(run_order):
        todo = run_order[done:]
        found = False
        for offset in np.flatnonzero(~run_covered[todo]).tolist():
            r = int(todo[offset])
            length, start = int(run_len[r]), int(run_start[r])
            stride = _next_stride(run_start, run_len, covered, run_pos, r)
            first, count = _extend(flat, start, length, stride)
            if count * length < MIN_VIEW_ENTRIES:
                continue
            first_start = start + first * stride
            positions = (np.searchsorted(flat, first_start + np.arange(count) * stride)[:, None] + np.arange(length)).reshape(-1)
            blocks.append(StridedBlock(first_start, count, length, stride if count > 1 else length))
            block_positions.append(positions)
            covered[positions] = True
            run_covered = np.logical_and.reduceat(covered, run_pos)
            done += offset + 1
            found = True
            break
        if not found:
            break
    rest = np.flatnonzero(~covered)
    order = np.concatenate(block_positions + [rest]).astype(np.int64)
    return blocks, order, rest


def _next_stride(run_start, run_len, covered, run_pos, r) -> int:
    """Distance to the next run of the same length that is not covered yet (0 if there is none)."""
    same = np.flatnonzero((run_len == run_len[r]) & (run_start > run_start[r]))
    for other in same[:8].tolist():
        if not covered[run_pos[other]]:
            return int(run_start[other] - run_start[r])
    return 0


def _extend(flat: np.ndarray, start: int, length: int, stride: int) -> tuple[int, int]:
    """Longest progression ``start + j * stride`` (j may be negative) of intervals inside ``flat``.

    Returns (first j, count). An interval [a, a + length) is inside iff ``flat`` holds a at some
    position p and a + length - 1 at position p + length - 1 (``flat`` is sorted and unique).
    """
    if stride <= 0:
        return 0, 1

    def inside_prefix(steps: np.ndarray) -> int:
        a = start + steps * stride
        ok = (a >= flat[0]) & (a + length - 1 <= flat[-1])
        p = np.searchsorted(flat, a)
        last = np.minimum(p + length - 1, len(flat) - 1)
        ok &= (flat[np.minimum(p, len(flat) - 1)] == a) & (flat[last] == a + length - 1)
        bad = np.flatnonzero(~ok)
        return int(bad[0]) if len(bad) else len(steps)

    forward = inside_prefix(np.arange(1, (int(flat[-1]) - start) // stride + 2))
    backward = inside_prefix(-np.arange(1, (start - int(flat[0])) // stride + 2))
    return -backward, 1 + forward + backward
