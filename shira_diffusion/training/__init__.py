"""Training style adapters (SHiRA, or LoRA as the baseline).

``train(config, pipeline=None, data=None, callbacks=None)`` runs one training run; ``StyleTrainer``
is the same in steps (validate, setup, loop, save, teardown). Modules: ``config`` (``TrainConfig``,
validation, flags), ``dataset`` (images and captions), ``trainer`` (the run), ``checkpoints``
(resumable state tied to its run), ``outputs`` (paths, atomic writes), ``lora_files``, ``loss_plot``.
"""

from .checkpoints import check_owner as check_checkpoint_owner
from .config import (TrainConfig, add_arguments, config_from_args, config_from_dict, fingerprint, parse_flags,
                     validate)
from .dataset import StyleImages, TrainingData, infer_trigger, load_training_data, to_rgb
from .outputs import output_paths
from .trainer import StyleTrainer, TrainCallbacks, TrainingInterrupted, hash_seed, train

__all__ = [
    "StyleImages", "StyleTrainer", "TrainCallbacks", "TrainConfig", "TrainingData", "TrainingInterrupted",
    "add_arguments", "check_checkpoint_owner", "config_from_args", "config_from_dict", "fingerprint", "hash_seed",
    "infer_trigger", "load_training_data", "output_paths", "parse_flags", "to_rgb", "train", "validate",
]
