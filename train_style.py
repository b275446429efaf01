"""Train a style adapter: ``python train_style.py --train_data_dir DIR --output ink.safetensors``.

Runs as is on a CPU or one GPU, and under ``accelerate launch`` on several GPUs (or CPU processes).
Flags follow diffusers' ``train_text_to_image_lora.py``; the implementation is
``shira_diffusion.training``. Ctrl-C saves a resumable checkpoint and exits with status 130; the
same command with ``--resume_from_checkpoint latest`` finishes the run.
"""

import logging
import sys

from shira_diffusion.errors import ShiraError
from shira_diffusion.quality.self_check import summary_line
from shira_diffusion.training import TrainingInterrupted, parse_flags, train

PROG = "train_style.py"


def main(argv=None) -> int:
    config = parse_flags(argv, prog=PROG)  # a bad flag: one line, exit 2
    handler = _show_progress_messages()
    try:
        record = train(config)
    except ShiraError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"{PROG}: interrupted at step {exc.record['steps']} of {exc.record['total_steps']}; checkpoint "
              f"{exc.record['checkpoint']}: run the same command with --resume_from_checkpoint latest to finish",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        # Before the first step, or a second Ctrl-C: nothing saved since the last periodic checkpoint.
        print(f"{PROG}: interrupted (nothing saved since the last checkpoint, if any)", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("shira_diffusion").removeHandler(handler)
    trigger = f"; trigger {record['trigger']!r} (inferred from the captions)" if record["trigger_inferred"] else ""
    print(f"wrote {record['files']['adapter']} ({record['trainable_params']:,} parameters, {record['seconds']} s"
          f"{trigger})")
    if "self_check" in record:
        print(summary_line(record["self_check"]))
    return 0


def _show_progress_messages() -> logging.Handler:
    """The library's log (loading, an inferred trigger, checkpoints) on stderr, as plain lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("shira_diffusion")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


if __name__ == "__main__":
    sys.exit(main())
