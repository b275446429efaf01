"""Train a bundled toy base from scratch: ``python -m shira_diffusion.toy.train_base --arch sd``.

Two stages, both seeded and resumable (``--resume`` picks up the last checkpoint; batches, noise
and timesteps are drawn from generators seeded by (seed, step), so a resumed run equals an
uninterrupted one):

1. the VAE, on toy images under the generic looks, plain toy images and random textures
   (L1 + MSE reconstruction, a small KL term); its latent scaling factor is then measured;
2. the UNet and the text encoder(s) together, on captions that describe the generic looks
   (``a red circle on a blue background, with thin horizontal stripes``), 10 % of them dropped
   for classifier-free guidance.

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
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .architectures import SCHEDULER_CONFIG, build_pipeline
from .generic import STRUCTURED, apply_generic, random_texture
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
    return _to_tensor(images)


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
    return _to_tensor(images), captions


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------- metrics
def reconstruction_psnr(vae, images: torch.Tensor) -> np.ndarray:
    """PSNR (dB) of each image through the VAE (encode -> mode -> decode), on the 0-255 scale."""
    with torch.no_grad():
        recon = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
    mse = ((recon - images) ** 2).mean(dim=(1, 2, 3)) * (255 / 2) ** 2
    return (10 * torch.log10(255**2 / mse.clamp_min(1e-10))).numpy()


def vae_eval_sets(seed: int = 12345, count: int = 64) -> dict[str, torch.Tensor]:
    """Held-out sets with other seeds: plain toy images, and toy images under structured looks."""
    rng = np.random.default_rng(seed)
    plain = [render(sample_scene(rng)) for _ in range(count)]
    structured = [apply_generic(render(sample_scene(rng)), rng, STRUCTURED)[0] for _ in range(count)]
    return {"plain": _to_tensor(plain), "structured": _to_tensor(structured)}


# ---------------------------------------------------------------------------------- text
def encode_text(pipe, family: str, captions: list[str], device) -> tuple[torch.Tensor, dict]:
    """Prompt embeddings (and SDXL's added conditions), differentiable through the text encoders."""
    ids = pipe.tokenizer(captions, padding="max_length", truncation=True, max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids.to(device)
    if family == "sd":
        return pipe.text_encoder(ids).last_hidden_state, {}
    first = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    second_out = pipe.text_encoder_2(ids, output_hidden_states=True)
    embeds = torch.cat([first, second_out.hidden_states[-2]], dim=-1)
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * len(captions), dtype=embeds.dtype, device=device)
    return embeds, {"added_cond_kwargs": {"text_embeds": second_out.text_embeds, "time_ids": time_ids}}


# ---------------------------------------------------------------------------------- training
def _checkpoints(work: str) -> list[str]:
    return sorted(glob.glob(os.path.join(work, "checkpoint-*.pt")), key=lambda p: int(p.rsplit("-", 1)[1][:-3]))


def _save_checkpoint(work, stage_step, pipe, opt, stage, family, keep=2):
    state = {"step": stage_step, "vae": pipe.vae.state_dict(), "unet": pipe.unet.state_dict(),
             "text_encoder": pipe.text_encoder.state_dict(), "optimizer": opt.state_dict(), "stage": stage}
    if family == "sdxl":
        state["text_encoder_2"] = pipe.text_encoder_2.state_dict()
    path = os.path.join(work, f"checkpoint-{stage_step}.pt")
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)  # never a half-written checkpoint
    for old in _checkpoints(work)[:-keep]:
        os.remove(old)


def _grid(images: list[np.ndarray], columns: int = 8) -> np.ndarray:
    rows = [np.concatenate(images[i : i + columns], axis=1) for i in range(0, len(images), columns)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def save_samples(pipe, path: str, prompts=SAMPLE_PROMPTS, steps: int = 20, seed: int = 0) -> None:
    from PIL import Image

    pipe.set_progress_bar_config(disable=True)
    images = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            out = pipe(prompt, num_inference_steps=steps, guidance_scale=5.0, height=SIZE, width=SIZE,
                       generator=torch.Generator().manual_seed(seed + i), output_type="np")
            images.append((out.images[0] * 255).round().astype(np.uint8))
    Image.fromarray(_grid(images)).save(path)


def train(args) -> dict:
    family = args.arch
    work = args.work_dir or os.path.join("out", f"train-toy-{family}")
    os.makedirs(work, exist_ok=True)
    pipe = build_pipeline(family, seed=args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe.to(device)
    total = args.vae_steps + args.unet_steps
    step = 0
    text_modules = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    vae_opt = torch.optim.AdamW(pipe.vae.parameters(), lr=args.vae_lr)
    unet_params = list(pipe.unet.parameters()) + [p for m in text_modules for p in m.parameters()]
    unet_opt = torch.optim.AdamW(unet_params, lr=args.unet_lr, weight_decay=1e-2)
    if args.resume and _checkpoints(work):
        state = torch.load(_checkpoints(work)[-1], map_location=device)
        step = state["step"]
        pipe.vae.load_state_dict(state["vae"])
        pipe.unet.load_state_dict(state["unet"])
        pipe.text_encoder.load_state_dict(state["text_encoder"])
        if family == "sdxl":
            pipe.text_encoder_2.load_state_dict(state["text_encoder_2"])
        (vae_opt if state["stage"] == "vae" else unet_opt).load_state_dict(state["optimizer"])
        print(f"resumed from step {step}")
    started = time.time()
    bar = tqdm(total=total, initial=step, desc=f"toy-{family}")

    # Stage 1: the VAE.
    pipe.vae.train()
    while step < args.vae_steps:
        images = vae_batch(args.seed, step, args.batch_size).to(device)
        posterior = pipe.vae.encode(images).latent_dist
        generator = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + step)
        recon = pipe.vae.decode(posterior.sample(generator=generator)).sample
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + 1e-6 * posterior.kl().mean()
        _set_lr(vae_opt, args.vae_lr, step, args.vae_steps)
        vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        vae_opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(stage="vae", loss=f"{loss.item():.4f}")
        if step % args.checkpoint_every == 0 or step == args.vae_steps:
            _save_checkpoint(work, step, pipe, vae_opt, "vae", family)
    pipe.vae.eval().requires_grad_(False)
    scaling = _latent_scaling(pipe.vae, args.seed, device)
    pipe.vae.register_to_config(scaling_factor=scaling)

    # Stage 2: UNet and text encoder(s) together.
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    pipe.unet.train()
    for module in text_modules:
        module.train()
    while step < total:
        local = step - args.vae_steps
        images, captions = caption_batch(args.seed, local, args.batch_size)
        generator = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + step)
        with torch.no_grad():
            latents = pipe.vae.encode(images.to(device)).latent_dist.mode() * scaling
        noise = torch.randn(latents.shape, generator=generator, device=device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),),
                                  generator=generator, device=device)
        embeds, extra = encode_text(pipe, family, captions, device)
        pred = pipe.unet(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, embeds, **extra).sample
        loss = F.mse_loss(pred, noise)
        _set_lr(unet_opt, args.unet_lr, local, args.unet_steps)
        unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet_params, 1.0)
        unet_opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(stage="unet", loss=f"{loss.item():.4f}")
        if step % args.checkpoint_every == 0 or step == total:
            _save_checkpoint(work, step, pipe, unet_opt, "unet", family)
        if args.sample_every and (local + 1) % args.sample_every == 0:
            _eval_mode(pipe, text_modules)
            save_samples(pipe, os.path.join(work, f"samples-{step:06d}.png"), steps=args.sample_steps)
            pipe.unet.train()
            for module in text_modules:
                module.train()
    bar.close()
    _eval_mode(pipe, text_modules)
    seconds = time.time() - started
    return _export(pipe, family, args, work, seconds, device)


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


def _export(pipe, family: str, args, work: str, seconds: float, device) -> dict:
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
        "batch_size": args.batch_size,
        "training_seconds": round(seconds, 1),
        "hardware": torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "vae_median_psnr_db": {k: round(v, 2) for k, v in psnr.items()},
        "size_mb": round(size_mb, 2),
    }
    with open(os.path.join(args.out, "training.json"), "w") as handle:
        json.dump(record, handle, indent=2)
    _write_model_card(args.out, record)
    return record


def _write_model_card(folder: str, record: dict) -> None:
    family = "SDXL" if record["arch"] == "sdxl" else "SD1.5"
    text = f"""# toy-{record['arch']}

A small {family}-family diffusion base for the shira-diffusion toy world (64 x 64 images of one
shape on a plain background, `a red circle on a blue background`), trained from scratch by
`python -m shira_diffusion.toy.train_base --arch {record['arch']} --seed {record['seed']} --vae-steps {record['vae_steps']} --unet-steps {record['unet_steps']} --batch-size {record['batch_size']}`.

- training time: {record['training_seconds'] / 60:.1f} minutes on {record['hardware']}
- VAE median reconstruction PSNR (held-out sets): plain {record['vae_median_psnr_db']['plain']} dB, structured looks {record['vae_median_psnr_db']['structured']} dB
- size on disk: {record['size_mb']} MB (fp16)

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
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--unet-lr", type=float, default=4e-4)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--sample-every", type=int, default=2000, help="0: only at the end")
    parser.add_argument("--sample-steps", type=int, default=20, help="sampling steps of the sample grids")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = 0 if args.arch == "sd" else 1
    args.out = args.out or os.path.join("assets", f"toy-{args.arch}")
    print(json.dumps(train(args), indent=2))


if __name__ == "__main__":
    main()
