"""Text-to-image on any SD/SDXL base, optionally with a mix of style adapters fused in.

Determinism: image ``i`` of a batch is drawn with seed ``seed + i``, so a prompt gets the same
image whether it is generated alone or in a batch at the same position.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from .catalog import StyleCatalog, bank_key, default_catalog
from .core.adapter import SparseAdapter
from .files import check_output_file, check_writable_folder, write_atomically
from .core.bank import StyleBank
from .errors import OutputExistsError, ShiraError

DEFAULT_GUIDANCE = 5.0  # the pipelines' default; a style's recommended guidance may replace it
MAX_STYLE_WEIGHT = 10.0  # beyond this a delta swamps the base's weights: black or noisy images


def check_weight(weight: float, style: str = "") -> float:
    if not math.isfinite(weight) or abs(weight) > MAX_STYLE_WEIGHT:
        raise ShiraError(f"style weight {weight:g}{f' for {style}' if style else ''} is outside "
                         f"[-{MAX_STYLE_WEIGHT:g}, {MAX_STYLE_WEIGHT:g}]")
    return weight


MAX_GUIDANCE = 100.0  # far above any useful scale; beyond it images are noise
MAX_SEED = 2**64 - 1  # torch generators take 64-bit seeds


def check_guidance(guidance: float) -> float:
    if not math.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE:
        raise ShiraError(f"guidance {guidance:g} is outside [0, {MAX_GUIDANCE:g}]")
    return guidance


def check_seed(seed: int, count: int = 1) -> int:
    """A seed for ``count`` images (seeds ``seed`` .. ``seed + count - 1``), all valid 64-bit seeds."""
    try:
        seed = operator.index(seed)  # int, numpy integers; not floats or bools' lookalikes
    except TypeError:
        raise ShiraError(f"seed must be an integer, got {seed!r}") from None
    if seed < 0 or seed + max(count, 1) - 1 > MAX_SEED:
        top = f"{MAX_SEED} - {count - 1}" if count > 1 else f"{MAX_SEED} (2^64 - 1)"
        raise ShiraError(f"seed {seed} is outside [0, {top}]")
    return seed


def check_steps(scheduler, steps: int, flag: str = "--steps") -> int:
    """Refuses a number of denoising steps ``scheduler`` cannot take (more than its training
    timesteps, or a schedule past its last one), with the largest it takes."""
    if not _takes_steps(scheduler, steps):
        top = max_steps(scheduler)
        raise ShiraError(f"{flag} {steps} is beyond the base's scheduler ({type(scheduler).__name__}, "
                         f"{scheduler.config.num_train_timesteps} training timesteps): use at most {top}")
    return steps


def max_steps(scheduler) -> int:
    """The largest number of steps ``scheduler`` takes (a bisection: the schedules only grow)."""
    low, high = 0, int(scheduler.config.num_train_timesteps)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if _takes_steps(scheduler, middle) else (low, middle - 1)
    return low


def _takes_steps(scheduler, steps: int) -> bool:
    """Whether ``steps`` gives a schedule inside the training timesteps, tried on a copy (never on
    the pipeline's own scheduler, and never for more steps than timesteps: nothing huge is built)."""
    total = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    if total is None:
        return steps >= 1  # a scheduler without a training schedule: nothing to check against
    total = int(total)
    if not 1 <= steps <= total:
        return False
    probe = type(scheduler).from_config(scheduler.config)
    try:
        probe.set_timesteps(steps)
    except (ValueError, IndexError):
        return False
    timesteps = torch.as_tensor(probe.timesteps)
    return len(timesteps) > 0 and float(timesteps.min()) >= 0 and float(timesteps.max()) < total


def base_scheduler(base) -> object | None:
    """The scheduler of a bundled or folder base, read from its config without loading the model;
    None where it is not known before loading (a single file, a Hub id, an unreadable config)."""
    import json

    import diffusers

    from .bases import resolve

    try:
        source = resolve(base)
        path = os.path.join(source.location, "scheduler", "scheduler_config.json")
        if source.kind not in ("bundled", "folder") or not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        return getattr(diffusers, config["_class_name"]).from_config(config)
    except (ShiraError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # checked once the base is loaded


def parse_style(text: str) -> tuple[str, float]:
    """``FILE_OR_NAME[=WEIGHT]`` -> (file or name, weight)."""
    name, sep, weight = text.rpartition("=") if "=" in text else (text, "", "1")
    try:
        value = float(weight)
    except ValueError:
        raise ShiraError(f"style weight must be a number: {text!r}") from None
    return (name if sep else text), check_weight(value, name if sep else text)


def resolve_styles(styles: Sequence[tuple[str, float]], base_name: str, catalog: StyleCatalog | None = None,
                   read: bool = False) -> list[tuple[str, float]]:
    """[(adapter file, weight)] for ``styles`` ([(file or name, weight)]; a mix takes each catalogue
    style's slot adapter where it has one, ``StyleCatalog.resolve_mix``), refusing a bad weight and
    a style given twice (two names for one file count as twice; two files that share a name are
    two styles). With ``read``, each file is also read and validated now, before any other work."""
    resolved, seen = [], {}
    for style, weight in styles:
        check_weight(weight, style)
    files = (catalog or default_catalog()).resolve_mix([style for style, _ in styles], base_name)
    for (style, weight), path in zip(styles, files):
        path = str(path)
        key = bank_key(path)
        if key in seen:
            again = "" if seen[key] == style else f" (as {seen[key]!r})"
            raise ShiraError(f"style {style!r} is given twice{again}; give each style once with its weight")
        seen[key] = style
        if read:
            SparseAdapter.load(path)
        resolved.append((path, float(weight)))
    return resolved


def image_format(path: str) -> str:
    """The PIL format that writes ``path``, from its extension; refuses one PIL cannot write."""
    from PIL import Image

    Image.init()
    extension = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(extension)
    if fmt is None or fmt not in Image.SAVE:
        raise ShiraError(f"--out {path}: {f'{extension!r} is not an' if extension else 'no'} image extension PIL can "
                         "write; use .png (or .jpg, .webp, ...)")
    return fmt


def batch_names(count: int) -> list[str]:
    return [f"{i:03d}.png" for i in range(count)]


def check_outputs(out: str, count: int | None = None, overwrite: bool = False) -> None:
    """Refuse, before anything is generated, an output that cannot be written or would replace a
    file: ``out`` is one image file (``count`` None) or a folder of ``count`` images 000.png, ..."""
    if count is None:
        image_format(out)
        check_output_file(out, overwrite, "--out")
        return
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ShiraError(f"--out {out} is a file; with --prompts-file --out is a folder of images")
    if not overwrite:
        existing = [n for n in batch_names(count) if os.path.lexists(os.path.join(out, n))]
        if existing:
            raise OutputExistsError(f"--out {out} already holds {', '.join(existing[:3])}"
                                    f"{' ...' if len(existing) > 3 else ''}; --overwrite replaces them")
    check_writable_folder(out, f"--out {out}")


def save_images(images, out: str, single: bool, overwrite: bool = False) -> list[str]:
    """Write ``images`` (one file ``out``, or ``out``/000.png, ...), each atomically: a temporary
    file beside it, then one rename; without ``overwrite`` an existing file is never replaced."""
    if single:
        targets, fmt = [out], image_format(out)
    else:
        targets, fmt = [os.path.join(out, n) for n in batch_names(len(images))], "PNG"
    for image, target in zip(images, targets):
        write_atomically(target, lambda temporary, image=image: image.save(temporary, format=fmt), overwrite)
    return targets


def with_triggers(prompt: str, triggers: Sequence[str]) -> str:
    """Append trigger words the prompt lacks, so a style applies to plain prompts."""
    missing = [t for t in triggers if t and t not in prompt]
    return ", ".join([prompt, *missing]) if missing else prompt


def generate(
    pipe,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 5.0,
    styles: Sequence[tuple[str, float]] = (),
    base_name: str = "",
    bank: StyleBank | None = None,
    catalog: StyleCatalog | None = None,
):
    """Images (PIL) for ``prompts``, with the style mix ``styles`` ([(file or name, weight)]) fused.
    Bank entries are keyed by the adapter file's resolved path (``catalog.bank_key``): two files
    that share a name are two entries, and a style given twice is an error."""
    if not prompts:
        raise ShiraError("nothing to generate: no prompt given")
    if steps < 1:
        raise ShiraError(f"steps must be at least 1, got {steps}")
    check_steps(pipe.scheduler, steps, "steps")
    check_guidance(guidance_scale)
    check_seed(seed, len(prompts))
    resolved = resolve_styles(styles, base_name, catalog)
    mix, triggers = {}, []
    owns_bank = bool(styles) and bank is None
    if styles:
        bank = bank or StyleBank(pipe.unet)
        for path, weight in resolved:
            name = bank_key(path)
            if name not in bank:
                bank.load(path, name=name)
            mix[name] = weight
            triggers.append(bank.info(name)["trigger"])
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = []
    try:
        with bank.use(mix) if styles else nullcontext(), torch.no_grad():
            for i, prompt in enumerate(prompts):
                result = pipe(
                    with_triggers(prompt, triggers),
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                    generator=torch.Generator().manual_seed(seed + i),
                    height=size,
                    width=size,
                )
                images.append(result.images[0])
    finally:
        if owns_bank:
            bank.restore()  # leave the caller's UNet as it came
    return images


def generate_batched(pipe, prompts: Sequence[str], steps: int = 20, guidance_scale: float = DEFAULT_GUIDANCE,
                     batch_size: int = 10, desc: str = "", seeds: Sequence[int] | None = None) -> list[np.ndarray]:
    """RGB uint8 arrays for ``prompts``: image i with seed i (or ``seeds[i]``), ``batch_size`` at a time
    (one generator per image, so an image does not depend on its batch). For measuring many images."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    images = []
    with torch.no_grad():
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            chunk = list(prompts[start : start + batch_size])
            generators = [torch.Generator().manual_seed(seed) for seed in seeds[start : start + len(chunk)]]
            out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale, height=size, width=size,
                       generator=generators, output_type="np")
            images.extend((out.images * 255).round().astype(np.uint8))
    return images


@contextmanager
def applied_adapter(pipe, bank: StyleBank, path, kind: str, weight: float = 1.0):
    """An adapter file in use on ``pipe`` at ``weight`` inside the block: a SHiRA file (``kind``
    "shira" or "shira-<mask>") fused through ``bank``, a LoRA (``kind`` "lora") loaded through
    diffusers, as users load it; removed again afterwards."""
    if kind != "lora":
        bank.load(str(path), name="evaluated")
        try:
            with bank.use({"evaluated": weight}):
                yield
        finally:
            bank.remove("evaluated")
    else:
        pipe.load_lora_weights(str(path), adapter_name="evaluated")
        try:
            if weight != 1.0:
                pipe.set_adapters(["evaluated"], [weight])
            yield
        finally:
            pipe.delete_adapters("evaluated")
            drop_empty_lora_layers(pipe)


def drop_empty_lora_layers(pipe) -> None:
    """After the last LoRA is deleted, diffusers leaves PEFT's wrapper layers in the UNet (its
    parameters renamed ``....base_layer.weight``), which a ``StyleBank`` on the same pipeline cannot
    address: unload them when no adapter is left."""
    adapters = pipe.get_list_adapters() if hasattr(pipe, "get_list_adapters") else {}
    if not any(adapters.values()):
        pipe.unload_lora_weights()
