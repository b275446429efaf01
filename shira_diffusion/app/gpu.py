"""ZeroGPU on Hugging Face Spaces: ``spaces.GPU`` where the ``spaces`` package is importable, a no-op
decorator everywhere else (a laptop, a CPU Space, the tests)."""

from __future__ import annotations

import os

try:  # pragma: no cover - only on Spaces
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

ON_SPACES = bool(os.environ.get("SPACE_ID"))


def gpu(duration: int = 60):
    """``@gpu(duration=...)``: ``spaces.GPU(duration=...)`` on ZeroGPU, else the function unchanged."""
    if spaces is not None:
        return spaces.GPU(duration=duration)
    return lambda function: function


def device() -> str:
    """Where the app's pipelines run: ``$SHIRA_DEVICE``, else CUDA where present (ZeroGPU included),
    else the CPU."""
    if os.environ.get("SHIRA_DEVICE"):
        return os.environ["SHIRA_DEVICE"]
    import torch

    return "cuda" if spaces is not None or torch.cuda.is_available() else "cpu"
