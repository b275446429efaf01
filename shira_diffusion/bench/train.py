"""``shira bench train``: one training step of this project's SHiRA vs PEFT LoRA vs PEFT SHiRA.

The full-size SD1.5 (or SDXL) UNet built from its config with random weights (no download), the
same targets and the same number of trainable parameters (LoRA rank r; SHiRA r*(m+n) entries per
layer, Struct mask), small latents so a step fits on a CPU. Each variant runs in its own process
so that its peak memory is its own: a thread samples the resident set size (RSS) every
millisecond, and the figure is the peak during the steps minus the RSS before the first timed step
(model, adapter, inputs and optimizer state loaded); RSS on a CPU is coarse (the allocator keeps
freed memory). The exact figure is the size of the distinct tensors autograd saves for the
backward pass of one forward (activations; parameters saved by reference excluded), and the
trainable state (values, gradients, Adam's two moments). Step time is the median of the timed steps.
Of the saved activations, the adapter's own are those saved only inside the adapted layers (the
rest the frozen UNet keeps for backpropagation through it, which any method pays): they bound
what a training method can save at all.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("shira", "peft-lora", "peft-shira")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    def __enter__(self):
        self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def run_variant(variant: str, arch: str = "sd15", rank: int = 16, latent: int = 32, steps: int = 3,
                targets: str = "attn", unet=None, device: str = "cpu", dtype: str = "fp32") -> dict:
    """Time ``steps`` optimizer steps of one variant (after one warm-up step) in this process, on
    ``device``; ``dtype`` other than fp32 runs the forward under autocast to it (fp32 master
    weights, as accelerate's mixed precision). On CUDA the memory figure is the allocator's peak
    above the loaded model instead of the process's RSS."""
    from peft import LoraConfig, ShiraConfig

    from ..core.architecture import random_full_size_unet, resolve_targets, target_weights
    from ..core.masks import build_masks
    from ..core.sparse_training import SparseDeltaModel
    from .timing import resolve_device, resolve_dtype, synchronize

    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    unet = unet if unet is not None else random_full_size_unet(arch)
    unet = unet.to(torch_device)
    unet.train()
    modules = list(resolve_targets(targets))
    if variant == "shira":
        masks = build_masks(target_weights(unet, targets), "struct", rank=rank)
        model = SparseDeltaModel(unet, masks)
        params = list(model.values.parameters())
    elif variant == "peft-lora":
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=modules, init_lora_weights="gaussian"))
        model, params = unet, [p for p in unet.parameters() if p.requires_grad]
    elif variant == "peft-shira":
        unet.add_adapter(ShiraConfig(r=rank, target_modules=modules, random_seed=0))
        model, params = unet, [p for p in unet.parameters() if p.requires_grad]
    else:
        raise ValueError(f"unknown variant {variant!r}")
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    config = unet.config
    latents = torch.randn(1, config.in_channels, latent, latent, generator=g).to(torch_device)
    states = torch.randn(1, 77, config.cross_attention_dim, generator=g).to(torch_device)
    kwargs = {}
    if config.addition_embed_type == "text_time":
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, text_dim, generator=g).to(torch_device),
                                       "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]], device=torch_device)}
    noise = torch.randn(latents.shape, generator=g).to(torch_device)
    timestep = torch.tensor([500], device=torch_device)
    autocast = torch.autocast(torch_device.type, dtype=torch_dtype, enabled=torch_dtype != torch.float32)

    def forward():
        with autocast:
            return model(latents, timestep, states, **kwargs).sample

    def step():
        loss = F.mse_loss(forward().float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state allocated, allocator settled
    times = []
    synchronize(torch_device)
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    with _PeakRSS() as peak:
        before = _rss_bytes() if torch_device.type == "cpu" else torch.cuda.memory_allocated(torch_device)
        for _ in range(steps):
            started = time.perf_counter()
            step()
            synchronize(torch_device)
            times.append(time.perf_counter() - started)
    if torch_device.type == "cuda":
        peak.peak = torch.cuda.max_memory_allocated(torch_device)
    adapted = ({layer["module"] for layer in model._layers.values()} if variant == "shira"
               else {m for m in unet.modules() if hasattr(m, "base_layer")})  # PEFT's wrapped layers
    saved, own = _saved_for_backward(model, forward, adapted)
    return {"variant": variant, "trainable_params": sum(p.numel() for p in params),
            "step_ms": 1000 * statistics.median(times), "peak_mb_above_loaded": (peak.peak - before) / 2**20,
            "saved_for_backward_mb": saved / 2**20, "saved_by_adapter_mb": own / 2**20,
            "state_mb": sum(p.numel() * p.element_size() for p in params) * 4 / 2**20}  # values, grads, Adam's 2


def _saved_for_backward(model, forward, adapted: set[nn.Module] = frozenset()) -> tuple[int, int]:
    """Bytes of the distinct tensors autograd keeps for the backward pass of one forward, other than
    parameters (saved by reference): the activation memory a training method costs. Second: the
    bytes of those only saved inside ``adapted`` layers (the adapter's own; a tensor the frozen UNet
    keeps as well, such as an attention output, is the UNet's)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    by_unet: set[int] = set()
    inside = [0]  # how many adapted layers the forward is in

    def pack(tensor):
        parts = (tensor._values(), tensor._indices()) if tensor.layout != torch.strided else (tensor,)
        for part in parts:  # a sparse COO tensor (PEFT SHiRA's delta): its values and indices
            storage = part.untyped_storage()
            if storage.data_ptr() not in parameters:
                seen[storage.data_ptr()] = storage.nbytes()
                if not inside[0]:
                    by_unet.add(storage.data_ptr())
        return tensor

    def enter(module, args):
        inside[0] += module in adapted

    def leave(module, args, output):
        inside[0] -= module in adapted

    hooks = [torch.nn.modules.module.register_module_forward_pre_hook(enter),
             torch.nn.modules.module.register_module_forward_hook(leave)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = forward()
        del out
    finally:
        for hook in hooks:
            hook.remove()
    return sum(seen.values()), sum(size for ptr, size in seen.items() if ptr not in by_unet)


def bench_train(arch: str = "sd15", rank: int = 16, latent: int = 32, steps: int = 5, log=print,
                device: str = "cpu", dtype: str = "fp32") -> dict:
    """All variants, each in a fresh process, side by side; ratios against PEFT LoRA."""
    from .timing import describe_device, resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    resolve_dtype(dtype)
    results = {}
    for variant in VARIANTS:
        log(f"{variant}: building the {arch} UNet and timing {steps} steps on {device} ({dtype}) ...")
        code = ("import json, sys; from shira_diffusion.bench.train import run_variant; "
                f"print(json.dumps(run_variant({variant!r}, {arch!r}, {rank}, {latent}, {steps}, "
                f"device={device!r}, dtype={dtype!r})))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{done.stderr[-2000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    shira, lora, peft_shira = results["shira"], results["peft-lora"], results["peft-shira"]
    return {
        "arch": arch, "rank": rank, "latent": latent, "steps": steps, "threads": torch.get_num_threads(),
        "device": describe_device(torch_device), "dtype": dtype,
        "variants": results,
        "shira_vs_lora_memory": shira["peak_mb_above_loaded"] / lora["peak_mb_above_loaded"],
        "shira_vs_lora_saved": shira["saved_for_backward_mb"] / lora["saved_for_backward_mb"],
        "shira_vs_lora_time": shira["step_ms"] / lora["step_ms"],
        "peft_shira_vs_shira_time": peft_shira["step_ms"] / shira["step_ms"],
        # Saved activations of an adapter that kept nothing of its own, against LoRA's.
        "no_adapter_activations_vs_lora_saved": 1 - lora["saved_by_adapter_mb"] / lora["saved_for_backward_mb"],
    }


def format_train_table(r: dict) -> str:
    lines = [f"{r['arch']} UNet, latent {r['latent']}, {r.get('device', 'CPU')}, {r.get('dtype', 'fp32')}",
             "| variant | trainable params | step (median) | peak memory above loaded model | saved for backward "
             "| of which the adapter's own | params + grads + Adam |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in r["variants"].values():
        lines.append(f"| {v['variant']} | {v['trainable_params']:,} | {v['step_ms']:.0f} ms | "
                     f"{v['peak_mb_above_loaded']:.0f} MB | {v['saved_for_backward_mb']:.1f} MB | "
                     f"{v['saved_by_adapter_mb']:.1f} MB | {v['state_mb']:.1f} MB |")
    lines.append(f"\nSHiRA / LoRA: peak RSS {r['shira_vs_lora_memory']:.2f}x, saved activations "
                 f"{r['shira_vs_lora_saved']:.2f}x, step time {r['shira_vs_lora_time']:.2f}x; "
                 f"PEFT SHiRA is {r['peft_shira_vs_shira_time']:.2f}x slower than this SHiRA; an adapter that "
                 f"kept no activation of its own would be at {r['no_adapter_activations_vs_lora_saved']:.2f}x "
                 f"LoRA's saved activations")
    return "\n".join(lines)
