"""``shira bench all``: switching, generation and training measured in one command, on one device.

Meant for a GPU at hand (``--device cuda``: a few minutes); on a CPU the SDXL switch and the
training steps take a long while. Each part is the same function its own subcommand runs.
"""

from __future__ import annotations

from collections.abc import Callable

from .generate import bench_generate, format_generate_table
from .switch import bench_switch, format_switch_table
from .timing import describe_device, resolve_device, resolve_dtype
from .train import bench_train, format_train_table


def bench_all(device: str = "cpu", dtype: str = "fp32", prompts: int = 50, train_latent: int = 32,
              log: Callable[[str], None] = print) -> dict:
    """Switch (SD1.5 and SDXL, Struct, r=16), generation (both toy bases, ``prompts`` each) and
    training (SD1.5, latent ``train_latent``) on ``device`` in ``dtype``."""
    hardware = describe_device(resolve_device(device))
    resolve_dtype(dtype)
    result = {"device": hardware, "dtype": dtype, "switch": {}}
    for arch in ("sd15", "sdxl"):
        log(f"switch, {arch} ...")
        result["switch"][arch] = bench_switch(arch=arch, rank=16, log=log, device=device, dtype=dtype)
    log("generate, toy-sd and toy-sdxl ...")
    result["generate"] = bench_generate(count=prompts, device=device, dtype=dtype)
    log("train, sd15 ...")
    result["train"] = bench_train("sd15", latent=train_latent, log=log, device=device, dtype=dtype)
    return result


def format_all(result: dict) -> str:
    parts = [f"shira bench all on {result['device']} ({result['dtype']})"]
    parts += [format_switch_table(r) for r in result["switch"].values()]
    parts += [format_generate_table(result["generate"]), format_train_table(result["train"])]
    return "\n\n".join(parts)
