"""What every benchmark shares: the device and dtype it runs on, and timings that wait for it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from ..errors import ShiraError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; a clear error where the device is not there."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ShiraError(f"unknown device {name!r} (cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ShiraError("--device cuda: no CUDA device is available here (torch sees none)")
    if device.type not in ("cpu", "cuda"):
        raise ShiraError(f"device {name!r}: the benchmarks run on cpu or cuda")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ShiraError(f"unknown dtype {name!r} (choose {', '.join(DTYPES)})")
    return DTYPES[name]


def describe_device(device: torch.device) -> str:
    """The hardware, in words, for the benchmark's header and JSON."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds ``fn`` takes, the device's queued work included (CUDA runs asynchronously)."""
    if device is not None:
        synchronize(device)
    start = time.perf_counter()
    fn()
    if device is not None:
        synchronize(device)
    return time.perf_counter() - start


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 3)
