"""Trans-LoRA for diffusion (``shira transfer``) and LoRA -> SHiRA without training (``shira convert``).

``transfer(TransferConfig(...))`` carries an adapter (SHiRA, diffusers/PEFT LoRA or kohya LoRA) to a
new base with synthetic data only; ``transfer_folder`` does a folder of them (resumable, spread over
``accelerate launch`` processes); ``convert_lora(path, base, rank=...)`` keeps a LoRA's largest
delta entries as a SHiRA adapter. Modules: ``lora`` (reading adapter files, conversion),
``prompts`` (step 1), ``discriminator`` (step 3), ``pipeline`` (the steps and the run), ``resume``
(what an interrupted run keeps, and resuming it), ``batch``, ``evaluate`` (``shira eval transfer``).
"""

from .discriminator import Discriminator, fit_discriminator, image_features, mmd_rbf
from .lora import AdapterFile, Conversion, convert_lora, lora_deltas, read_adapter_file, topk_sparse
from .pipeline import (TransferConfig, check_config, filter_samples, read_seed_data, teacher_images, train_student,
                       transfer)
from .prompts import lm_prompts, neighbour_prompts, synthetic_prompts

__all__ = [
    "AdapterFile", "Conversion", "Discriminator", "TransferConfig", "check_config", "convert_lora", "filter_samples",
    "fit_discriminator", "image_features", "lm_prompts", "lora_deltas", "mmd_rbf", "neighbour_prompts",
    "read_adapter_file", "read_seed_data", "synthetic_prompts", "teacher_images", "topk_sparse", "train_student",
    "transfer",
]
