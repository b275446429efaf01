"""Train a style adapter: ``python train_style.py --train_data_dir DIR --output ink.safetensors``.

Runs as is on a CPU or one GPU, and under ``accelerate launch`` on several GPUs (or CPU processes).
Flags follow diffusers' ``train_text_to_image_lora.py``; the implementation is
``shira_diffusion.training``.
"""

import argparse
import sys

from shira_diffusion.errors import ShiraError
from shira_diffusion.training.trainer import add_arguments, config_from_args, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    try:
        record = train(config_from_args(parser.parse_args(argv)))
    except ShiraError as exc:
        print(f"train_style.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {record['files']['adapter']} ({record['trainable_params']:,} parameters, {record['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
