"""A training run's settings: ``TrainConfig``, its validation, its fingerprint, and the command-line
flags generated from it.

Every flag's default and help text lives once, on the field (``field(metadata={"help": ...})``):
``add_arguments`` builds the ``argparse`` flags of ``train_style.py`` and ``shira train`` from
``dataclasses.fields(TrainConfig)``. (``transformers.HfArgumentParser`` reads the same metadata,
but it owns its parser, so it cannot fill ``shira``'s ``train`` subparser, and it has no mutually
exclusive groups (``--density``/``--rank``); the generator here is 40 lines.)

``validate`` checks every field without touching a file or a model; the trainer runs it, and then
the checks that need the file system (data, output, checkpoints), before any model loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field

from ..core.architecture import TARGET_PRESETS, resolve_targets
from ..core.masks import DEFAULT_MASK, MASK_STRATEGIES, SLOTS
from ..errors import ShiraError

DEFAULT_RANK = 2
ADAPTERS = ("shira", "lora")
MIXED_PRECISION = ("no", "fp16", "bf16")
SAVE_DTYPES = ("fp16", "bf16", "fp32")
# diffusers.optimization.SchedulerType, less ``piecewise_constant`` (it needs step rules no flag gives).
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MAX_SEED = 2**63  # seeds are 63-bit (``hash_seed``, mask seeds): [0, 2**63)

# Fields that do not shape the trained values: progress display, where and how files are written,
# resuming, checkpoint and validation-image bookkeeping. Every other field is part of a run's
# fingerprint, and a checkpoint resumes only a run whose fingerprint matches.
BOOKKEEPING_FIELDS = frozenset({
    "output", "progress", "overwrite", "resume_from_checkpoint", "checkpointing_steps", "validation_prompt",
    "validation_steps", "num_validation_images", "name", "description", "save_dtype", "kohya", "extra",
    "discriminator", "discriminator_samples", "discriminator_sample_steps", "no_check",
})


def _help(text: str, **flag) -> dict:
    """Field metadata: the flag's help text, plus argparse settings (``choices``, ``group``, ``cli=False``,
    ``aliases`` for a bool flag)."""
    return {"help": text, **flag}


@dataclass
class TrainConfig:
    """The flags of ``train_style.py`` (names follow diffusers' ``train_text_to_image_lora.py``)."""

    train_data_dir: str | None = field(metadata=_help(
        "images with same-name .txt captions (UTF-8), or an imagefolder with metadata.jsonl"))
    output: str = field(metadata=_help("the adapter file to write (.safetensors)"))
    base: str = field(default="toy-sd", metadata=_help(
        "toy-sd, toy-sdxl, a Hub id (local cache), a diffusers folder or a checkpoint file"))
    trigger: str | None = field(default=None, metadata=_help(
        "a word appended to every caption and stored in the adapter ('shira generate --style' adds it); "
        "default: a phrase every caption shares after (or before) a comma, if there is one"))
    adapter: str = field(default="shira", metadata=_help("the adapter kind", choices=ADAPTERS))
    mask: str = field(default=DEFAULT_MASK, metadata=_help("SHiRA mask strategy", choices=MASK_STRATEGIES))
    mask_slot: str = field(default="auto", metadata=_help(
        f"Struct slot, 0-{SLOTS - 1}: styles of one size on different slots share no weight entry, so they mix "
        "without touching each other; 'auto' (default) takes the lowest slot no style in the catalogue uses "
        "on this base; 'none': the shared Struct mask"))
    density: float | None = field(default=None, metadata=_help(
        "SHiRA: share of each adapted weight's entries, in (0, 1]", group="size"))
    # Default 2 when no density is given (SHiRA: r*(m+n) entries per layer).
    rank: int | None = field(default=None, metadata=_help(
        f"LoRA rank, or SHiRA's equal-parameter rank r*(m+n) (default {DEFAULT_RANK})", group="size"))
    # Every projection and resnet convolution at rank 2 (1.7-1.8 % of a toy UNet): styles learned
    # far better than on the attention projections alone at rank 8, the same parameter count.
    targets: str = field(default="all", metadata=_help(
        "attention projections; + feed-forward; + the transformer projections and resnet convolutions (default); "
        "all-but-text-kv: all but the cross-attention keys and values", choices=tuple(TARGET_PRESETS)))
    resolution: int | None = field(default=None, metadata=_help(
        "training image size, a multiple of 8 (default: the base's native size)"))
    train_batch_size: int = field(default=4, metadata=_help("images per step (per process under accelerate)"))
    max_train_steps: int = field(default=1000, metadata=_help("optimizer steps"))
    # SHiRA values are weight entries; LoRA uses the same.
    learning_rate: float = field(default=3e-3, metadata=_help("AdamW learning rate (> 0)"))
    lr_scheduler: str = field(default="constant", metadata=_help("a diffusers learning-rate schedule",
                                                                 choices=LR_SCHEDULERS))
    lr_warmup_steps: int = field(default=0, metadata=_help("warm-up steps of the schedule"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    mixed_precision: str = field(default="no", metadata=_help("autocast precision", choices=MIXED_PRECISION))
    gradient_checkpointing: bool = field(default=False, metadata=_help("trade compute for activation memory"))
    checkpointing_steps: int = field(default=0, metadata=_help(
        "save a resumable checkpoint every N steps (0: only when stopped or interrupted)"))
    resume_from_checkpoint: str | None = field(default=None, metadata=_help(
        "'latest' (this output's .checkpoints folder) or a checkpoint file of the same run"))
    validation_prompt: str | None = field(default=None, metadata=_help(
        "images for this prompt are saved during training"))
    validation_steps: int = field(default=100, metadata=_help("draw validation images every N steps"))
    num_validation_images: int = field(default=4, metadata=_help("validation images per prompt"))
    # kohya's caption_dropout_rate
    caption_dropout: float = field(default=0.1, metadata=_help(
        "share of captions replaced by the empty prompt, so the style survives classifier-free guidance "
        "(default 0.1)"))
    # Min-SNR loss weighting (Hang et al. 2023), as diffusers' --snr_gamma
    snr_gamma: float | None = field(default=5.0, metadata=_help(
        "Min-SNR loss weighting with this gamma (default 5, the paper's choice; 0 turns it off)"))
    # per-channel offset added to the noise, as diffusers' --noise_offset
    noise_offset: float = field(default=0.1, metadata=_help(
        "noise offset (default 0.1; 0 turns it off): lets a style change overall brightness and color"))
    # Saves an exponential moving average of the trained values instead of the last step's
    # (diffusers' --use_ema, through its EMAModel; its decay warms up as (1+t)/(10+t)).
    ema_decay: float | None = field(default=None, metadata=_help(
        "save an exponential moving average of the trained values with this decay (e.g. 0.99; diffusers' "
        "EMAModel) instead of the last step's"))
    # Also trains the prediction classifier-free guidance will make at this scale, u + s * (c - u),
    # against the same target (one more forward on the empty caption per image): a look that the
    # guided extrapolation washes out (a dark palette comes out bright at 5) is taught to survive it,
    # at a cost in content (README, "Training a style").
    guided_loss_scale: float | None = field(default=None, metadata=_help(
        "also train the prediction classifier-free guidance makes at this scale against the target (e.g. 5; "
        "one more forward per image): for looks that guidance washes out"))
    min_timestep: int = field(default=0, metadata=_help(
        "train on timesteps from this one (kohya's flag; default 0)"))
    max_timestep: int | None = field(default=None, metadata=_help(
        "train on timesteps below this one (kohya's flag; default: all)"))
    cache_latents: bool = field(default=False, metadata=_help("encode every image once (the VAE is frozen)"))
    random_flip: bool = field(default=False, metadata=_help("flip half the images horizontally"))
    seed: int = field(default=0, metadata=_help("seeds masks, batches, noise and timesteps, in [0, 2**63)"))
    name: str | None = field(default=None, metadata=_help("adapter name (default: the output file's stem)"))
    description: str = field(default="", metadata=_help("a description stored in the adapter"))
    save_dtype: str = field(default="fp16", metadata=_help("dtype of the saved values", choices=SAVE_DTYPES))
    kohya: bool = field(default=False, metadata=_help(
        "LoRA: also write a kohya/A1111 .kohya.safetensors file"))
    single_file_config: str | None = field(default=None, metadata=_help(
        "for a single-file checkpoint base: a local diffusers folder of its architecture"))
    overwrite: bool = field(default=False, metadata=_help(
        "replace an existing output file and clear an earlier run's checkpoints"))
    # Trans-LoRA trains its discriminator while the real data exist; `shira transfer` then needs none
    # fit on a few seed images (docs/transfer.md).
    discriminator: bool = field(default=False, metadata=_help(
        "after training, fit shira transfer's real-vs-synthetic discriminator (the training images against "
        "images the new adapter draws for their captions) and store it beside the adapter as "
        "X.discriminator.json; shira transfer uses it"))
    discriminator_samples: int | None = field(default=None, metadata=_help(
        "--discriminator: synthetic images it learns against (default 2 x the training images, at least 10)"))
    discriminator_sample_steps: int | None = field(default=None, metadata=_help(
        "--discriminator: denoising steps of those images (default 20, as shira transfer's --sample-steps)"))
    # The self-check (quality/): a style detector from the training images, then strength and content
    # on new prompts over a few settings; the best one is stored in the adapter (docs/training.md).
    no_check: bool = field(default=False, metadata=_help(
        "skip the self-check after training (strength and content on new prompts, and the guidance and weight "
        "stored in the adapter for shira generate and the app; at most a quarter of the training time)",
        aliases=("--no-check",)))
    progress: bool = field(default=True, metadata=_help("show a progress bar", cli=False))
    # recorded in the adapter's recipe (e.g. the style's look)
    extra: dict = field(default_factory=dict, metadata=_help("extra recipe entries", cli=False))

    def resolved_rank(self) -> int | None:
        if self.adapter == "lora":
            return self.rank or DEFAULT_RANK
        return self.rank if self.rank is not None or self.density is not None else DEFAULT_RANK


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
# The fingerprint's fields. The data folder's path is left out: the data are fingerprinted by their
# content (image bytes and captions), so a moved folder still resumes and a changed one does not.
TRAINING_FIELDS = tuple(n for n in FIELD_NAMES if n not in BOOKKEEPING_FIELDS and n != "train_data_dir")


# ------------------------------------------------------------------------------------------ validation

def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int(config, name: str, low: int, high: int | None = None, optional: bool = False) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    if not _is_int(value) or value < low or (high is not None and value >= high):
        bound = f">= {low}" if high is None else f"in [{low}, {high})" if high != MAX_SEED else f"in [{low}, 2**63)"
        raise ShiraError(f"--{name} must be an integer {bound}, got {value!r}")


def _number(config, name: str, low: float, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False, optional: bool = False, what: str | None = None) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    ok = _is_number(value) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
    if not ok:
        if what is None:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            what = f"a finite number {'>' if low_open else '>='} {low:g}" if high is None else \
                f"a number in {left}{low:g}, {high:g}{right}"
        raise ShiraError(f"--{name} must be {what}, got {value!r}")


def _choice(config, name: str, choices) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ShiraError(f"--{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def parse_mask_slot(value) -> int | str | None:
    """``--mask_slot``: an int slot, "auto", or None ("none")."""
    text = str(value).strip().lower()
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        slot = int(text)
    except ValueError:
        slot = -1
    if not 0 <= slot < SLOTS:
        raise ShiraError(f"--mask_slot must be 'auto', 'none' or a slot 0-{SLOTS - 1}, got {value!r}")
    return slot


def validate(config: TrainConfig) -> None:
    """Check every field (types, ranges, names, combinations); reads no file and loads no model.
    Raises ``ShiraError`` naming the flag at fault."""
    if not isinstance(config, TrainConfig):
        raise ShiraError(f"expected a TrainConfig, got {type(config).__name__}")
    if not isinstance(config.output, str) or not config.output.endswith(".safetensors"):
        raise ShiraError(f"--output must be a .safetensors file, got {config.output!r}")
    if config.train_data_dir is not None and not isinstance(config.train_data_dir, str):
        raise ShiraError(f"--train_data_dir must be a folder path, got {config.train_data_dir!r}")
    if not str(config.base or "").strip():
        raise ShiraError("--base must name a base")
    _choice(config, "adapter", ADAPTERS)
    _choice(config, "mask", MASK_STRATEGIES)
    slot = parse_mask_slot(config.mask_slot)
    if isinstance(slot, int) and (config.adapter != "shira" or config.mask != "struct"):
        raise ShiraError(f"--mask_slot {slot} is for SHiRA's struct mask, not {config.adapter} / {config.mask}")
    if config.adapter == "lora" and config.density is not None:
        raise ShiraError("--density is for SHiRA; give LoRA a --rank")
    if config.density is not None and config.rank is not None:
        raise ShiraError("give --density or --rank, not both")
    _number(config, "density", 0.0, 1.0, low_open=True, optional=True)
    _int(config, "rank", 1, optional=True)
    if isinstance(config.targets, str) or config.targets is None:
        _choice(config, "targets", tuple(TARGET_PRESETS))
    resolve_targets(config.targets)  # the API also takes a list of module-name suffixes
    _int(config, "resolution", 8, optional=True)
    if config.resolution is not None and config.resolution % 8:
        raise ShiraError(f"--resolution must be a multiple of 8, got {config.resolution}")
    for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "validation_steps",
                 "num_validation_images"):
        _int(config, name, 1)
    for name in ("lr_warmup_steps", "checkpointing_steps"):
        _int(config, name, 0)
    _number(config, "learning_rate", 0.0, low_open=True, what="a finite number > 0")
    _choice(config, "lr_scheduler", LR_SCHEDULERS)
    _choice(config, "mixed_precision", MIXED_PRECISION)
    _choice(config, "save_dtype", SAVE_DTYPES)
    _number(config, "caption_dropout", 0.0, 1.0)
    _number(config, "snr_gamma", 0.0, optional=True)
    _number(config, "noise_offset", 0.0)
    _number(config, "ema_decay", 0.0, 1.0, low_open=True, high_open=True, optional=True,
            what="a number between 0 and 1 (exclusive)")
    _number(config, "guided_loss_scale", 1.0, low_open=True, optional=True,
            what="a finite number above 1 (a guidance scale)")
    _int(config, "min_timestep", 0)
    _int(config, "max_timestep", 1, optional=True)
    if config.max_timestep is not None and config.min_timestep >= config.max_timestep:
        raise ShiraError(f"need --min_timestep < --max_timestep, got {config.min_timestep} and {config.max_timestep}")
    _int(config, "seed", 0, MAX_SEED)
    _int(config, "discriminator_samples", 1, optional=True)
    _int(config, "discriminator_sample_steps", 1, optional=True)
    if not config.discriminator and (config.discriminator_samples or config.discriminator_sample_steps):
        raise ShiraError("--discriminator_samples and --discriminator_sample_steps need --discriminator")
    if config.kohya and config.adapter != "lora":
        raise ShiraError("--kohya writes a LoRA file; it needs --adapter lora")
    for name in ("trigger", "name", "validation_prompt", "resume_from_checkpoint", "single_file_config"):
        value = getattr(config, name)
        if value is not None and not isinstance(value, str):
            raise ShiraError(f"--{name} must be text, got {value!r}")
    if not isinstance(config.description, str):
        raise ShiraError(f"--description must be text, got {config.description!r}")
    if not isinstance(config.extra, dict):
        raise ShiraError(f"extra must be a dict, got {config.extra!r}")


def check_timesteps(config: TrainConfig, num_train_timesteps: int) -> int:
    """The run's exclusive upper timestep, checked against the base's noise schedule."""
    max_timestep = num_train_timesteps if config.max_timestep is None else config.max_timestep
    if not 0 <= config.min_timestep < max_timestep <= num_train_timesteps:
        raise ShiraError(f"need 0 <= --min_timestep < --max_timestep <= {num_train_timesteps}, "
                         f"got {config.min_timestep} and {max_timestep}")
    return max_timestep


def fingerprint(config: TrainConfig) -> dict:
    """The fields that shape the trained values, as plain JSON values (a checkpoint stores them)."""
    return {name: json.loads(json.dumps(getattr(config, name), default=str)) for name in TRAINING_FIELDS}


def config_from_dict(values: dict) -> TrainConfig:
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ShiraError(f"unknown training option {unknown[0]!r}")
    missing = [n for n in ("train_data_dir", "output") if n not in values]
    if missing:
        raise ShiraError(f"training option {missing[0]!r} is required")
    return TrainConfig(**values)


# ------------------------------------------------------------------------------------------ flags

class FlagParser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line (``prog: error: ...``) and exits 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag_type(annotation: str):
    kinds = {"str": str, "int": int, "float": float, "bool": bool}
    return kinds[annotation.split("|")[0].strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training flags, one per ``TrainConfig`` field (names, defaults, help and choices from the
    field), shared by ``train_style.py`` and ``shira train``."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        target = parser
        if "group" in meta:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["group"]]
        kind = _flag_type(f.type)
        help_text = meta.get("help", "")
        if kind is bool:
            target.add_argument(f"--{f.name}", *meta.get("aliases", ()), action="store_true", help=help_text)
            continue
        options = {"type": kind, "help": help_text}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            options["required"] = True
        else:
            options["default"] = f.default
            if f.default not in (None, "") and "default" not in help_text:
                options["help"] = f"{help_text} (default {f.default})"
        if "choices" in meta:
            options["choices"] = list(meta["choices"])
        target.add_argument(f"--{f.name}", **options)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in FIELD_NAMES})


def parse_flags(argv=None, prog: str | None = None) -> TrainConfig:
    """``train_style.py``'s command line as a config; a bad flag exits with one line on stderr."""
    parser = FlagParser(prog=prog, description="Train a style adapter (SHiRA or LoRA) from images and captions.")
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))
