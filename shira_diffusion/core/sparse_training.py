"""Training SHiRA values on a plain diffusers UNet without dense copies of its weights.

PEFT's SHiRA layer builds ``W + scatter(values)`` as a new dense tensor in every forward, and
autograd keeps it for the backward pass: one extra dense weight per adapted layer per step. Here
the adapted weights hold ``W0 + values`` *in place* (rewritten only when the values changed, i.e.
after an optimizer step), and a custom autograd function computes the values' gradient
``dL/dW[idx]`` directly from the layer's input and output gradient:

- whole rows of the mask (Struct's rows): ``g[:, rows]^T @ x``;
- nearly whole columns (Struct's band): ``g^T @ x[:, cols]``, gathered;
- scattered entries (the diagonal, or a sparse Rand/WM/... mask): per-entry dot products
  ``sum_t g[t, i] * x[t, j]`` in bounded chunks, or, where entries are dense enough that a
  matrix product is cheaper, ``g[:, rows]^T @ x`` on the rows that have entries, gathered.

The function saves only the layer input (a frozen layer keeps none; LoRA keeps the same input for
its A matrix, plus ``A x``), so there is no extra activation memory beyond LoRA's. Only the 1-D
value tensors are parameters, so optimizer state is as small as the adapter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import SparseAdapter
from .architecture import unet_family
from ..errors import ShiraError

PAIR_CHUNK_ELEMENTS = 1 << 22  # tokens x entries per chunk of per-entry dot products (16 MB in fp32)
ROW_CHUNK = 1024


def _as_slice(index: torch.Tensor) -> torch.Tensor | slice:
    """An evenly spaced index as a slice (a view instead of a gathered copy), else the index."""
    if len(index) == 0:
        return index
    if len(index) == 1:
        start = int(index[0])
        return slice(start, start + 1)
    steps = index[1:] - index[:-1]
    step = int(steps[0])
    if step > 0 and bool((steps == step).all()):
        return slice(int(index[0]), int(index[-1]) + 1, step)
    return index


class _GradientPlan:
    """How to compute ``dL/dW`` at a Linear layer's masked entries (sorted flat indices)."""

    def __init__(self, indices: torch.Tensor, rows_out: int, cols_in: int):
        self.size = len(indices)
        rows, cols = indices // cols_in, indices % cols_in
        positions = torch.arange(self.size, device=indices.device)
        self.parts: list[tuple] = []
        # Whole rows: their entries are contiguous in sorted order, row by row.
        row_counts = torch.bincount(rows, minlength=rows_out)
        full_rows = torch.nonzero(row_counts == cols_in).flatten()
        in_full = row_counts[rows] == cols_in
        if len(full_rows):
            self.parts.append(("rows", _as_slice(positions[in_full]), _as_slice(full_rows)))
        rest = ~in_full
        # Columns holding at least half of the remaining rows' height.
        col_counts = torch.bincount(cols[rest], minlength=cols_in)
        dense_cols = torch.nonzero(col_counts * 2 >= rows_out).flatten()
        if len(dense_cols):
            column_slot = torch.full((cols_in,), -1, dtype=torch.long, device=indices.device)
            column_slot[dense_cols] = torch.arange(len(dense_cols), device=indices.device)
            in_cols = rest & (column_slot[cols] >= 0)
            self.parts.append(("cols", positions[in_cols], _as_slice(dense_cols), rows[in_cols],
                               column_slot[cols[in_cols]]))
            rest = rest & ~in_cols
        if rest.any():
            r, c = rows[rest], cols[rest]
            used_rows = torch.unique(r)
            # A gathered dot product costs roughly 4 multiply-adds' worth of memory traffic.
            if 4 * len(r) < len(used_rows) * cols_in:
                # Entries on the most common diagonal (Struct's): products of two views, summed, picked.
                offsets = c - r
                common = int(torch.mode(offsets).values)
                on = offsets == common
                if int(on.sum()) >= 16:
                    first, last = int(r[on].min()), int(r[on].max()) + 1
                    self.parts.append(("diagonal", positions[rest][on], first, last, common, r[on] - first))
                if (~on).any() or int(on.sum()) < 16:
                    keep = ~on if int(on.sum()) >= 16 else torch.ones_like(on)
                    self.parts.append(("pairs", positions[rest][keep], r[keep], c[keep]))
            else:
                row_slot = torch.full((rows_out,), -1, dtype=torch.long, device=indices.device)
                row_slot[used_rows] = torch.arange(len(used_rows), device=indices.device)
                self.parts.append(("dense", positions[rest], used_rows, row_slot[r], c))

    def gradient(self, grad_out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """``grad_out`` (tokens, rows_out) and ``inputs`` (tokens, cols_in) -> (entries,) in fp32."""
        result = torch.empty(self.size, dtype=torch.float32, device=grad_out.device)
        for part in self.parts:
            kind, positions = part[0], part[1]
            if kind == "rows":
                result[positions] = (grad_out[:, part[2]].t() @ inputs).flatten().float()
            elif kind == "cols":
                block = grad_out.t() @ inputs[:, part[2]]
                result[positions] = block[part[3], part[4]].float()
            elif kind == "diagonal":
                first, last, offset, picks = part[2], part[3], part[4], part[5]
                products = grad_out[:, first:last] * inputs[:, first + offset : last + offset]
                result[positions] = products.sum(0)[picks].float()
            elif kind == "pairs":
                rows, cols = part[2], part[3]
                step = max(1, PAIR_CHUNK_ELEMENTS // max(1, grad_out.shape[0]))
                for start in range(0, len(rows), step):
                    r, c = rows[start : start + step], cols[start : start + step]
                    result[positions[start : start + step]] = (grad_out[:, r] * inputs[:, c]).sum(0).float()
            else:  # dense rows, in chunks
                used_rows, row_slot, cols = part[2], part[3], part[4]
                for start in range(0, len(used_rows), ROW_CHUNK):
                    block = grad_out[:, used_rows[start : start + ROW_CHUNK]].t() @ inputs
                    chosen = (row_slot >= start) & (row_slot < start + ROW_CHUNK)
                    result[positions[chosen]] = block[row_slot[chosen] - start, cols[chosen]].float()
        return result


class _SparseDeltaLinear(torch.autograd.Function):
    """``F.linear`` with the (already fused) weight; the gradient goes to the sparse values only."""

    @staticmethod
    def forward(ctx, inputs, values, weight, bias, plan):
        out = F.linear(inputs, weight.to(inputs.dtype), None if bias is None else bias.to(inputs.dtype))
        ctx.save_for_backward(inputs)
        ctx.weight, ctx.plan = weight, plan  # a reference to the frozen parameter, not a copy
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (inputs,) = ctx.saved_tensors
        grad_inputs = None
        if ctx.needs_input_grad[0]:
            grad_inputs = grad_out @ ctx.weight.to(grad_out.dtype)
        grad_values = None
        if ctx.needs_input_grad[1]:
            flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
            flat_inputs = inputs.reshape(-1, inputs.shape[-1]).to(grad_out.dtype)
            grad_values = ctx.plan.gradient(flat_grad, flat_inputs)
        return grad_inputs, grad_values, None, None, None


class _SparseDeltaConv2d(torch.autograd.Function):
    """Conv2d with the fused weight; the values' gradient is the weight gradient at the mask."""

    @staticmethod
    def forward(ctx, inputs, values, module, indices):
        weight = module.weight.to(inputs.dtype)
        bias = None if module.bias is None else module.bias.to(inputs.dtype)
        ctx.save_for_backward(inputs)
        ctx.module, ctx.indices = module, indices
        return module._conv_forward(inputs, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        (inputs,) = ctx.saved_tensors
        m = ctx.module
        weight = m.weight.to(grad_out.dtype)
        grad_inputs = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_inputs = torch.nn.grad.conv2d_input(inputs.shape, weight, grad_out, m.stride, m.padding,
                                                     m.dilation, m.groups)
        if ctx.needs_input_grad[1]:
            # A convolution's weight gradient has no cheap sparse form: computed densely, one layer
            # at a time, and freed at once (a transient, not kept across the step).
            dense = torch.nn.grad.conv2d_weight(inputs.to(grad_out.dtype), weight.shape, grad_out, m.stride,
                                                m.padding, m.dilation, m.groups)
            grad_values = dense.flatten()[ctx.indices].float()
        return grad_inputs, grad_values, None, None


class SparseDeltaModel(nn.Module):
    """A plain diffusers UNet whose masked entries train, fused in place.

    ``model(*args)`` runs the UNet (so ``accelerate``/DDP can wrap this module); ``values`` are the
    only trainable parameters. ``adapter()`` returns the trained ``SparseAdapter``; ``detach()``
    puts the UNet back exactly as it was.
    """

    def __init__(self, unet: nn.Module, masks: Mapping[str, torch.Tensor]):
        super().__init__()
        self.unet = unet
        self.family = unet_family(unet)
        modules = dict(unet.named_modules())
        self.values = nn.ParameterDict()
        self._layers: dict[str, dict] = {}
        for p in unet.parameters():
            p.requires_grad_(False)
        for name, indices in masks.items():
            module_name = name.removesuffix(".weight")
            module = modules.get(module_name)
            if not isinstance(module, (nn.Linear, nn.Conv2d)) or not name.endswith(".weight"):
                raise ShiraError(f"{name!r} is not the weight of a Linear or Conv2d layer of this UNet")
            weight = module.weight
            indices = indices.to(device=weight.device, dtype=torch.long)
            if len(indices) and (indices.min() < 0 or indices.max() >= weight.numel()):
                raise ShiraError(f"mask for {name!r} indexes outside its {tuple(weight.shape)} weight")
            key = _key(name)
            self.values[key] = nn.Parameter(torch.zeros(len(indices), dtype=torch.float32, device=weight.device))
            layer = {"name": name, "module": module, "indices": indices,
                     "base": weight.detach().flatten()[indices].clone(), "synced": None}
            if isinstance(module, nn.Linear):
                layer["plan"] = _GradientPlan(indices, *weight.shape)
            self._layers[key] = layer
            module.forward = self._routed_forward(key)
        self._attached = True

    def _routed_forward(self, key: str):
        layer = self._layers[key]
        module = layer["module"]

        def forward(inputs, *args, **kwargs):
            values = self.values[key]
            if isinstance(module, nn.Linear):
                return _SparseDeltaLinear.apply(inputs, values, module.weight, module.bias, layer["plan"])
            return _SparseDeltaConv2d.apply(inputs, values, module, layer["indices"])

        return forward

    @torch.no_grad()
    def sync(self, force: bool = False) -> None:
        """Write ``W0 + values`` into the weights whose values changed since the last write.
        ``force`` writes all: changes made through ``.data`` (as diffusers' EMAModel makes them)
        leave no trace in the version counter this relies on."""
        for key, layer in self._layers.items():
            values = self.values[key]
            stamp = (values.data_ptr(), values._version)
            if layer["synced"] == stamp and not force:
                continue
            weight = layer["module"].weight
            fused = (layer["base"].float() + values.detach().float()).to(weight.dtype)
            weight.view(-1).index_copy_(0, layer["indices"], fused)
            layer["synced"] = stamp

    def forward(self, *args, **kwargs):
        if not self._attached:
            raise ShiraError("this SparseDeltaModel was detached from its UNet")
        self.sync()
        return self.unet(*args, **kwargs)

    @property
    def num_params(self) -> int:
        return sum(v.numel() for v in self.values.values())

    def adapter(self, dtype: torch.dtype = torch.float16, **metadata) -> SparseAdapter:
        """The trained values as a ``SparseAdapter`` (indices int32, values in ``dtype``)."""
        indices, values, shapes = {}, {}, {}
        for key, layer in self._layers.items():
            name = layer["name"]
            indices[name] = layer["indices"].to(device="cpu", dtype=torch.int32)
            values[name] = self.values[key].detach().to(device="cpu", dtype=dtype).clone()
            shapes[name] = tuple(layer["module"].weight.shape)
        return SparseAdapter(indices=indices, values=values, shapes=shapes, base_arch=self.family, **metadata)

    @torch.no_grad()
    def detach(self) -> nn.Module:
        """Restore the base weights and the layers' own forward; returns the plain UNet."""
        for layer in self._layers.values():
            module = layer["module"]
            module.weight.view(-1).index_copy_(0, layer["indices"], layer["base"])
            if "forward" in module.__dict__:
                del module.forward
        self._attached = False
        return self.unet


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot contain dots


def lora_equivalent_rank(model: SparseDeltaModel) -> float:
    """The LoRA rank with the same parameter count, averaged over the layers (for reports)."""
    ranks = []
    for layer in model._layers.values():
        shape = layer["module"].weight.shape
        rows, cols = shape[0], math.prod(shape[1:])
        ranks.append(len(layer["indices"]) / (rows + cols))
    return sum(ranks) / max(1, len(ranks))
