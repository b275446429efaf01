"""shira-diffusion: sparse high-rank (SHiRA) style adapters for Stable Diffusion UNets.

The core objects:
- ``SparseAdapter``: per-tensor sorted flat indices + values, saved as one safetensors file;
- ``build_masks``: the Struct / Rand / WM / Grad / SNIP mask strategies;
- ``StyleBank``: many adapters for one plain diffusers UNet, fused in place, switched in ms.
"""

from .core.adapter import SparseAdapter
from .core.architecture import TARGET_PRESETS, target_weights, unet_family
from .core.bank import StyleBank
from .errors import AdapterFileError, ArchitectureMismatchError, OutputExistsError, ShiraError
from .core.masks import DEFAULT_MASK, MASK_STRATEGIES, build_masks, calibration_gradients, mask_size
from .core.peft_shira import export_peft_shira, import_peft_shira

__version__ = "0.1.0"

__all__ = [
    "AdapterFileError",
    "ArchitectureMismatchError",
    "DEFAULT_MASK",
    "MASK_STRATEGIES",
    "OutputExistsError",
    "ShiraError",
    "SparseAdapter",
    "StyleBank",
    "TARGET_PRESETS",
    "build_masks",
    "calibration_gradients",
    "export_peft_shira",
    "import_peft_shira",
    "mask_size",
    "target_weights",
    "unet_family",
]
