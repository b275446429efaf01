"""Training a style adapter (SHiRA, or LoRA as the baseline) on an SD or SDXL base.

One implementation behind ``train_style.py`` and ``shira train``. It runs on one CPU, one GPU, or
several processes under ``accelerate launch`` (DDP): each rank takes its own slice of a global
batch, gradients are averaged, and every rank holds the same adapter.

Determinism: batch contents, noise and timesteps are drawn from generators seeded by
(seed, step, micro-step, rank), never from a global RNG, so a run resumed from a checkpoint ends
with the same adapter as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.architecture import TARGET_PRESETS, resolve_targets, target_weights, unet_family
from ..bases import load_pipeline
from ..conditioning import encode_prompts
from .dataset import StyleImages
from ..errors import ShiraError
from ..core.masks import DEFAULT_MASK, build_masks, calibration_gradients
from ..core.sparse_training import SparseDeltaModel

DEFAULT_RANK = 2


@dataclass
class TrainConfig:
    """The flags of ``train_style.py`` (names follow diffusers' ``train_text_to_image_lora.py``)."""

    train_data_dir: str
    output: str
    base: str = "toy-sd"
    trigger: str | None = None
    adapter: str = "shira"  # or "lora"
    mask: str = DEFAULT_MASK
    density: float | None = None
    rank: int | None = None  # default 2 when no density is given (SHiRA: r*(m+n) entries per layer)
    # Every projection and resnet convolution at rank 2 (1.7-1.8 % of a toy UNet): styles learned
    # far better than on the attention projections alone at rank 8, the same parameter count.
    targets: str = "all"
    resolution: int | None = None  # default: the base's native size
    train_batch_size: int = 4
    max_train_steps: int = 1000
    learning_rate: float = 3e-3  # SHiRA values are weight entries; LoRA uses the same
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 0
    resume_from_checkpoint: str | None = None
    validation_prompt: str | None = None
    validation_steps: int = 100
    num_validation_images: int = 4
    caption_dropout: float = 0.1  # share of captions dropped for guidance (kohya's caption_dropout_rate)
    snr_gamma: float | None = 5.0  # Min-SNR loss weighting (Hang et al. 2023), as diffusers' --snr_gamma
    noise_offset: float = 0.1  # per-channel offset added to the noise, as diffusers' --noise_offset
    # Saves an exponential moving average of the trained values instead of the last step's
    # (diffusers' --use_ema, through its EMAModel; its decay warms up as (1+t)/(10+t)).
    ema_decay: float | None = None
    # Also trains the prediction classifier-free guidance will make at this scale, u + s * (c - u),
    # against the same target (one more forward on the empty caption per image): a look that the
    # guided extrapolation washes out (a dark palette comes out bright at 5) is taught to survive it,
    # at a cost in content (README, "Training a style").
    guided_loss_scale: float | None = None
    min_timestep: int = 0  # train on timesteps in [min_timestep, max_timestep), as kohya's flags
    max_timestep: int | None = None  # default: the scheduler's num_train_timesteps
    cache_latents: bool = False
    random_flip: bool = False
    seed: int = 0
    name: str | None = None
    description: str = ""
    save_dtype: str = "fp16"
    kohya: bool = False  # LoRA: also write a kohya/A1111 file
    single_file_config: str | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)  # recorded in the adapter's recipe (e.g. the style's look)

    def resolved_rank(self) -> int | None:
        if self.adapter == "lora":
            return self.rank or DEFAULT_RANK
        return self.rank if self.rank is not None or self.density is not None else DEFAULT_RANK


def _check(config: TrainConfig) -> None:
    if config.adapter not in ("shira", "lora"):
        raise ShiraError(f"--adapter must be 'shira' or 'lora', got {config.adapter!r}")
    if config.adapter == "lora" and config.density is not None:
        raise ShiraError("--density is for SHiRA; give LoRA a --rank")
    if config.ema_decay is not None and not 0.0 < config.ema_decay < 1.0:
        raise ShiraError(f"--ema_decay must lie between 0 and 1, got {config.ema_decay}")
    if config.guided_loss_scale is not None and config.guided_loss_scale <= 1.0:
        raise ShiraError(f"--guided_loss_scale must be above 1 (a guidance scale), got {config.guided_loss_scale}")
    if config.max_train_steps < 1 or config.train_batch_size < 1 or config.gradient_accumulation_steps < 1:
        raise ShiraError("--max_train_steps, --train_batch_size and --gradient_accumulation_steps must be >= 1")
    if not config.output.endswith(".safetensors"):
        raise ShiraError(f"--output must be a .safetensors file, got {config.output!r}")
    resolve_targets(config.targets)


def output_paths(output: str) -> dict[str, str]:
    """Where a run writes: the adapter, its loss curve, validation images, checkpoints, a record."""
    stem = output[: -len(".safetensors")]
    return {"adapter": output, "loss_curve": stem + ".loss.png", "validation": stem + ".validation",
            "checkpoints": stem + ".checkpoints", "record": stem + ".json", "kohya": stem + ".kohya.safetensors"}


def train(config: TrainConfig) -> dict:
    """Train one adapter; returns the run's record (also written next to the adapter as JSON)."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import compute_snr

    _check(config)
    # cpu=True where there is no GPU, so processes started by `accelerate launch --multi_gpu` (or
    # torchrun) on a CPU-only machine form a gloo process group instead of each running alone.
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    paths = output_paths(config.output)
    pipe = load_pipeline(config.base, single_file_config=config.single_file_config)
    pipe.set_progress_bar_config(disable=True)
    family = unet_family(pipe.unet)
    size = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    device = accelerator.device
    pipe.to(device)
    for module in (pipe.vae, pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
    data = StyleImages(config.train_data_dir, size, trigger=config.trigger, warn=accelerator.is_main_process)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scaling = pipe.vae.config.scaling_factor
    max_timestep = noise_scheduler.config.num_train_timesteps if config.max_timestep is None else config.max_timestep
    if not 0 <= config.min_timestep < max_timestep <= noise_scheduler.config.num_train_timesteps:
        raise ShiraError(f"need 0 <= --min_timestep < --max_timestep <= {noise_scheduler.config.num_train_timesteps}, "
                         f"got {config.min_timestep} and {max_timestep}")

    # Frozen conditioning, computed once: every caption's embeddings, and (optionally) the latents.
    with torch.no_grad():
        text = {c: encode_prompts(pipe, family, [c], device, size) for c in sorted(set(data.captions) | {""})}
        text[None] = _dropped_caption(pipe, family, text[""])
        cached = None
        if config.cache_latents:
            cached = [pipe.vae.encode(data.image(i)[None].to(device)).latent_dist.mode() * scaling
                      for i in range(len(data))]

    def conditioning(captions: list) -> tuple[torch.Tensor, dict]:
        embeds = torch.cat([text[c][0] for c in captions])
        if family != "sdxl":
            return embeds, {}
        return embeds, {"added_cond_kwargs": {k: torch.cat([text[c][1]["added_cond_kwargs"][k] for c in captions])
                                              for k in ("text_embeds", "time_ids")}}

    def batch(step: int, micro: int) -> tuple[torch.Tensor, list]:
        """Latents and captions (None: dropped) of this rank's part of the global batch."""
        rng = np.random.default_rng([config.seed, step, micro])
        picks = rng.integers(0, len(data), size=config.train_batch_size * world)[rank::world]
        flips = rng.random(len(picks) * world)[rank::world] < 0.5 if config.random_flip else [False] * len(picks)
        with torch.no_grad():
            if cached is not None:
                latents = torch.cat([cached[i].flip(-1) if f else cached[i] for i, f in zip(picks, flips)])
            else:
                images = torch.stack([data.image(i).flip(-1) if f else data.image(i) for i, f in zip(picks, flips)])
                latents = pipe.vae.encode(images.to(device)).latent_dist.mode() * scaling
        # Some captions are dropped so that the unconditional prediction learns the style too:
        # otherwise classifier-free guidance, which extrapolates away from it, cancels the style.
        dropped = rng.random(len(picks) * world)[rank::world] < config.caption_dropout
        return latents, [None if d else data.captions[i] for i, d in zip(picks, dropped)]

    def weighted_mse(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        per_image = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if not config.snr_gamma:
            return per_image.mean()
        # Min-SNR-gamma: low-noise steps (fine detail) stop dominating the loss, so the
        # high-noise steps that set colors and layout get their share.
        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=config.snr_gamma)
        weights = weights / (snr + 1) if noise_scheduler.config.prediction_type == "v_prediction" else weights / snr
        return (per_image * weights).mean()

    def loss_of(model, step: int, micro: int) -> torch.Tensor:
        latents, captions = batch(step, micro)
        generator = torch.Generator(device=device).manual_seed(hash_seed(config.seed, step, micro, rank))
        noise = torch.randn(latents.shape, generator=generator, device=device)
        if config.noise_offset:
            # Lets the model move an image's mean brightness and color (dark night, washed pastel),
            # which zero-mean noise at the last timestep never asks of it.
            noise = noise + config.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator,
                                                              device=device)
        timesteps = torch.randint(config.min_timestep, max_timestep, (len(latents),), generator=generator,
                                  device=device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        guided = config.guided_loss_scale is not None
        if guided:  # the unconditional predictions ride in the same batch, as in the pipelines
            captions = captions + [None] * len(captions)
            noisy, timesteps = torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps])
        embeds, extra = conditioning(captions)
        with accelerator.autocast():
            pred = model(noisy, timesteps, embeds, **extra).sample
        if not guided:
            return weighted_mse(pred, target, timesteps)
        cond, uncond = pred.chunk(2)
        timesteps = timesteps[: len(cond)]
        guided_pred = uncond + config.guided_loss_scale * (cond - uncond)
        return 0.5 * (weighted_mse(cond, target, timesteps) + weighted_mse(guided_pred, target, timesteps))

    # The trainable part.
    rank_or_none = config.resolved_rank()
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    pipe.unet.train()
    if config.adapter == "shira":
        weights = target_weights(pipe.unet, config.targets)
        gradients = None
        if config.mask in ("grad", "snip"):
            # Calibration batches come from steps past the run, so training sees none of them twice.
            calibration = range(config.max_train_steps, config.max_train_steps + 4)
            gradients = calibration_gradients(pipe.unet, weights, lambda unet, s: loss_of(unet, s, 0), calibration)
        masks = build_masks(weights, config.mask, density=config.density, rank=rank_or_none, gradients=gradients,
                            seed=config.seed)
        model = SparseDeltaModel(pipe.unet, masks)
        params = list(model.values.parameters())
    else:
        from peft import LoraConfig

        pipe.unet.add_adapter(LoraConfig(r=rank_or_none, lora_alpha=rank_or_none, init_lora_weights="gaussian",
                                         target_modules=list(resolve_targets(config.targets))))
        model = pipe.unet
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()
    num_params = sum(p.numel() for p in params)
    lr = config.learning_rate
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps,
                                 num_training_steps=config.max_train_steps)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    ema = None
    if config.ema_decay is not None:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=config.ema_decay, foreach=True)

    step, losses = 0, []
    if config.resume_from_checkpoint:
        step, losses = _load_checkpoint(config.resume_from_checkpoint, paths["checkpoints"], params, optimizer,
                                        lr_scheduler, device, ema)
    started = time.time()
    bar = tqdm(total=config.max_train_steps, initial=step, desc=f"training {config.adapter}",
               disable=not (config.progress and accelerator.is_main_process))
    while step < config.max_train_steps:
        total = 0.0
        for micro in range(config.gradient_accumulation_steps):
            last = micro == config.gradient_accumulation_steps - 1
            with nullcontext() if last or world == 1 else accelerator.no_sync(wrapped):
                loss = loss_of(wrapped, step, micro)
                accelerator.backward(loss / config.gradient_accumulation_steps)
            total += loss.item() / config.gradient_accumulation_steps
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        step += 1
        losses.append(_mean_over_ranks(accelerator, total))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if accelerator.is_main_process:
            if config.checkpointing_steps and step % config.checkpointing_steps == 0 and step < config.max_train_steps:
                _save_checkpoint(paths["checkpoints"], step, params, optimizer, lr_scheduler, losses, ema)
            if config.validation_prompt and (step % config.validation_steps == 0 or step == config.max_train_steps):
                with _averaged(ema, params, model):
                    _validate(pipe, model, config, paths["validation"], step, size)
        accelerator.wait_for_everyone()
    bar.close()
    seconds = time.time() - started
    if ema is not None:  # the average is the adapter from here on
        ema.copy_to(params)
    digest = _digest(params)
    rank_digests = [digest]
    if world > 1:  # every rank must hold the same adapter: say so in the log and the record
        from accelerate.utils import gather_object

        print(f"rank {rank}: trained parameters sha256 {digest}", flush=True)
        rank_digests = gather_object([digest])

    record = {
        "adapter": config.adapter, "base": str(config.base), "family": family, "steps": step,
        "trainable_params": num_params, "seconds": round(seconds, 1), "processes": world,
        "final_loss": float(np.mean(losses[-20:])) if losses else None, "sha256": digest,
        "rank_sha256": rank_digests,
        "files": {k: v for k, v in paths.items() if k != "checkpoints"},
    }
    if accelerator.is_main_process:
        os.makedirs(os.path.dirname(os.path.abspath(config.output)), exist_ok=True)
        recipe = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("progress", "extra", "output")}
        recipe.update(config.extra, seconds=record["seconds"])
        if config.adapter == "shira":
            model.sync(force=True)  # force: an EMA copy above is invisible to change tracking
            adapter = model.adapter(dtype=_DTYPES[config.save_dtype], mask=config.mask, trigger=config.trigger,
                                    name=config.name or _stem(config.output), description=config.description,
                                    recipe=recipe)
            adapter.save(config.output)
        else:
            _save_lora(pipe, family, config, paths, recipe)
        _plot_losses(losses, paths["loss_curve"], f"{config.name or _stem(config.output)} ({config.adapter})")
        record["file_mb"] = round(os.path.getsize(config.output) / 2**20, 3)
        with open(paths["record"], "w") as handle:
            json.dump({**record, "recipe": recipe, "losses": [round(x, 5) for x in losses]}, handle, indent=1)
    accelerator.wait_for_everyone()
    if config.adapter == "shira":
        model.detach()
    accelerator.end_training()
    return record


def _dropped_caption(pipe, family: str, empty: tuple[torch.Tensor, dict]) -> tuple[torch.Tensor, dict]:
    """The conditioning a dropped caption trains: what the pipeline's classifier-free guidance
    will use as its unconditional input. SDXL pipelines with ``force_zeros_for_empty_prompt``
    (SDXL 1.0's default) use zeros, not the encoded empty prompt; training the encoded one would
    teach the style to an input that generation never gives."""
    if family != "sdxl" or not getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        return empty
    embeds, extra = empty
    added = extra["added_cond_kwargs"]
    return torch.zeros_like(embeds), {"added_cond_kwargs": {"text_embeds": torch.zeros_like(added["text_embeds"]),
                                                            "time_ids": added["time_ids"]}}


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (``torch.Generator`` takes one integer)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def _stem(path: str) -> str:
    return os.path.basename(path)[: -len(".safetensors")]


def _digest(params: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _mean_over_ranks(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="mean"))


@contextmanager
def _averaged(ema, params, model):
    """The EMA values in place of the live ones for the duration (validation images)."""
    if ema is None:
        yield
        return
    # SHiRA's fused weights are rewritten by force on each swap: EMAModel copies through
    # ``.data``, which the model's change tracking does not see.
    resync = model.sync if isinstance(model, SparseDeltaModel) else lambda force: None
    ema.store(params)
    ema.copy_to(params)
    resync(force=True)
    try:
        yield
    finally:
        ema.restore(params)
        resync(force=True)


def _save_checkpoint(folder, step, params, optimizer, lr_scheduler, losses, ema=None, keep: int = 2) -> None:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step-{step:06d}.pt")
    state = {"step": step, "params": [p.detach().cpu() for p in params], "optimizer": optimizer.state_dict(),
             "lr_scheduler": lr_scheduler.state_dict(), "losses": losses,
             "ema": ema.state_dict() if ema is not None else None}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)  # never a half-written checkpoint
    for old in sorted(glob.glob(os.path.join(folder, "step-*.pt")))[:-keep]:
        os.remove(old)


def _load_checkpoint(which, folder, params, optimizer, lr_scheduler, device, ema=None) -> tuple[int, list[float]]:
    if which == "latest":
        found = sorted(glob.glob(os.path.join(folder, "step-*.pt")))
        if not found:
            raise ShiraError(f"--resume_from_checkpoint latest: no checkpoint in {folder}")
        which = found[-1]
    if not os.path.isfile(which):
        raise ShiraError(f"checkpoint {which} does not exist")
    state = torch.load(which, map_location=device)
    if len(state["params"]) != len(params) or any(a.shape != b.shape for a, b in zip(state["params"], params)):
        raise ShiraError(f"checkpoint {which} was made for another adapter layout (mask, rank or targets differ)")
    with torch.no_grad():
        for p, saved in zip(params, state["params"]):
            p.copy_(saved.to(p.device))
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if ema is not None:
        if state.get("ema") is None:
            raise ShiraError(f"checkpoint {which} was made without --ema_decay; resume without it")
        ema.load_state_dict(state["ema"])  # already on ``device`` through map_location
    return state["step"], list(state["losses"])


def _validate(pipe, model, config: TrainConfig, folder: str, step: int, size: int) -> None:
    from PIL import Image

    from ..generate import with_triggers
    from ..images import image_grid

    if isinstance(model, SparseDeltaModel):
        model.sync()
    pipe.unet.eval()
    prompt = with_triggers(config.validation_prompt, [config.trigger or ""])
    images = []
    with torch.no_grad():
        for i in range(config.num_validation_images):
            out = pipe(prompt, num_inference_steps=20, guidance_scale=5.0, height=size, width=size,
                       generator=torch.Generator().manual_seed(i), output_type="np")
            images.append((out.images[0] * 255).round().astype(np.uint8))
    pipe.unet.train()
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(image_grid(images, len(images))).save(os.path.join(folder, f"step-{step:06d}.png"))


def _save_lora(pipe, family: str, config: TrainConfig, paths: dict, recipe: dict) -> None:
    """diffusers format (``pipe.load_lora_weights`` reads it), optionally kohya; both carry the
    trigger, name, description and recipe in their header, as SHiRA files do."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    peft_state = {k: v.detach().to("cpu", _DTYPES[config.save_dtype]).contiguous()
                  for k, v in get_peft_model_state_dict(pipe.unet).items()}
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    folder = os.path.dirname(os.path.abspath(config.output))
    # diffusers' own writer puts only ``format: pt`` in the header; loaders ignore other keys, so
    # the trigger and recipe travel with the file, as they do in SHiRA files.
    header = {"format": "pt", **lora_metadata(config, family, recipe)}
    # PEFT's own key names (``lora_A``/``lora_B``), which ``load_lora_weights`` reads for every layer
    # kind. ``convert_state_dict_to_diffusers`` renames only attention projections (``lora.down``),
    # and a file mixing both namings loads its convolutions but silently drops its attention.
    pipeline_class.save_lora_weights(folder, unet_lora_layers=peft_state, weight_name=os.path.basename(config.output),
                                     safe_serialization=True,
                                     save_function=lambda weights, path: save_file(weights, path, metadata=header))
    if config.kohya:
        kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state.items()})
        save_file({k.replace("lora_unet_unet_", "lora_unet_"): v.contiguous() for k, v in kohya.items()}, paths["kohya"],
                  metadata=header)


def lora_metadata(config: TrainConfig, family: str, recipe: dict) -> dict[str, str]:
    """Header strings of a LoRA file this project trained (safetensors headers hold strings only)."""
    values = {"name": config.name or _stem(config.output), "trigger": config.trigger or "",
              "description": config.description, "base_arch": family, "rank": str(config.resolved_rank()),
              "recipe": json.dumps(recipe, sort_keys=True)}
    return {k: v for k, v in values.items() if v}


def _plot_losses(losses: list[float], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not losses:
        return
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, color="#9ab", linewidth=0.8, label="loss")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(range(window, len(losses) + 1), smooth, color="#124", linewidth=1.6, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss")
    ax.set_title(title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def config_from_dict(values: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ShiraError(f"unknown training option {unknown[0]!r}")
    return TrainConfig(**values)


def add_arguments(parser) -> None:
    """The training flags, shared by ``train_style.py`` and ``shira train``."""
    from ..core.masks import MASK_STRATEGIES

    a = parser.add_argument
    a("--base", default="toy-sd", help="toy-sd, toy-sdxl, a Hub id (local cache), a diffusers folder or a checkpoint file")
    a("--train_data_dir", required=True, help="images with same-name .txt captions, or an imagefolder with metadata.jsonl")
    a("--output", required=True, help="the adapter file to write (.safetensors)")
    a("--trigger", help="a word appended to every caption and stored in the adapter ('shira generate --style' adds it)")
    a("--adapter", choices=["shira", "lora"], default="shira")
    a("--mask", choices=MASK_STRATEGIES, default=DEFAULT_MASK, help="SHiRA mask strategy")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--density", type=float, help="SHiRA: share of each adapted weight's entries")
    size.add_argument("--rank", type=int, help="LoRA rank, or SHiRA's equal-parameter rank r*(m+n) "
                      f"(default {DEFAULT_RANK})")
    a("--targets", choices=list(TARGET_PRESETS), default="all",
      help="attention projections; + feed-forward; + the transformer projections and resnet convolutions (default); "
      "all-but-text-kv: all but the cross-attention keys and values")
    a("--resolution", type=int, help="training image size (default: the base's native size)")
    a("--train_batch_size", type=int, default=4)
    a("--max_train_steps", type=int, default=1000)
    a("--learning_rate", type=float, default=3e-3)
    a("--lr_scheduler", default="constant", help="a diffusers scheduler name: constant, linear, cosine, ...")
    a("--lr_warmup_steps", type=int, default=0)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    a("--gradient_checkpointing", action="store_true")
    a("--checkpointing_steps", type=int, default=0, help="save a resumable checkpoint every N steps")
    a("--resume_from_checkpoint", help="'latest' or a checkpoint file")
    a("--validation_prompt", help="images for this prompt are saved during training")
    a("--validation_steps", type=int, default=100)
    a("--num_validation_images", type=int, default=4)
    a("--caption_dropout", type=float, default=0.1, help="share of captions replaced by the empty prompt, so "
      "the style survives classifier-free guidance (default 0.1)")
    a("--snr_gamma", type=float, default=5.0, help="Min-SNR loss weighting with this gamma (default 5, the "
      "paper's choice; 0 turns it off)")
    a("--noise_offset", type=float, default=0.1, help="noise offset (default 0.1; 0 turns it off): lets a style "
      "change overall brightness and color")
    a("--guided_loss_scale", type=float, help="also train the prediction classifier-free guidance makes at "
      "this scale against the target (e.g. 5; one more forward per image): for looks that guidance washes out")
    a("--ema_decay", type=float, help="save an exponential moving average of the trained values with this "
      "decay (e.g. 0.99; diffusers' EMAModel) instead of the last step's")
    a("--min_timestep", type=int, default=0, help="train on timesteps from this one (kohya's flag; default 0)")
    a("--max_timestep", type=int, help="train on timesteps below this one (kohya's flag; default: all)")
    a("--cache_latents", action="store_true", help="encode every image once (the VAE is frozen)")
    a("--random_flip", action="store_true")
    a("--seed", type=int, default=0)
    a("--name", help="adapter name (default: the output file's stem)")
    a("--description", default="")
    a("--save_dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    a("--kohya", action="store_true", help="LoRA: also write a kohya/A1111 .kohya.safetensors file")
    a("--single_file_config", help="for a single-file checkpoint base: a local diffusers folder of its architecture")


def config_from_args(args) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in known})
