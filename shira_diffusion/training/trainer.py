"""Training a style adapter (SHiRA, or LoRA as the baseline) on an SD or SDXL base.

One implementation behind ``train_style.py``, ``shira train`` and the app. It runs on one CPU, one
GPU, or several processes under ``accelerate launch`` (DDP): each rank takes its own slice of a
global batch, gradients are averaged, and every rank holds the same adapter.

``StyleTrainer(config, pipeline=..., data=..., callbacks=...)`` checks everything it can before any
model loads (the config, the images and captions, the output, the checkpoints); ``train()`` then
sets up, runs the loop and saves. It can train on a pipeline the caller already holds, and leaves
that pipeline's UNet as it found it; on in-memory ``(image, caption)`` pairs as well as a folder;
and reports each step's loss and honours a stop request (``TrainCallbacks``).

Stopping: a stop request (``callbacks.stop``) or a first Ctrl-C (SIGINT, in the main thread) ends the
run at the next step boundary with a resumable checkpoint and no adapter file: ``train`` returns
a record with ``stopped=True`` (a stop request) or raises ``TrainingInterrupted`` (Ctrl-C), and the
same config with ``resume_from_checkpoint="latest"`` finishes the run. A second Ctrl-C interrupts at
once.

Determinism: batch contents, noise and timesteps are drawn from generators seeded by
(seed, step, micro-step, rank), never from a global RNG, so a run resumed from a checkpoint ends
with the same adapter as an uninterrupted one. (LoRA's initial weights are drawn from ``seed`` too,
in a forked RNG.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..bases import load_pipeline, resolve
from ..conditioning import encode_prompts
from ..core.architecture import resolve_targets, target_weights, unet_family
from ..core.masks import build_masks, calibration_gradients
from ..core.sparse_training import SparseDeltaModel
from ..errors import ShiraError
from . import checkpoints
from .slots import resolve_mask_slot
from .config import (DEFAULT_RANK, TrainConfig, add_arguments, check_timesteps, config_from_args,  # noqa: F401
                     config_from_dict, fingerprint, validate)
from .dataset import StyleImages, infer_trigger, load_training_data
from .lora_files import DTYPES as _DTYPES
from .lora_files import lora_metadata, save_lora  # noqa: F401
from .loss_plot import plot_losses
from .validation_images import averaged, validation_images
from .outputs import (FREE_MARGIN, atomic_path, check_free_space, check_name_lengths, check_output, output_paths,
                      stem, write_text)

logger = logging.getLogger(__name__)


@dataclass
class TrainCallbacks:
    """Hooks for a caller that shows training live (an app's loss plot and progress bar).

    ``on_step(step, total, loss)``: after every optimizer step (1-based ``step``), on the main process.
    ``stop``: a ``threading.Event`` or a callable returning True; checked before every step, it ends
    the run with a resumable checkpoint (see the module docstring)."""

    on_step: Callable[[int, int, float], None] | None = None
    stop: threading.Event | Callable[[], bool] | None = None

    def stop_requested(self) -> bool:
        if self.stop is None:
            return False
        if isinstance(self.stop, threading.Event) or hasattr(self.stop, "is_set"):
            return self.stop.is_set()
        return bool(self.stop())


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C ended the run; ``record`` says where its checkpoint is (``record["checkpoint"]``)."""

    def __init__(self, record: dict):
        super().__init__(f"interrupted at step {record['steps']}")
        self.record = record


def train(config: TrainConfig, *, pipeline=None, data=None, callbacks: TrainCallbacks | None = None) -> dict:
    """Train one adapter; returns the run's record (also written next to the adapter as JSON).

    ``pipeline``: an SD/SDXL pipeline already loaded (else ``config.base`` is loaded); its UNet is
    restored when training ends. ``data``: a folder, or a list of (PIL image, caption) pairs, instead
    of ``config.train_data_dir``. ``callbacks``: per-step loss and stop request."""
    return StyleTrainer(config, pipeline=pipeline, data=data, callbacks=callbacks).train()


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (``torch.Generator`` takes one integer)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class StyleTrainer:
    """One training run: ``__init__`` validates (no model loads), ``train()`` = ``setup()``, ``loop()``,
    ``save()`` (or a checkpoint when stopped), and ``teardown()`` in every case."""

    def __init__(self, config: TrainConfig, *, pipeline=None, data=None, callbacks: TrainCallbacks | None = None):
        validate(config)
        check_name_lengths(config.output, _written_files(config, output_paths(config.output)), "--output")
        # "auto" becomes the slot itself, so the recipe, fingerprint and a resume all name it.
        slot = resolve_mask_slot(config, config.name or os.path.basename(config.output).split(".")[0])
        self.config = config = dataclasses.replace(config, mask_slot="none" if slot is None else str(slot))
        self.mask_slot = slot
        self.callbacks = callbacks or TrainCallbacks()
        self.paths = output_paths(config.output)
        self.given_pipeline = pipeline
        if pipeline is not None:
            _check_pipeline(pipeline, config)
        else:
            resolve(config.base)  # an unknown base is refused here, before anything loads
        self._check_timesteps_early()
        source = data if data is not None else config.train_data_dir
        if source is None:
            raise ShiraError("no training data: give --train_data_dir (or images to train on)")
        self.data = load_training_data(source)
        self.trigger, self.trigger_inferred = config.trigger or None, False
        if not self.trigger:
            inferred = infer_trigger(self.data.captions)
            if inferred:
                self.trigger, self.trigger_inferred = inferred, True
        check_output(config.output, config.overwrite)
        check_free_space(config.output, FREE_MARGIN, "--output")
        if config.discriminator:
            check_output(self.paths["discriminator"], config.overwrite)
        self.fingerprint = {"config": fingerprint(config), "data": self.data.fingerprint}
        self.resume_path, self.resume_state, self.clear_checkpoints = None, None, False
        if config.resume_from_checkpoint:
            self.resume_path, self.resume_state = checkpoints.load(config.resume_from_checkpoint,
                                                                   self.paths["checkpoints"])
            checkpoints.check_owner(self.resume_path, self.resume_state, self.fingerprint["config"],
                                    self.data.fingerprint)
        else:
            self.clear_checkpoints = checkpoints.check_new_run(self.paths["checkpoints"], config.overwrite)
        self._interrupted = False

    # ------------------------------------------------------------------------------------ checks

    def _check_room(self) -> None:
        """Once the adapter's size is known, before the first step: room on the disk for the adapter
        (values and indices; a kohya copy), the checkpoints a run may write, and a margin."""
        config, n = self.config, self.num_params
        value_bytes = {"fp16": 2, "bf16": 2, "fp32": 4}[config.save_dtype]
        adapter = n * (value_bytes + (4 if config.adapter == "shira" else 0))
        if config.adapter == "lora" and config.kohya:
            adapter *= 2
        checkpoint = n * 4 * (3 + (config.ema_decay is not None))  # values, Adam's two moments, EMA
        kept = checkpoints.KEEP + 1 if config.checkpointing_steps else 1  # a stop writes one
        check_free_space(config.output, adapter + kept * checkpoint + FREE_MARGIN, "--output")

    def _check_timesteps_early(self) -> None:
        """The timestep range against the base's noise schedule, read from its scheduler config
        (a folder base) or the given pipeline, without loading the model."""
        num = None
        if self.given_pipeline is not None:
            num = self.given_pipeline.scheduler.config.num_train_timesteps
        else:
            try:
                source = resolve(self.config.base)
                path = os.path.join(source.location, "scheduler", "scheduler_config.json")
                if source.kind in ("bundled", "folder") and os.path.isfile(path):
                    with open(path, encoding="utf-8") as handle:
                        num = json.load(handle).get("num_train_timesteps", 1000)
            except (ShiraError, OSError, ValueError):
                num = None
        if num is not None:  # else checked once the base is loaded (the order was checked already)
            check_timesteps(self.config, num)

    # ------------------------------------------------------------------------------------ the run

    def train(self) -> dict:
        try:
            self.setup()
            finished = self.loop()
            record = self.save() if finished else self.stop_record()
        finally:
            self.teardown()
        if finished and not self.config.no_check and self.accelerator.is_main_process:
            record["self_check"] = self.self_check(record)
        return record

    def self_check(self, record: dict) -> dict:
        """After teardown (the base's own weights back): the detector, the search, the chosen setting
        stored in the adapter; the record file and a stored discriminator follow the rewritten file.
        A check that fails leaves the adapter as it was written and says so."""
        config = self.config
        if config.adapter != "shira":  # a run's own pipeline keeps its PEFT layers after teardown
            return {"skipped": "LoRA adapters are not checked yet (SHiRA only)"}
        was_training = self.pipe.unet.training  # a caller's pipeline is left as teardown put it back
        self.pipe.unet.eval()
        try:
            from ..quality.after_training import check_new_style

            result = check_new_style(self.pipe, config.output, config.adapter, self.data.images, self.data.captions,
                                     self.trigger, detector_path=self.paths["detector"],
                                     train_seconds=record["seconds"], train_steps=record["steps"], seed=config.seed)
        except Exception as exc:  # the adapter is written and whole: a failed check must not lose it
            logger.warning("self-check failed (%s: %s); the adapter is written, without a recommended setting",
                           type(exc).__name__, exc)
            return {"failed": f"{type(exc).__name__}: {exc}"}
        finally:
            self.pipe.unet.train(was_training)
        logger.debug("self-check: %s", result)  # the commands print its summary line
        if config.discriminator and "chosen" in result:  # the file changed: keep its discriminator tied to it
            from ..transfer.discriminator import file_sha256, load_discriminator, save_discriminator

            disc, about = load_discriminator(self.paths["discriminator"])
            about["adapter_sha256"] = [file_sha256(f) for f in [config.output] + (
                [self.paths["kohya"]] if config.kohya else [])]
            save_discriminator(self.paths["discriminator"], disc, about)
        with open(self.paths["record"], encoding="utf-8") as handle:
            stored = json.load(handle)
        write_text(self.paths["record"], json.dumps({**stored, "self_check": result}, indent=1))
        return result

    def setup(self) -> None:
        """Loads the pipeline (unless given), builds the trainable adapter, optimizer and schedule,
        the frozen conditioning, and restores a checkpoint."""
        from accelerate import Accelerator
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        config = self.config
        self._restore = []  # how to put a given pipeline back, run in reverse by teardown
        self.model = None
        # cpu=True where there is no GPU, so processes started by `accelerate launch --multi_gpu` (or
        # torchrun) on a CPU-only machine form a gloo process group instead of each running alone.
        accelerator = self.accelerator = Accelerator(mixed_precision=config.mixed_precision,
                                                     cpu=not torch.cuda.is_available())
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.fingerprint["processes"] = self.world
        if self.resume_state is not None:
            checkpoints.check_processes(self.resume_path, self.resume_state, self.world)
        if accelerator.is_main_process:
            if self.clear_checkpoints:
                logger.info("clearing the earlier run's checkpoints in %s", self.paths["checkpoints"])
                checkpoints.clear(self.paths["checkpoints"])
            if self.trigger_inferred:
                logger.info("no trigger given: every caption shares %r; it is stored as the adapter's trigger",
                            self.trigger)
        accelerator.wait_for_everyone()

        if self.given_pipeline is not None:
            pipe = self.given_pipeline
            self._remember_pipeline(pipe)
        else:
            if accelerator.is_main_process:
                logger.info("loading base %s", config.base)
            pipe = load_pipeline(config.base, single_file_config=config.single_file_config)
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)
        family = self.family = unet_family(pipe.unet)
        size = self.size = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        device = self.device = accelerator.device
        pipe.to(device)
        for module in (pipe.vae, pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if module is not None:
                module.requires_grad_(False)
        data = self.images = StyleImages(self.data, size, trigger=self.trigger, warn=accelerator.is_main_process)
        noise_scheduler = self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.scaling = pipe.vae.config.scaling_factor
        self.max_timestep = check_timesteps(config, noise_scheduler.config.num_train_timesteps)

        # Frozen conditioning, computed once: every caption's embeddings, and (optionally) the latents.
        with torch.no_grad():
            self.text = {c: encode_prompts(pipe, family, [c], device, size)
                         for c in sorted(set(data.captions) | {""})}
            self.text[None] = _dropped_caption(pipe, family, self.text[""])
            self.cached = None
            if config.cache_latents:
                self.cached = [pipe.vae.encode(data.image(i)[None].to(device)).latent_dist.mode() * self.scaling
                               for i in range(len(data))]

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
                gradients = calibration_gradients(pipe.unet, weights, lambda unet, s: self.loss_of(unet, s, 0),
                                                  calibration)
            masks = build_masks(weights, config.mask, density=config.density, rank=rank_or_none, gradients=gradients,
                                seed=config.seed, slot=self.mask_slot)
            self.model = SparseDeltaModel(pipe.unet, masks)
            params = list(self.model.values.parameters())
        else:
            from peft import LoraConfig

            lora = LoraConfig(r=rank_or_none, lora_alpha=rank_or_none, init_lora_weights="gaussian",
                              target_modules=list(resolve_targets(config.targets)))
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(config.seed)  # the initial LoRA weights, without touching the global RNG
                pipe.unet.add_adapter(lora)
            self.model = pipe.unet
            params = [p for p in self.model.parameters() if p.requires_grad]
            for p in params:
                p.data = p.data.float()
        self.params = params
        self.num_params = sum(p.numel() for p in params)
        self._check_room()  # every rank: one alone refusing would leave the others waiting
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
        self.lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                          num_warmup_steps=config.lr_warmup_steps,
                                          num_training_steps=config.max_train_steps)
        self.wrapped, self.optimizer = accelerator.prepare(self.model, optimizer)
        self.ema = None
        if config.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(params, decay=config.ema_decay, foreach=True)

        self.step, self.losses = 0, []
        if self.resume_state is not None:
            self.step, self.losses = checkpoints.restore(self.resume_path, self.resume_state, params, self.optimizer,
                                                         self.lr_scheduler, self.ema, device)
            self.resume_state = None  # its tensors now live in the run
            if accelerator.is_main_process:
                logger.info("resumed from %s at step %d", self.resume_path, self.step)

    # ---------------------------------------------------------------------------------- one step

    def conditioning(self, captions: list) -> tuple[torch.Tensor, dict]:
        text = self.text
        embeds = torch.cat([text[c][0] for c in captions])
        if self.family != "sdxl":
            return embeds, {}
        return embeds, {"added_cond_kwargs": {k: torch.cat([text[c][1]["added_cond_kwargs"][k] for c in captions])
                                              for k in ("text_embeds", "time_ids")}}

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, list]:
        """Latents and captions (None: dropped) of this rank's part of the global batch."""
        config, data, rank, world = self.config, self.images, self.rank, self.world
        rng = np.random.default_rng([config.seed, step, micro])
        picks = rng.integers(0, len(data), size=config.train_batch_size * world)[rank::world]
        flips = rng.random(len(picks) * world)[rank::world] < 0.5 if config.random_flip else [False] * len(picks)
        with torch.no_grad():
            if self.cached is not None:
                cached = self.cached
                latents = torch.cat([cached[i].flip(-1) if f else cached[i] for i, f in zip(picks, flips)])
            else:
                images = torch.stack([data.image(i).flip(-1) if f else data.image(i) for i, f in zip(picks, flips)])
                latents = self.pipe.vae.encode(images.to(self.device)).latent_dist.mode() * self.scaling
        # Some captions are dropped so that the unconditional prediction learns the style too:
        # otherwise classifier-free guidance, which extrapolates away from it, cancels the style.
        dropped = rng.random(len(picks) * world)[rank::world] < config.caption_dropout
        return latents, [None if d else data.captions[i] for i, d in zip(picks, dropped)]

    def weighted_mse(self, pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        from diffusers.training_utils import compute_snr

        config, noise_scheduler = self.config, self.noise_scheduler
        per_image = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if not config.snr_gamma:
            return per_image.mean()
        # Min-SNR-gamma: low-noise steps (fine detail) stop dominating the loss, so the
        # high-noise steps that set colors and layout get their share.
        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=config.snr_gamma)
        weights = weights / (snr + 1) if noise_scheduler.config.prediction_type == "v_prediction" else weights / snr
        return (per_image * weights).mean()

    def loss_of(self, model, step: int, micro: int) -> torch.Tensor:
        config, device, noise_scheduler = self.config, self.device, self.noise_scheduler
        latents, captions = self.batch(step, micro)
        generator = torch.Generator(device=device).manual_seed(hash_seed(config.seed, step, micro, self.rank))
        noise = torch.randn(latents.shape, generator=generator, device=device)
        if config.noise_offset:
            # Lets the model move an image's mean brightness and color (dark night, washed pastel),
            # which zero-mean noise at the last timestep never asks of it.
            noise = noise + config.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator,
                                                              device=device)
        timesteps = torch.randint(config.min_timestep, self.max_timestep, (len(latents),), generator=generator,
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
        embeds, extra = self.conditioning(captions)
        with self.accelerator.autocast():
            pred = model(noisy, timesteps, embeds, **extra).sample
        if not guided:
            return self.weighted_mse(pred, target, timesteps)
        cond, uncond = pred.chunk(2)
        timesteps = timesteps[: len(cond)]
        guided_pred = uncond + config.guided_loss_scale * (cond - uncond)
        return 0.5 * (self.weighted_mse(cond, target, timesteps) + self.weighted_mse(guided_pred, target, timesteps))

    # ---------------------------------------------------------------------------------- the loop

    def loop(self) -> bool:
        """Steps until ``max_train_steps`` (True) or a stop request / Ctrl-C (False; checkpoint written)."""
        config, accelerator = self.config, self.accelerator
        self.started = time.time()
        bar = tqdm(total=config.max_train_steps, initial=self.step, desc=f"training {config.adapter}",
                   disable=not (config.progress and accelerator.is_main_process))
        try:
            with self._sigint_stops():
                while self.step < config.max_train_steps:
                    if self._should_stop():
                        self.checkpoint_path = self.save_checkpoint()
                        return False
                    self.train_step()
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.losses[-1]:.4f}")
                    if accelerator.is_main_process and self.callbacks.on_step is not None:
                        self.callbacks.on_step(self.step, config.max_train_steps, self.losses[-1])
                    self.after_step()
        finally:
            bar.close()
            self.seconds = time.time() - self.started
        return True

    def train_step(self) -> None:
        config, accelerator, wrapped = self.config, self.accelerator, self.wrapped
        total = 0.0
        for micro in range(config.gradient_accumulation_steps):
            last = micro == config.gradient_accumulation_steps - 1
            with nullcontext() if last or self.world == 1 else accelerator.no_sync(wrapped):
                loss = self.loss_of(wrapped, self.step, micro)
                accelerator.backward(loss / config.gradient_accumulation_steps)
            total += loss.item() / config.gradient_accumulation_steps
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)
        self.step += 1
        self.losses.append(_mean_over_ranks(accelerator, total))

    def after_step(self) -> None:
        """Periodic checkpoints and validation images."""
        config, accelerator, step = self.config, self.accelerator, self.step
        if accelerator.is_main_process:
            if config.checkpointing_steps and step % config.checkpointing_steps == 0 and step < config.max_train_steps:
                self.save_checkpoint(wait=False)
            if config.validation_prompt and (step % config.validation_steps == 0 or step == config.max_train_steps):
                with averaged(self.ema, self.params, self.model):
                    validation_images(self.pipe, self.model, config, self.paths["validation"], step, self.size,
                                      self.trigger)
        accelerator.wait_for_everyone()

    def _should_stop(self) -> bool:
        stop = self._interrupted or (self.accelerator.is_main_process and self.callbacks.stop_requested())
        if self.world > 1:  # every rank stops at the same step
            flag = torch.tensor(float(stop), device=self.accelerator.device)
            stop = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        return stop

    @contextmanager
    def _sigint_stops(self):
        """A first Ctrl-C asks for a stop at the next step boundary (a checkpoint there resumes
        exactly); a second one interrupts at once. Only where SIGINT has its default handler and
        this is the main thread (an app's worker thread keeps its own arrangements)."""
        if threading.current_thread() is not threading.main_thread() or \
                signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            yield
            return

        def on_sigint(signum, frame):
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True
            if self.accelerator.is_main_process:
                logger.warning("interrupted: saving a checkpoint after this step (Ctrl-C again to quit at once)")

        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def save_checkpoint(self, wait: bool = True) -> str:
        path = os.path.join(self.paths["checkpoints"], f"step-{self.step:06d}.pt")
        if self.accelerator.is_main_process:
            path = checkpoints.save(self.paths["checkpoints"], self.step, self.params, self.optimizer,
                                    self.lr_scheduler, self.losses, self.ema, self.fingerprint)
            logger.info("checkpoint %s", path)
        if wait:
            self.accelerator.wait_for_everyone()
        return path

    # ---------------------------------------------------------------------------------- results

    def _record(self) -> dict:
        return {
            "adapter": self.config.adapter, "base": str(self.config.base), "family": self.family,
            "steps": self.step, "trainable_params": self.num_params, "seconds": round(self.seconds, 1),
            "processes": self.world, "final_loss": float(np.mean(self.losses[-20:])) if self.losses else None,
            "trigger": self.trigger, "trigger_inferred": self.trigger_inferred, "losses": list(self.losses),
        }

    def stop_record(self) -> dict:
        """The record of a stopped run: no adapter written; ``checkpoint`` resumes it."""
        record = {**self._record(), "stopped": True, "checkpoint": self.checkpoint_path, "files": {},
                  "total_steps": self.config.max_train_steps}
        if self.accelerator.is_main_process:
            logger.info("stopped at step %d of %d; checkpoint %s", self.step, self.config.max_train_steps,
                        self.checkpoint_path)
        if self._interrupted:
            raise TrainingInterrupted(record)
        return record

    def save(self) -> dict:
        """Writes the adapter (atomically), loss curve and record; returns the record."""
        config, accelerator, params, model, paths = self.config, self.accelerator, self.params, self.model, self.paths
        if self.ema is not None:  # the average is the adapter from here on
            self.ema.copy_to(params)
        digest = _digest(params)
        rank_digests = [digest]
        if self.world > 1:  # every rank must hold the same adapter: say so in the log and the record
            from accelerate.utils import gather_object

            logger.warning("rank %d: trained parameters sha256 %s", self.rank, digest)
            rank_digests = gather_object([digest])
        unwritten = {"checkpoints"} | (set() if config.discriminator else {"discriminator"})
        record = {**self._record(), "stopped": False, "sha256": digest, "rank_sha256": rank_digests,
                  "files": {k: v for k, v in paths.items() if k not in unwritten}}
        del record["losses"]
        if accelerator.is_main_process:
            name = config.name or stem(config.output)
            recipe = {k: v for k, v in dataclasses.asdict(config).items()
                      if k not in ("progress", "extra", "output", "overwrite", "discriminator", "discriminator_samples",
                                   "discriminator_sample_steps")}
            recipe.update(config.extra, seconds=record["seconds"])
            if self.trigger_inferred:
                recipe.update(trigger=self.trigger, trigger_inferred=True)
            if self.data.source is None:
                recipe["images"] = len(self.data)
            if config.adapter == "shira":
                model.sync(force=True)  # force: an EMA copy above is invisible to change tracking
                adapter = model.adapter(dtype=_DTYPES[config.save_dtype], mask=config.mask, trigger=self.trigger,
                                        name=name, description=config.description, recipe=recipe)
                if config.mask == "struct":  # the mask described, not listed: a file the size of a LoRA's
                    adapter = adapter.with_mask_spec(self.mask_slot)
                with atomic_path(config.output) as temporary:
                    adapter.save(temporary)
            else:
                header = lora_metadata(config, self.family, recipe, trigger=self.trigger, name=name)
                save_lora(self.pipe.unet, self.family, config, paths, header)
            if config.discriminator:
                record["discriminator"] = self.store_discriminator()
            plot_losses(self.losses, paths["loss_curve"], f"{name} ({config.adapter})")
            record["file_mb"] = round(os.path.getsize(config.output) / 2**20, 3)
            write_text(paths["record"], json.dumps({**record, "recipe": recipe,
                                                    "losses": [round(x, 5) for x in self.losses]}, indent=1))
            logger.info("wrote %s", config.output)
        record["losses"] = list(self.losses)
        accelerator.wait_for_everyone()
        return record

    def store_discriminator(self) -> dict:
        """``--discriminator``: drawn with the adapter still in place (its values synced by ``save``,
        before they are rounded to ``--save_dtype``); ``self.discriminator`` keeps the fitted one."""
        from .discriminator import fit_and_store

        files = [self.config.output] + ([self.paths["kohya"]] if self.config.kohya else [])
        logger.info("fitting the discriminator: the new adapter draws images for the training captions")
        if isinstance(self.model, SparseDeltaModel):
            self.model.sync()
        self.pipe.unet.eval()
        try:
            self.discriminator, summary = fit_and_store(self.pipe, self.data, self.trigger, self.config,
                                                        self.paths["discriminator"], files, self.family)
        finally:
            self.pipe.unet.train()
        return summary

    # ---------------------------------------------------------------------------------- teardown

    def _remember_pipeline(self, pipe) -> None:
        """What training changes on a caller's pipeline, to put back afterwards."""
        unet = pipe.unet
        modules = [m for m in (pipe.vae, unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
                   if m is not None]
        grads = [(p, p.requires_grad) for m in modules for p in m.parameters()]
        training, checkpointing = unet.training, getattr(unet, "is_gradient_checkpointing", False)
        device = unet.device
        progress = dict(getattr(pipe, "_progress_bar_config", {}))
        had_progress = hasattr(pipe, "_progress_bar_config")

        def restore():
            if checkpointing != getattr(unet, "is_gradient_checkpointing", False):
                unet.enable_gradient_checkpointing() if checkpointing else unet.disable_gradient_checkpointing()
            unet.train(training)
            for p, flag in grads:
                p.requires_grad_(flag)
            if unet.device != device:
                pipe.to(device)
            if had_progress:
                pipe._progress_bar_config = progress
            elif hasattr(pipe, "_progress_bar_config"):
                del pipe._progress_bar_config

        self._restore.append(restore)

    def teardown(self) -> None:
        """Takes the adapter off the UNet (SHiRA: the base weights back; LoRA: the PEFT layers
        removed) and, for a caller's pipeline, puts back what training changed."""
        model = getattr(self, "model", None)
        try:
            if isinstance(model, SparseDeltaModel):
                model.detach()
            elif model is not None and self.given_pipeline is not None:
                self.accelerator.unwrap_model(self.wrapped if hasattr(self, "wrapped") else model,
                                              keep_fp32_wrapper=False)
                model.unload_lora()
            for restore in reversed(getattr(self, "_restore", [])):
                restore()
        finally:
            self.model = None
            if hasattr(self, "accelerator"):
                self.accelerator.end_training()


def _written_files(config: TrainConfig, paths: dict) -> list[str]:
    """The files a run writes beside the adapter (their names derive from it)."""
    keys = ["adapter", "loss_curve", "record"] + (["kohya"] if config.kohya and config.adapter == "lora" else [])
    return [paths[k] for k in keys + (["discriminator"] if config.discriminator else [])]


def _check_pipeline(pipe, config: TrainConfig) -> None:
    for part in ("unet", "vae", "scheduler", "text_encoder"):
        if getattr(pipe, part, None) is None:
            raise ShiraError(f"the pipeline given for training has no {part}: give an SD or SDXL pipeline")
    unet_family(pipe.unet)
    if config.adapter == "lora" and getattr(pipe.unet, "peft_config", None):
        raise ShiraError("the pipeline's UNet already holds LoRA adapters "
                         f"({', '.join(pipe.unet.peft_config)}); unload them before training a LoRA on it")


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


def _digest(params: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _mean_over_ranks(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="mean"))
