"""Train a bundled toy base from scratch: ``python -m shira_diffusion.toy.train_base --arch sd``.

Two stages, both seeded and resumable (``--resume`` picks up the last checkpoint; batches, noise
and timesteps are drawn from generators seeded by (seed, step), so a resumed run equals an
uninterrupted one):

1. the VAE, on toy images under the generic looks, plain toy images and random textures
   (L1 + MSE reconstruction, a small KL term); its latent scaling factor is then measured;
2. the UNet and the text encoder(s) together, on captions that describe the generic looks
   (``a red circle on a blue background, with thin horizontal stripes``), 10 % of them dropped
   for classifier-free guidance;
3. (``--decoder-steps``) the VAE decoder alone, on the images of stage 1 and on toy images under
   the bundled style looks, alone and mixed. The encoder stays frozen, so the latent space the
   UNet learned is unchanged; the decoder learns to draw what the looks put in the latents (an
   exact magenta band, period-8 lines, dark night colors), as a real base's VAE reconstructs any
   image. The UNet never sees these looks: teaching them is the style adapters' job.

Progress bars show the loss; sample grids land in the work folder every ``--sample-every``
steps. The result is an ordinary diffusers pipeline folder (fp16 weights, under 25 MB), loadable
with ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline.from_pretrained``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..conditioning import encode_prompts
from ..images import image_grid, to_model_range
from ..metrics import reconstruction_psnr
from .architectures import SCHEDULER_CONFIG, build_pipeline
from .base_checkpoints import checkpoints, load_checkpoint, save_checkpoint
from .generic import STRUCTURED, apply_generic, random_texture
from .looks import CONFLICTS, apply_looks
from .world import SIZE, render, sample_scene

SAMPLE_PROMPTS = [
    "a red circle on a blue background",
    "a yellow triangle on a black background",
    "a white ring on a green background",
    "a purple square on a orange background",  # the grammar is fixed: "a {color}"
    "a blue circle on a white background, with thin horizontal stripes",
    "a green square on a yellow background, with a dark gradient from the left",
    "a orange ring on a purple background, with checkers",
    "a black triangle on a red background, with a blue tint",
]


# ---------------------------------------------------------------------------------- data
def vae_batch(seed: int, step: int, size: int) -> torch.Tensor:
    """Images in [-1, 1], (size, 3, 64, 64): 25 % plain toy, 55 % under a generic look, 20 % textures."""
    rng = np.random.default_rng([seed, step, 1])
    images = []
    for _ in range(size):
        draw = rng.random()
        if draw < 0.2:
            images.append(random_texture(rng))
            continue
        image = render(sample_scene(rng))
        if draw >= 0.45:
            image = apply_generic(image, rng)[0]
        images.append(image)
    return to_model_range(images)


# The looks the bundled bases' decoders learned (stage 3); frame came later. Fixed, so that the
# commands in the model cards still make the bundled bases.
DECODER_LOOKS = ("halftone", "hatching", "night", "outline", "pastel", "pixel")


def bundled_look_mix(rng) -> list[str]:
    """One look of ``DECODER_LOOKS`` (70 %) or a pair that can be mixed (30 %)."""
    names = list(DECODER_LOOKS)
    count = 1 if rng.random() < 0.7 else 2
    while True:
        pick = [names[i] for i in rng.choice(len(names), size=count, replace=False)]
        if count == 1 or frozenset(pick) not in CONFLICTS:
            return pick


def decoder_batch(seed: int, step: int, size: int) -> torch.Tensor:
    """Images in [-1, 1]: half from ``vae_batch`` (so nothing it reconstructs is forgotten), half
    toy images under the bundled looks."""
    rng = np.random.default_rng([seed, step, 3])
    looked = [apply_looks(render(sample_scene(rng)), bundled_look_mix(rng)) for _ in range(size - size // 2)]
    return torch.cat([vae_batch(seed + 1, step, size // 2), to_model_range(looked)])


def caption_batch(seed: int, step: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """(images in [-1, 1], captions): half plain, half with a generic look named in the caption."""
    rng = np.random.default_rng([seed, step, 2])
    images, captions = [], []
    for _ in range(size):
        scene = sample_scene(rng)
        image, caption = render(scene), scene.prompt()
        if rng.random() < 0.5:
            image, phrase = apply_generic(image, rng)
            caption = f"{caption}, {phrase}"
        if rng.random() < 0.1:
            caption = ""  # for classifier-free guidance
        images.append(image)
        captions.append(caption)
    return to_model_range(images), captions


# ---------------------------------------------------------------------------------- evaluation sets
def vae_eval_sets(seed: int = 12345, count: int = 64) -> dict[str, torch.Tensor]:
    """Held-out sets with other seeds: plain toy images, and toy images under structured looks."""
    rng = np.random.default_rng(seed)
    plain = [render(sample_scene(rng)) for _ in range(count)]
    structured = [apply_generic(render(sample_scene(rng)), rng, STRUCTURED)[0] for _ in range(count)]
    looks = [apply_looks(render(sample_scene(rng)), bundled_look_mix(rng)) for _ in range(count)]
    return {"plain": to_model_range(plain), "structured": to_model_range(structured),
            "bundled looks": to_model_range(looks)}


def encode_text(pipe, family: str, captions: list[str], device) -> tuple[torch.Tensor, dict]:
    return encode_prompts(pipe, family, captions, device, SIZE)


# ---------------------------------------------------------------------------------- training
def save_samples(pipe, path: str, prompts=SAMPLE_PROMPTS, steps: int = 20, seed: int = 0) -> None:
    from PIL import Image

    pipe.set_progress_bar_config(disable=True)
    images = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            out = pipe(prompt, num_inference_steps=steps, guidance_scale=5.0, height=SIZE, width=SIZE,
                       generator=torch.Generator().manual_seed(seed + i), output_type="np")
            images.append((out.images[0] * 255).round().astype(np.uint8))
    Image.fromarray(image_grid(images)).save(path)


class _StepBatches(torch.utils.data.Dataset):
    """Batch number ``step`` of a stage, so DataLoader workers can render ahead in any order."""

    def __init__(self, make, seed: int, size: int):
        self.make, self.seed, self.size = make, seed, size

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int):
        return self.make(self.seed, step, self.size)


def _batches(make, seed: int, size: int, start: int, workers: int):
    """Batches ``start, start + 1, ...``; rendered by ``workers`` processes (numpy on the CPU is the
    bottleneck once the models sit on a GPU). Each batch depends on (seed, step) alone."""
    if workers <= 0:
        step = start
        while True:
            yield make(seed, step, size)
            step += 1
    loader = torch.utils.data.DataLoader(_StepBatches(make, seed, size), batch_size=None, sampler=range(start, 2**62),
                                         num_workers=workers, prefetch_factor=4)
    yield from loader


class _StageLength:
    """A stage's step count: given, or fixed from the measured speed to fit ``minutes``.

    The count is fixed after ``CALIBRATION`` steps, inside the learning-rate warm-up (which does not
    depend on the count), so a run given the recorded count repeats the timed run exactly."""

    CALIBRATION = 50

    def __init__(self, steps: int, minutes: float | None):
        self.steps, self.minutes, self._started = steps, minutes, None
        self.fixed = minutes is None

    def after_step(self, local: int, seconds_so_far: float) -> bool:
        """Record progress; return True when the count was just fixed."""
        if self.fixed:
            return False
        if local == 5:
            self._started = seconds_so_far  # leave out start-up (allocator, worker start)
        if local == self.CALIBRATION:
            per_step = (seconds_so_far - self._started) / (local - 5)
            budget = self.minutes * 60 - seconds_so_far
            self.steps = max(local + 100, int(budget / per_step) // 100 * 100)
            self.fixed = True
            return True
        return False


def train(args) -> dict:
    family = args.arch
    work = args.work_dir or os.path.join("out", f"train-toy-{family}")
    os.makedirs(work, exist_ok=True)
    pipe = build_pipeline(family, seed=args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    previous = _init_from(pipe, args.init_from) if args.init_from else None
    pipe.to(device)
    vae_len = _StageLength(args.vae_steps, args.vae_minutes)
    unet_len = _StageLength(args.unet_steps, args.unet_minutes)
    step = 0
    text_modules = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    vae_opt = torch.optim.AdamW(pipe.vae.parameters(), lr=args.vae_lr)
    decoder_params = list(pipe.vae.decoder.parameters()) + list(pipe.vae.post_quant_conv.parameters())
    decoder_opt = torch.optim.AdamW(decoder_params, lr=args.decoder_lr)
    unet_params = list(pipe.unet.parameters()) + [p for m in text_modules for p in m.parameters()]
    unet_opt = torch.optim.AdamW(unet_params, lr=args.unet_lr, weight_decay=1e-2)
    optimizers = {"vae": vae_opt, "unet": unet_opt, "decoder": decoder_opt}
    if args.resume and checkpoints(work):
        state = load_checkpoint(checkpoints(work)[-1], device)
        step = state["step"]
        pipe.vae.load_state_dict(state["vae"])
        pipe.unet.load_state_dict(state["unet"])
        pipe.text_encoder.load_state_dict(state["text_encoder"])
        if family == "sdxl":
            pipe.text_encoder_2.load_state_dict(state["text_encoder_2"])
        optimizers[state["stage"]].load_state_dict(state["optimizer"])
        # A count fixed from the measured speed (--*-minutes) is kept; a given count is the user's.
        if vae_len.minutes is not None and "vae_steps" in state:
            vae_len.steps, vae_len.fixed = state["vae_steps"], True
        if unet_len.minutes is not None and state["stage"] == "unet" and "unet_steps" in state:
            unet_len.steps, unet_len.fixed = state["unet_steps"], True
        print(f"resumed from step {step}")
    started = time.time()
    decoder_steps = args.decoder_steps
    bar = tqdm(total=vae_len.steps + unet_len.steps + decoder_steps, initial=step, desc=f"toy-{family}",
               mininterval=0.1 if sys.stderr.isatty() else 30)  # a log file gets a line every 30 s

    def checkpoint(stage, optimizer):
        save_checkpoint(work, step, pipe, optimizer, stage, family,
                         extra={"vae_steps": vae_len.steps, "unet_steps": unet_len.steps})

    def progress(length: _StageLength | None, local: int, stage_started: float, stage: str, loss) -> None:
        if length is not None and length.after_step(local, _synced_seconds(stage_started, device)):
            bar.total = vae_len.steps + unet_len.steps + decoder_steps  # the count was just fixed from the speed
            bar.refresh()
        bar.update(1)
        bar.set_postfix(stage=stage, loss=f"{loss.item():.4f}")

    # Stage 1: the VAE.
    pipe.vae.train()
    if step < vae_len.steps:
        stage_started = time.time()
        for images in _batches(vae_batch, args.seed, args.batch_size, step, args.workers):
            images = images.to(device, non_blocking=True)
            posterior = pipe.vae.encode(images).latent_dist
            generator = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + step)
            recon = pipe.vae.decode(posterior.sample(generator=generator)).sample
            loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + 1e-6 * posterior.kl().mean()
            _set_lr(vae_opt, args.vae_lr, step, vae_len.steps)
            vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            vae_opt.step()
            step += 1
            progress(vae_len, step, stage_started, "vae", loss)
            if step % args.checkpoint_every == 0 or step == vae_len.steps:
                checkpoint("vae", vae_opt)
            if step >= vae_len.steps:
                break
    pipe.vae.eval().requires_grad_(False)
    if previous is not None and vae_len.steps == 0:
        scaling = pipe.vae.config.scaling_factor  # the latent scale the loaded UNet was trained with
    else:
        scaling = _latent_scaling(pipe.vae, args.seed, device)
        pipe.vae.register_to_config(scaling_factor=scaling)

    # Stage 2: UNet and text encoder(s) together.
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    pipe.unet.train()
    for module in text_modules:
        module.train()
    if step < vae_len.steps + unet_len.steps:
        stage_started = time.time()
        local = step - vae_len.steps
        for images, captions in _batches(caption_batch, args.seed, args.batch_size, local, args.workers):
            generator = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + step)
            with torch.no_grad():
                latents = pipe.vae.encode(images.to(device, non_blocking=True)).latent_dist.mode() * scaling
            noise = torch.randn(latents.shape, generator=generator, device=device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),),
                                      generator=generator, device=device)
            embeds, extra = encode_text(pipe, family, captions, device)
            pred = pipe.unet(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, embeds, **extra).sample
            loss = F.mse_loss(pred, noise)
            _set_lr(unet_opt, args.unet_lr, local, unet_len.steps)
            unet_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet_params, 1.0)
            unet_opt.step()
            step += 1
            local += 1
            progress(unet_len, local, stage_started, "unet", loss)
            if step % args.checkpoint_every == 0 or local == unet_len.steps:
                checkpoint("unet", unet_opt)
            if args.sample_every and local % args.sample_every == 0 and local < unet_len.steps:
                _eval_mode(pipe, text_modules)
                save_samples(pipe, os.path.join(work, f"samples-{step:06d}.png"), steps=args.sample_steps)
                pipe.unet.train()
                for module in text_modules:
                    module.train()
            if local >= unet_len.steps:
                break

    # Stage 3: the decoder alone (the encoder, hence the UNet's latent space, stays as it is).
    done = vae_len.steps + unet_len.steps
    if step < done + decoder_steps:
        pipe.vae.decoder.train().requires_grad_(True)
        pipe.vae.post_quant_conv.requires_grad_(True)
        local = step - done
        for images in _batches(decoder_batch, args.seed, args.batch_size, local, args.workers):
            images = images.to(device, non_blocking=True)
            with torch.no_grad():
                latents = pipe.vae.encode(images).latent_dist.mode()
            recon = pipe.vae.decode(latents).sample
            loss = F.l1_loss(recon, images) + F.mse_loss(recon, images)
            _set_lr(decoder_opt, args.decoder_lr, local, decoder_steps)
            decoder_opt.zero_grad(set_to_none=True)
            loss.backward()
            decoder_opt.step()
            step += 1
            local += 1
            progress(None, local, 0.0, "decoder", loss)  # a fixed count: nothing to measure
            if step % args.checkpoint_every == 0 or local == decoder_steps:
                checkpoint("decoder", decoder_opt)
            if local >= decoder_steps:
                break
        pipe.vae.eval().requires_grad_(False)
    bar.close()
    _eval_mode(pipe, text_modules)
    seconds = time.time() - started
    args.vae_steps, args.unet_steps = vae_len.steps, unet_len.steps  # as fixed, for the record
    return _export(pipe, family, args, work, seconds, device, previous)


def _init_from(pipe, folder: str) -> dict:
    """Start from the weights of a pipeline folder this script wrote; returns its training record."""
    from diffusers import DiffusionPipeline

    source = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    for name in ("vae", "unet", "text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).load_state_dict(getattr(source, name).state_dict())
    pipe.vae.register_to_config(scaling_factor=source.vae.config.scaling_factor)
    record_path = os.path.join(folder, "training.json")
    if not os.path.isfile(record_path):
        return {"from": folder}
    with open(record_path) as handle:
        return json.load(handle)


def _synced_seconds(since: float, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.time() - since


def _eval_mode(pipe, text_modules) -> None:
    pipe.unet.eval()
    for module in text_modules:
        module.eval()


def _set_lr(optimizer, peak: float, step: int, total: int, warmup: int = 100) -> None:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        lr = peak * (step + 1) / warmup
    else:
        progress = (step - warmup) / max(1, total - warmup)
        lr = peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _latent_scaling(vae, seed: int, device) -> float:
    """1 / std of the latents of a batch, as diffusers' ``scaling_factor`` (SD's 0.18215)."""
    with torch.no_grad():
        latents = vae.encode(vae_batch(seed + 777, 0, 64).to(device)).latent_dist.mode()
    return float(1.0 / latents.std())


def _export(pipe, family: str, args, work: str, seconds: float, device, previous: dict | None = None) -> dict:
    pipe.to("cpu")
    sets = vae_eval_sets()
    psnr = {name: float(np.median(reconstruction_psnr(pipe.vae, images))) for name, images in sets.items()}
    pipe.to(torch.float16).save_pretrained(args.out)
    pipe.to(torch.float32)
    save_samples(pipe, os.path.join(args.out, "samples.png"), steps=args.sample_steps)
    size_mb = sum(os.path.getsize(p) for p in glob.glob(os.path.join(args.out, "**", "*"), recursive=True)
                  if os.path.isfile(p)) / 2**20
    record = {
        "arch": family,
        "seed": args.seed,
        "vae_steps": args.vae_steps,
        "unet_steps": args.unet_steps,
        "decoder_steps": args.decoder_steps,
        "batch_size": args.batch_size,
        "training_seconds": round(seconds, 1),
        "hardware": torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "vae_median_psnr_db": {k: round(v, 2) for k, v in psnr.items()},
        "size_mb": round(size_mb, 2),
        "unet_lr": args.unet_lr,
        "decoder_lr": args.decoder_lr,
    }
    if previous is not None:  # a continued run: the card counts both, oldest first
        record["continued_from"] = previous
        record["total_training_seconds"] = round(seconds + previous.get("total_training_seconds",
                                                                          previous.get("training_seconds", 0)), 1)
    with open(os.path.join(args.out, "training.json"), "w") as handle:
        json.dump(record, handle, indent=2)
    _write_model_card(args.out, record)
    return record


def _command(record: dict, init_from: str | None = None) -> str:
    text = (f"python -m shira_diffusion.toy.train_base --arch {record['arch']} --seed {record['seed']} "
            f"--vae-steps {record['vae_steps']} --unet-steps {record['unet_steps']} --batch-size {record['batch_size']}")
    if record.get("unet_lr", 4e-4) != 4e-4:
        text += f" --unet-lr {record['unet_lr']:g}"
    if record.get("decoder_steps"):
        text += f" --decoder-steps {record['decoder_steps']}"
        if record.get("decoder_lr", 2e-4) != 2e-4:
            text += f" --decoder-lr {record['decoder_lr']:g}"
    return text + (f" --init-from {init_from}" if init_from else "")


def _write_model_card(folder: str, record: dict) -> None:
    family = "SDXL" if record["arch"] == "sdxl" else "SD1.5"
    chain = [record]
    while "continued_from" in chain[0]:
        chain.insert(0, chain[0]["continued_from"])
    commands = [_command(r, init_from=f"assets/toy-{record['arch']}" if i else None) for i, r in enumerate(chain)]
    runs = "\n".join(f"{i + 1}. `{c}` ({r['training_seconds'] / 60:.1f} minutes on {r['hardware']})"
                     for i, (c, r) in enumerate(zip(commands, chain)))
    total = record.get("total_training_seconds", record["training_seconds"])
    psnr = ", ".join(f"{name} {value} dB" for name, value in record["vae_median_psnr_db"].items())
    guidance = ("\n- classifier-free guidance uses the encoded empty prompt (`force_zeros_for_empty_prompt: false`),"
                " the unconditional input the UNet was trained on" if record["arch"] == "sdxl" else "")
    text = f"""# toy-{record['arch']}

A small {family}-family diffusion base for the shira-diffusion toy world (64 x 64 images of one
shape on a plain background, `a red circle on a blue background`), trained from scratch by:

{runs}

- training time: {total / 60:.1f} minutes in all
- VAE median reconstruction PSNR (held-out sets): {psnr}
- size on disk: {record['size_mb']} MB (fp16){guidance}

![samples](samples.png)
"""
    with open(os.path.join(folder, "README.md"), "w") as handle:
        handle.write(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shira_diffusion.toy.train_base", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["sd", "sdxl"], required=True)
    parser.add_argument("--out", help="pipeline folder to write (default: assets/toy-ARCH)")
    parser.add_argument("--work-dir", help="checkpoints and sample grids (default: out/train-toy-ARCH)")
    parser.add_argument("--seed", type=int, default=None, help="default: 0 for sd, 1 for sdxl")
    parser.add_argument("--vae-steps", type=int, default=6000)
    parser.add_argument("--unet-steps", type=int, default=20000)
    parser.add_argument("--vae-minutes", type=float, help="instead of --vae-steps: fit the VAE stage in about this "
                        "time (the count is fixed from the first 50 steps' speed and recorded)")
    parser.add_argument("--unet-minutes", type=float, help="instead of --unet-steps: likewise for the UNet stage")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="processes rendering batches ahead (use them on a GPU)")
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--unet-lr", type=float, default=4e-4)
    parser.add_argument("--decoder-steps", type=int, default=0, help="then train the VAE decoder alone on the "
                        "bundled style looks too (encoder frozen: the UNet's latent space is kept)")
    parser.add_argument("--decoder-lr", type=float, default=2e-4)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--sample-every", type=int, default=2000, help="0: only at the end")
    parser.add_argument("--sample-steps", type=int, default=20, help="sampling steps of the sample grids")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--init-from", help="start from the weights of a pipeline folder this script wrote "
                        "(with --vae-steps 0: continue the UNet stage; its VAE and latent scale are kept)")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = 0 if args.arch == "sd" else 1
    args.out = args.out or os.path.join("assets", f"toy-{args.arch}")
    print(json.dumps(train(args), indent=2))


if __name__ == "__main__":
    main()
