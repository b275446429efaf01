"""Benchmarks that print ratios measured side by side in one run (``shira bench ...``).

``bench_switch`` builds the full-size SD1.5 or SDXL UNet from its diffusers config with random
weights (no download; switch and merge timings do not depend on weight values) and times, at equal
trainable-parameter counts and identical target layers:

- this project's warm switch: mix A fused -> mix B fused, both adapters held by a StyleBank;
- diffusers' LoRA warm switch through its public API: ``unet.unfuse_lora()`` then
  ``unet.fuse_lora(adapter_names=[other])``, both LoRAs loaded;
- PEFT SHiRA's switch: unmerge then merge of the other adapter on every SHiRA layer (what
  ``PeftModel.unmerge_adapter`` / ``merge_adapter`` run);
- cold switch: from the adapter file on disk to fused, against diffusers loading the same LoRA
  from disk and fusing it, both through the model API (``unet.load_lora_adapter`` +
  ``unet.fuse_lora``, the leaner path) and the pipeline API most users call
  (``pipe.load_lora_weights`` + ``pipe.fuse_lora``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import torch

from ..core.adapter import SparseAdapter
from ..core.architecture import random_full_size_unet, target_weights, unet_family
from ..core.bank import StyleBank
from ..core.masks import DEFAULT_MASK, build_masks, described_struct_indices, matrix_shape
from ..errors import ShiraError
from .timing import describe_device, median_ms, resolve_device, resolve_dtype, timed

LORA_FILE = "pytorch_lora_weights.safetensors"

_median_ms = median_ms
_DEVICE: torch.device | None = None  # the run's device: every timing waits for its queued work


def _timed(fn: Callable[[], object]) -> float:
    return timed(fn, _DEVICE)


def _cold_median(repeats: int, load: Callable[[int], object], unload: Callable[[], object]) -> float:
    """Median time of ``load(i)`` (file -> fused), with the untimed ``unload()`` after each."""
    samples = []
    for i in range(repeats):
        samples.append(_timed(lambda: load(i)))
        unload()
    return _median_ms(samples)


def random_adapter(
    weights: dict[str, torch.Tensor],
    family: str,
    mask: str,
    *,
    rank: int | None,
    density: float | None,
    seed: int,
    name: str,
    slot: int | None = None,
    masks: dict[str, torch.Tensor] | None = None,
) -> SparseAdapter:
    """An adapter with random values on a real mask (``slot``: a Struct slot; ``masks``: reuse these).
    Grad/SNIP get synthetic gradients (one set per seed, as each style has its own calibration
    data): their masks are unstructured top-k sets."""
    gradients = None
    if mask in ("grad", "snip"):
        generator = torch.Generator().manual_seed(seed)
        gradients = {n: torch.randn(w.shape, generator=generator) for n, w in weights.items()}
    if masks is None:
        masks = build_masks(weights, mask, rank=rank, density=density, gradients=gradients, seed=seed, slot=slot)
    generator = torch.Generator().manual_seed(10_000 + seed)
    return SparseAdapter(
        indices={n: m.to(torch.int32) for n, m in masks.items()},
        values={n: torch.randn(len(m), generator=generator) * 1e-3 for n, m in masks.items()},
        shapes={n: tuple(w.shape) for n, w in weights.items()},
        base_arch=family,
        mask=mask,
        name=name,
    )


def _peft_merge(unet, adapter_name: str) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=[adapter_name])


def _peft_unmerge(unet) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.unmerge()


def bench_switch(
    arch: str = "sd15",
    mask: str = DEFAULT_MASK,
    rank: int | None = 16,
    density: float | None = None,
    targets: str = "attn",
    repeats: int = 7,
    log: Callable[[str], None] = print,
    unet=None,
    device: str = "cpu",
    dtype: str = "fp32",
) -> dict:
    """Run the switch benchmark on ``device`` with the UNet's weights in ``dtype``; ``unet``
    replaces the full-size one (tests use tiny UNets)."""
    global _DEVICE
    from peft import LoraConfig, ShiraConfig, get_peft_model_state_dict

    if repeats < 5:
        raise ShiraError("repeats must be at least 5 (medians of fewer runs are noise)")
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    if density is not None:
        rank = None
    if unet is None:
        log(f"building the full-size {arch} UNet with random weights ...")
        unet = random_full_size_unet(arch)
    unet = unet.to(torch_device, torch_dtype)
    _DEVICE = torch_device
    family = unet_family(unet)
    weights = target_weights(unet, targets)
    modules = sorted(n[: -len(".weight")] for n in weights)
    sum_dims = sum(sum(matrix_shape(w.shape)) for w in weights.values())
    result: dict = {
        "arch": arch,
        "mask": mask,
        "targets": targets,
        "rank": rank,
        "density": density,
        "layers": len(weights),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "device": describe_device(torch_device),
        "dtype": dtype,
    }

    # ------------------------------------------------------------ this project
    log(f"building two {mask} adapters ...")
    ad_a = random_adapter(weights, family, mask, rank=rank, density=density, seed=1, name="a")
    ad_b = random_adapter(weights, family, mask, rank=rank, density=density, seed=2, name="b")
    result["shira_params"] = ad_a.num_params
    result["shira_density"] = round(ad_a.density, 6)
    lora_rank = rank if rank is not None else max(1, round(ad_a.num_params / sum_dims))
    result["lora_rank"] = lora_rank

    bank = StyleBank(unet)
    bank.add(ad_a)
    bank.add(ad_b)
    bank.apply({"a": 1.0})
    warm = [_timed(lambda m=m: bank.apply({m: 1.0})) for _ in range(repeats) for m in ("b", "a")]
    mixed = [_timed(lambda m=m: bank.apply(m)) for _ in range(repeats) for m in ({"a": 0.7, "b": 0.4}, {"a": 1.0})]
    restore = []
    for _ in range(repeats):
        bank.apply({"a": 1.0})
        restore.append(_timed(bank.restore))
    result["shira_warm_switch_ms"] = _median_ms(warm)
    result["shira_mix_switch_ms"] = _median_ms(mixed)
    result["shira_restore_ms"] = _median_ms(restore)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "style.safetensors")
        ad_a.save(path)
        result["shira_file_mb"] = round(os.path.getsize(path) / 2**20, 2)
        if mask == DEFAULT_MASK:  # the same adapter with its mask described, not listed (format version 2)
            described = os.path.join(tmp, "described.safetensors")
            SparseAdapter(indices=ad_a.indices, values=ad_a.values, shapes=ad_a.shapes, base_arch=family,
                          mask=mask, name="a").with_mask_spec(None).save(described)
            result["shira_described_file_mb"] = round(os.path.getsize(described) / 2**20, 2)
        # Cold: a new adapter file into a bank already serving this base (mix B fused).
        cold = []
        for i in range(repeats):
            bank.apply({"b": 1.0})
            cold.append(_timed(lambda i=i: bank.apply({bank.load(path, name=f"cold{i}"): 1.0})))
            bank.remove(f"cold{i}")
        result["shira_cold_switch_ms"] = _median_ms(cold)
        bank.restore()
        # The same into an empty bank: adds building the scatter plans of a mask never seen.
        cold_first = []
        for _ in range(repeats):
            fresh = StyleBank(unet)
            cold_first.append(_timed(lambda: fresh.apply({fresh.load(path): 1.0})))
            fresh.restore()
        result["shira_cold_first_ms"] = _median_ms(cold_first)
        if mask == DEFAULT_MASK:  # the file as training writes it: the mask rebuilt from its description
            cold_described = []
            for _ in range(repeats):
                described_struct_indices.cache_clear()  # each repeat a first load, as in a new process
                fresh = StyleBank(unet)
                cold_described.append(_timed(lambda: fresh.apply({fresh.load(described): 1.0})))
                fresh.restore()
            result["shira_cold_first_described_ms"] = _median_ms(cold_described)
    del bank, fresh
    if mask == DEFAULT_MASK:
        result.update(_slot_and_scale_rows(unet, weights, family, rank, density, repeats, ad_a, log))

    # ------------------------------------------------------------ diffusers LoRA
    log(f"diffusers LoRA r={lora_rank} on the same {len(modules)} layers ...")
    lora_config = LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=modules, init_lora_weights=False)
    unet.add_adapter(lora_config, adapter_name="lora_a")
    unet.add_adapter(lora_config, adapter_name="lora_b")
    result["lora_params"] = _lora_params(unet, "lora_a")
    unet.fuse_lora(adapter_names=["lora_a"])
    lora_warm = []
    for _ in range(repeats):
        for other in ("lora_b", "lora_a"):
            lora_warm.append(_timed(lambda o=other: (unet.unfuse_lora(), unet.fuse_lora(adapter_names=[o]))))
    result["diffusers_lora_warm_switch_ms"] = _median_ms(lora_warm)
    with tempfile.TemporaryDirectory() as model_dir, tempfile.TemporaryDirectory() as pipe_dir:
        # The same LoRA in both diffusers layouts: the model-level file, and the pipeline file
        # (keys prefixed "unet.") that LoRAs are shared as.
        unet.save_lora_adapter(model_dir, adapter_name="lora_a")
        pipeline_class = _pipeline_class(family)
        pipeline_class.save_lora_weights(pipe_dir, unet_lora_layers=get_peft_model_state_dict(unet, adapter_name="lora_a"))
        result["lora_file_mb"] = round(os.path.getsize(os.path.join(model_dir, LORA_FILE)) / 2**20, 2)
        unet.unfuse_lora()
        unet.unload_lora()

        def model_level(i: int):
            unet.load_lora_adapter(model_dir, weight_name=LORA_FILE, adapter_name=f"cold{i}", prefix=None)
            unet.fuse_lora(adapter_names=[f"cold{i}"])

        result["diffusers_lora_cold_switch_ms"] = _cold_median(
            repeats, model_level, lambda: (unet.unfuse_lora(), unet.unload_lora())
        )

        pipe = _unet_only_pipeline(pipeline_class, unet)

        def pipeline_level(i: int):
            pipe.load_lora_weights(pipe_dir, adapter_name=f"cold{i}")
            pipe.fuse_lora(adapter_names=[f"cold{i}"])

        result["diffusers_pipeline_lora_cold_switch_ms"] = _cold_median(
            repeats, pipeline_level, lambda: (pipe.unfuse_lora(), pipe.unload_lora_weights())
        )
        del pipe

    # ------------------------------------------------------------ PEFT SHiRA
    if all(w.dim() == 2 for w in weights.values()):
        log(f"PEFT SHiRA r={lora_rank} on the same layers ...")
        unet.add_adapter(ShiraConfig(r=lora_rank, target_modules=modules, random_seed=1), adapter_name="shira_a")
        unet.add_adapter(ShiraConfig(r=lora_rank, target_modules=modules, random_seed=2), adapter_name="shira_b")
        result["peft_shira_params"] = _lora_params(unet, "shira_a")
        _peft_merge(unet, "shira_a")
        peft_warm = []
        for _ in range(repeats):
            for other in ("shira_b", "shira_a"):
                peft_warm.append(_timed(lambda o=other: (_peft_unmerge(unet), _peft_merge(unet, o))))
        result["peft_shira_warm_switch_ms"] = _median_ms(peft_warm)
        _peft_unmerge(unet)
        unet.unload_lora()
    else:
        log("PEFT SHiRA covers nn.Linear only: skipped for targets with convolutions")
        result["peft_shira_params"] = None
        result["peft_shira_warm_switch_ms"] = None

    result["speedup_vs_diffusers_lora"] = round(
        result["diffusers_lora_warm_switch_ms"] / result["shira_warm_switch_ms"], 1
    )
    result["speedup_vs_peft_shira"] = (
        round(result["peft_shira_warm_switch_ms"] / result["shira_warm_switch_ms"], 1)
        if result["peft_shira_warm_switch_ms"]
        else None
    )
    result["cold_speedup_vs_diffusers_lora"] = round(
        result["diffusers_lora_cold_switch_ms"] / result["shira_cold_switch_ms"], 1
    )
    result["cold_speedup_vs_diffusers_pipeline_lora"] = round(
        result["diffusers_pipeline_lora_cold_switch_ms"] / result["shira_cold_switch_ms"], 1
    )
    return result


def _floor_ms(entries: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """A plain contiguous copy of as many values as a switch writes: the floor a switch is measured
    against (a switch also has to find its entries)."""
    source = torch.randn(entries, device=device).to(dtype)
    target = torch.empty_like(source)
    target.copy_(source)
    return median_ms([_timed(lambda: target.copy_(source)) for _ in range(repeats)])


def _slot_and_scale_rows(unet, weights, family, rank, density, repeats, single, log) -> dict:
    """Struct only: mixes of styles on disjoint slots, the floor each switch is measured against,
    and a bank holding 100 styles."""
    rows = {}
    dtype = next(iter(weights.values())).dtype
    device = next(iter(weights.values())).device
    log("four adapters on Struct slots 0-3 ...")
    slots = [random_adapter(weights, family, DEFAULT_MASK, rank=rank, density=density, seed=20 + k, name=f"s{k}",
                            slot=k) for k in range(4)]
    bank = StyleBank(unet)
    for adapter in slots:
        bank.add(adapter)
    entries = single.num_params
    rows["floor_single_ms"] = _floor_ms(entries, dtype, device, repeats)
    rows["floor_two_ms"] = _floor_ms(2 * entries, dtype, device, repeats)
    rows["floor_four_ms"] = _floor_ms(4 * entries, dtype, device, repeats)
    bank.apply({"s0": 1.0})
    rows["slot_switch_ms"] = median_ms([_timed(lambda m=m: bank.apply({m: 1.0}))
                                        for _ in range(repeats) for m in ("s1", "s0")])
    pairs = ({"s0": 1.0, "s1": 1.0}, {"s2": 1.0, "s3": 1.0})
    rows["slot_mix_two_ms"] = median_ms([_timed(lambda m=m: bank.apply(m)) for _ in range(repeats) for m in pairs])
    fours = ({"s0": 1.0, "s1": 0.5, "s2": 1.0, "s3": 0.5}, {"s0": 0.5, "s1": 1.0, "s2": 0.5, "s3": 1.0})
    rows["slot_mix_four_ms"] = median_ms([_timed(lambda m=m: bank.apply(m)) for _ in range(repeats) for m in fours])
    bank.restore()
    del bank
    log("a bank holding 100 styles on one mask ...")
    masks = {n: single.indices[n].long() for n in single.indices}
    bank = StyleBank(unet)
    for k in range(100):
        bank.add(random_adapter(weights, family, DEFAULT_MASK, rank=rank, density=density, seed=100 + k,
                                name=f"h{k}", masks=masks))
        if k == 1:
            bank.apply({"h0": 1.0})
            rows["held_2_switch_ms"] = median_ms([_timed(lambda m=m: bank.apply({m: 1.0}))
                                                  for _ in range(repeats) for m in ("h1", "h0")])
    bank.apply({"h0": 1.0})
    rows["held_100_switch_ms"] = median_ms([_timed(lambda m=m: bank.apply({m: 1.0}))
                                            for _ in range(repeats) for m in ("h99", "h0")])
    rows["held_style_mb"] = round(bank._entries["h1"].values.nbytes / 2**20, 2)
    bank.restore()
    rows["slot_vs_floor"] = round(rows["slot_switch_ms"] / rows["floor_single_ms"], 1)
    rows["slot_mix_two_vs_floor"] = round(rows["slot_mix_two_ms"] / rows["floor_two_ms"], 1)
    rows["slot_mix_four_vs_floor"] = round(rows["slot_mix_four_ms"] / rows["floor_four_ms"], 1)
    return rows


def _pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _unet_only_pipeline(pipeline_class, unet):
    """A pipeline around the benchmark UNet: ``load_lora_weights`` only needs the UNet when the
    LoRA file has no text-encoder keys, and full-size text encoders would only cost memory."""
    from diffusers import DDIMScheduler

    parts = dict(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=DDIMScheduler())
    if pipeline_class.__name__ == "StableDiffusionXLPipeline":
        parts.update(text_encoder_2=None, tokenizer_2=None)
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipeline_class(**parts)


def _lora_params(unet, adapter_name: str) -> int:
    """Trainable entries of one PEFT adapter (LoRA A+B, or SHiRA values) on the UNet."""
    suffix = f".{adapter_name}.weight"
    plain = f".{adapter_name}"
    return sum(p.numel() for n, p in unet.named_parameters() if n.endswith(suffix) or n.endswith(plain))


def format_switch_table(r: dict) -> str:
    rows = [
        ("warm switch A -> B (fused)", r["shira_warm_switch_ms"], r["diffusers_lora_warm_switch_ms"], r["peft_shira_warm_switch_ms"]),
        ("cold switch file -> fused", r["shira_cold_switch_ms"], r["diffusers_lora_cold_switch_ms"], None),
        ("  same, diffusers pipeline API", None, r["diffusers_pipeline_lora_cold_switch_ms"], None),
    ]
    def cell(v):
        return "n/a" if v is None else f"{v:.1f}"
    lines = [
        f"{r['arch']} UNet, {r['targets']} targets, mask {r['mask']}, "
        f"{r['shira_params']:,} SHiRA params vs LoRA r={r['lora_rank']} ({r['lora_params']:,} params), "
        f"median of {r['repeats']}, {r.get('device', str(r['torch_threads']) + ' threads')}, {r.get('dtype', 'fp32')}",
        f"| {'ms':28} | shira-diffusion | diffusers LoRA | PEFT SHiRA |",
        f"|{'-' * 30}|-----------------|----------------|------------|",
    ]
    for label, ours, lora, peft in rows:
        lines.append(f"| {label:28} | {cell(ours):>15} | {cell(lora):>14} | {cell(peft):>10} |")
    lines.append(
        f"speedup vs diffusers LoRA {r['speedup_vs_diffusers_lora']}x, vs PEFT SHiRA "
        f"{r['speedup_vs_peft_shira']}x, cold vs diffusers {r['cold_speedup_vs_diffusers_lora']}x "
        f"(pipeline API {r['cold_speedup_vs_diffusers_pipeline_lora']}x); "
        f"mix of two {r['shira_mix_switch_ms']:.1f} ms, restore {r['shira_restore_ms']:.1f} ms, "
        f"cold into an empty bank {r['shira_cold_first_ms']:.1f} ms"
        + (f" ({r['shira_cold_first_described_ms']:.1f} ms with the mask described)"
           if "shira_cold_first_described_ms" in r else "")
    )
    if "slot_switch_ms" in r:
        lines.append(
            f"Struct slots (disjoint masks): switch {r['slot_switch_ms']:.1f} ms ({r['slot_vs_floor']}x a plain copy of "
            f"the same bytes, {r['floor_single_ms']:.1f} ms; the shared-mask switch is "
            f"{r['shira_warm_switch_ms'] / r['floor_single_ms']:.1f}x), mix of two {r['slot_mix_two_ms']:.1f} ms "
            f"({r['slot_mix_two_vs_floor']}x), of four {r['slot_mix_four_ms']:.1f} ms ({r['slot_mix_four_vs_floor']}x); "
            f"a bank holding 100 styles switches in {r['held_100_switch_ms']:.1f} ms against "
            f"{r['held_2_switch_ms']:.1f} ms with 2 held, {r['held_style_mb']} MB per held style")
    return "\n".join(lines)
