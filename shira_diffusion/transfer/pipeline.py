"""Trans-LoRA for diffusion: an adapter carried to a new base with synthetic data and a few seed images.

``transfer(config)`` runs the steps, each its own function here or beside it:
1. ``synthetic_prompts`` (``prompts.py``): prompts imitating the seed captions;
2. ``teacher_images`` (``discriminator.py``): the source base with the source adapter draws them;
3. ``filter_samples`` (``discriminator.py``): a real-vs-synthetic classifier trained on the seed
   images (or stored beside the adapter by ``shira train --discriminator``) keeps the drawn samples
   it takes for real, drawing more until ``synthetic`` are kept (at most ``max_draws``); acceptance
   and the MMD to the seeds, before and after, are reported;
4. ``train_student``: a new adapter on the target base (the source's kind unless ``kind`` says
   otherwise), trained on the kept samples and the seed images (``with_seeds``; False: the kept
   samples alone) through the trainer API.
Then a JSON report and a side-by-side PNG (source on the old base, student on the new base, the
new base alone; same prompts and seeds) beside the output, all behind one progress bar.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..bases import BUNDLED, load_pipeline, resolve
from ..core.adapter import SparseAdapter
from ..files import check_output_file
from ..core.architecture import unet_family
from ..core.bank import StyleBank
from ..errors import ArchitectureMismatchError, ShiraError
from ..generate import applied_adapter, check_guidance
from .discriminator import (FILTER_L2, Discriminator, calibration_count, draw_seeds, fit_discriminator,
                            image_features, mmd_rbf, stored_discriminator, teacher_images)
from .lora import AdapterFile, check_lora, read_adapter_file
from .prompts import synthetic_prompts

KINDS = ("shira", "lora")


@dataclass
class TransferConfig:
    """``shira transfer``'s options (``--adapter``, ``--from``, ``--to``, ``--seed-data``, ``--out``, ...)."""

    adapter: str
    source_base: str
    target_base: str
    seed_data: object  # a folder of images + same-name .txt captions, or [(PIL image, caption)]
    out: str
    kind: str | None = None  # --as: shira | lora (default: the source's kind)
    synthetic: int = 50  # samples kept for the student
    generator: str | None = None  # a causal LM (path / cached id); None: offline neighbour prompts
    filter: bool = True  # False: the first ``synthetic`` drawn samples, unfiltered (ablation)
    with_seeds: bool = True  # the student also learns from the seed images (the only real data); False: synthetic only
    max_draws: int | None = None  # cap on drawn samples for filtering (default 4 x synthetic)
    calibration: int | None = None  # synthetic samples the discriminator trains against (default 2 x seeds, >= 10)
    steps: int = 500  # student training steps
    rank: int | None = None  # student rank (default: the source's LoRA rank, else 2)
    slot: int | None = None  # the student's Struct slot (SHiRA); None: the trainer's "auto" (a slot free on the base)
    learning_rate: float = 3e-3
    guidance: float = 5.0  # the teacher's and the report's guidance
    sample_steps: int = 20  # denoising steps of the teacher and the report images
    batch_size: int = 8  # images per pipeline call
    seed: int = 0
    overwrite: bool = False
    progress: bool = True
    report_images: int = 4  # columns of the side-by-side PNG (0: no PNG)
    train_overrides: dict = field(default_factory=dict)  # other TrainConfig fields for the student
    # A discriminator stored beside the adapter (shira train --discriminator) instead of one fit on the seeds.
    stored_discriminator: bool = True
    process: dict | None = None  # which process of a folder batch ran it (rank, world; transfer_folder), for the report


def report_paths(out: str) -> dict[str, str]:
    stem = out[: -len(".safetensors")]
    return {"adapter": out, "report": stem + ".transfer.json", "sheet": stem + ".transfer.png"}


# ------------------------------------------------------------------------------------ checks

def check_config(config: TransferConfig) -> None:
    """Everything checkable without loading a model; ``ShiraError`` with one line."""
    if not isinstance(config.out, str) or not config.out.endswith(".safetensors"):
        raise ShiraError(f"--out must be a .safetensors file, got {config.out!r}")
    if config.kind is not None and config.kind not in KINDS:
        raise ShiraError(f"--as must be one of {', '.join(KINDS)}, got {config.kind!r}")
    if not isinstance(config.report_images, int) or config.report_images < 0:
        raise ShiraError(f"--report-images must be an integer >= 0, got {config.report_images!r}")
    for name in ("synthetic", "steps", "sample_steps", "batch_size"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ShiraError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
    if config.max_draws is not None and config.max_draws < config.synthetic:
        raise ShiraError(f"--max-draws ({config.max_draws}) must be at least --synthetic ({config.synthetic})")
    if config.slot is not None and not 0 <= config.slot < 8:
        raise ShiraError(f"--slot must be in [0, 8), got {config.slot}")
    check_guidance(config.guidance)
    for flag, base in (("--from", config.source_base), ("--to", config.target_base)):
        try:
            resolve(base)
        except ShiraError as exc:
            raise ShiraError(f"{flag}: {exc}") from None
    check_out_files(config)


def check_out_files(config: TransferConfig) -> None:
    """The files the run writes: names that fit (with their temporary names), nothing replaced without
    ``overwrite`` (but the student an interrupted run of this transfer wrote), a place with room."""
    from ..training.outputs import FREE_MARGIN, check_free_space, check_name_lengths, output_paths
    from .resume import student_done

    trainer = output_paths(config.out)
    written = [*report_paths(config.out).values(), trainer["record"], trainer["loss_curve"]]
    check_name_lengths(config.out, written, "--out")
    check_output_file(config.out, config.overwrite or student_done(config.out), "--out")
    check_output_file(report_paths(config.out)["report"], config.overwrite)
    check_free_space(config.out, FREE_MARGIN, "--out")


def read_seed_data(source):
    """The seed images and captions (``TrainingData``); an empty folder or missing captions fail."""
    from ..training import load_training_data

    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source) and not os.listdir(source):
        raise ShiraError(f"--seed-data {os.fspath(source)} is empty: put a few of the style's images there, each "
                         "with a same-name .txt caption")
    try:
        data = load_training_data(source)
    except ShiraError as exc:
        raise ShiraError(f"--seed-data: {exc}") from None
    if not any(c.strip() for c in data.captions):
        raise ShiraError("--seed-data: no image has a caption; add same-name .txt files (the synthetic prompts "
                         "imitate them)")
    return data


def bundled_family(base: str) -> str | None:
    return BUNDLED[base][0] if isinstance(base, str) and base in BUNDLED else None


def check_source(info: AdapterFile, pipe, base_label: str) -> None:
    """The adapter fits the source pipeline (family, tensor names and shapes)."""
    family = unet_family(pipe.unet)
    if info.kind == "shira":
        adapter = SparseAdapter.load(info.path)
        try:
            adapter.check_compatible(dict(pipe.unet.named_parameters()), family)
        except ArchitectureMismatchError as exc:
            raise ArchitectureMismatchError(f"--adapter does not fit --from {base_label}: {exc}") from None
    else:
        try:
            check_lora(pipe, info)
        except ArchitectureMismatchError as exc:
            raise ArchitectureMismatchError(f"--adapter does not fit --from {base_label}: {exc}") from None


# ------------------------------------------------------------------------------------ steps 2 and 3

@contextmanager
def source_applied(pipe, info: AdapterFile, weight: float = 1.0):
    """An adapter on ``pipe`` inside the block: SHiRA fused through a bank, LoRA loaded through
    diffusers (any format it reads) and taken out again afterwards, PEFT layers included, so that
    the UNet's parameters keep their names for what comes next (``generate.applied_adapter``)."""
    bank = StyleBank(pipe.unet) if info.kind == "shira" else None
    with applied_adapter(pipe, bank, info.path, info.kind, weight):
        yield


@dataclass
class FilterResult:
    kept: list[int]  # indices into the drawn samples, in draw order
    drawn: int
    accepted: int  # kept because the discriminator took them for real
    taken_for_real: int  # drawn samples the discriminator took for real (may exceed ``accepted``)
    filled: int  # kept as the most real-looking of the rejected ones, when the cap was reached
    p_real: list[float]
    mmd_before: float
    mmd_after: float
    discriminator: dict

    def summary(self) -> dict:
        return {"drawn": self.drawn, "kept": len(self.kept), "accepted": self.accepted, "filled": self.filled,
                "taken_for_real": self.taken_for_real,
                "acceptance_rate": round(self.taken_for_real / self.drawn, 4) if self.drawn else 0.0,
                "mmd_before": round(self.mmd_before, 5), "mmd_after": round(self.mmd_after, 5),
                "p_real_mean": round(float(np.mean(self.p_real)), 4) if self.p_real else None}


def filter_samples(real_features: np.ndarray, calibration_features: np.ndarray, draw, wanted: int, max_draws: int,
                   *, use_filter: bool = True, l2: float = FILTER_L2,
                   discriminator: Discriminator | None = None) -> tuple[FilterResult, np.ndarray]:
    """Step 3: rejection sampling. ``draw(n)`` returns the features of ``n`` new synthetic samples
    (in draw order). A discriminator fit on ``real_features`` vs ``calibration_features`` keeps the
    samples it takes for real until ``wanted`` are kept or ``max_draws`` are drawn; then the most
    real-looking rejected ones fill up. Without ``use_filter``: the first ``wanted``, unjudged.
    ``discriminator``: one already fit (stored beside the adapter); ``calibration_features`` unused.
    Returns the result and the features of every drawn sample."""
    disc = discriminator if discriminator is not None else fit_discriminator(real_features, calibration_features,
                                                                             l2=l2)
    feats: list[np.ndarray] = []
    accepted: list[int] = []
    while len(accepted) < wanted and sum(len(f) for f in feats) < max_draws:
        n = min(wanted - len(accepted) if not use_filter else max(wanted - len(accepted), 1),
                max_draws - sum(len(f) for f in feats))
        start = sum(len(f) for f in feats)
        new = draw(n)
        feats.append(new)
        if use_filter:
            accepted += [start + i for i, ok in enumerate(disc.takes_for_real(new)) if ok]
        else:
            accepted += list(range(start, start + len(new)))
    everything = np.concatenate(feats) if feats else np.zeros((0, real_features.shape[1]))
    p_real = disc.p_real(everything) if len(everything) else np.zeros(0)
    kept = accepted[:wanted]
    filled = 0
    if len(kept) < wanted:
        rejected = [i for i in np.argsort(-p_real) if i not in set(kept)]
        extra = rejected[: wanted - len(kept)]
        filled = len(extra)
        kept = sorted(kept + [int(i) for i in extra])
    # MMD on features standardised by the real and every drawn sample, one bandwidth for both.
    pooled = np.concatenate([real_features, everything])
    mean, scale = pooled.mean(axis=0), pooled.std(axis=0) + 1e-6
    z_real, z_all = (real_features - mean) / scale, (everything - mean) / scale
    d2 = ((pooled[:, None] - pooled[None]) / scale) ** 2
    sigma = float(np.sqrt(np.median(d2.sum(-1)[~np.eye(len(pooled), dtype=bool)]))) or 1.0
    result = FilterResult(kept=kept, drawn=len(everything), accepted=min(len(accepted), wanted),
                          taken_for_real=len(accepted), filled=filled,
                          p_real=[float(p) for p in p_real], mmd_before=mmd_rbf(z_all, z_real, sigma),
                          mmd_after=mmd_rbf(z_all[kept], z_real, sigma), discriminator=disc.to_dict())
    return result, everything


# ------------------------------------------------------------------------------------ step 4

STUDENT_CHECKPOINT_STEPS = 100  # a kill loses at most this many of the student's steps


def train_student(pipe, pairs: list, config: TransferConfig, kind: str, trigger: str | None, rank: int,
                  on_step=None, extra: dict | None = None, resume: bool = False) -> dict:
    """Step 4: a new ``kind`` adapter on ``pipe`` (the target base) from in-memory (PIL image, caption)
    pairs, written to ``config.out``; returns the trainer's record. ``resume``: from the student's
    latest checkpoint. An exception ``on_step`` raises (a caller's stop) ends training with a
    checkpoint first, then propagates: a rerun resumes there."""
    import threading

    from ..training import TrainCallbacks, TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = dict(train_data_dir=None, output=config.out, base=config.target_base, trigger=trigger or None,
                  adapter=kind, rank=rank, max_train_steps=config.steps, learning_rate=config.learning_rate,
                  seed=config.seed, overwrite=config.overwrite, progress=False, cache_latents=True,
                  description="", extra=extra or {}, checkpointing_steps=STUDENT_CHECKPOINT_STEPS,
                  resume_from_checkpoint="latest" if resume else None)
    if config.slot is not None and kind == "shira" and "mask_slot" in fields:
        values["mask_slot"] = str(config.slot)  # else the trainer's default: "auto", a slot free on the base
    values.update(config.train_overrides)
    stop, raised = threading.Event(), []

    def step(done: int, total: int, loss: float) -> None:
        try:
            if on_step is not None:
                on_step(done, total, loss)
        except Exception as exc:  # the trainer stops at the next step with a checkpoint
            raised.append(exc)
            stop.set()

    record = train(TrainConfig(**values), pipeline=pipe, data=pairs, callbacks=TrainCallbacks(on_step=step, stop=stop))
    if raised:
        raise raised[0]
    return record


# ------------------------------------------------------------------------------------ the report

def write_json(path: str, values: dict) -> None:
    from ..files import write_atomically

    text = json.dumps(values, indent=1, default=str)

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)

    write_atomically(path, write, overwrite=True)


def side_by_side(rows: list[tuple[str, list[np.ndarray]]]) -> "PIL.Image.Image":  # noqa: F821
    """Rows of equal-size images with a label column on the left."""
    from PIL import Image, ImageDraw

    from ..images import image_grid

    label_width = 150
    height = rows[0][1][0].shape[0]
    columns = len(rows[0][1])
    grid = image_grid([im for _, images in rows for im in images], columns)
    sheet = Image.new("RGB", (label_width + grid.shape[1], grid.shape[0]), "white")
    sheet.paste(Image.fromarray(grid), (label_width, 0))
    draw = ImageDraw.Draw(sheet)
    for r, (label, _) in enumerate(rows):
        for j, line in enumerate(label.split("\n")):
            draw.text((4, r * height + 4 + 12 * j), line, fill="black")
    return sheet


def _kind_of(info: AdapterFile, config: TransferConfig) -> str:
    return config.kind or info.kind


# ------------------------------------------------------------------------------------ the whole run

def transfer(config: TransferConfig, *, source_pipe=None, target_pipe=None, on_progress=None) -> dict:
    """Carry ``config.adapter`` from ``config.source_base`` to ``config.target_base``; writes the
    student adapter, ``<out>.transfer.json`` and ``<out>.transfer.png``; returns the report.
    ``source_pipe`` / ``target_pipe``: pipelines already loaded for the two bases.
    ``on_progress(done, total, stage)``: called wherever the progress bar moves (the app's progress;
    an exception it raises ends the run there, which is how the app stops one).
    Interrupted (an exception, Ctrl-C), the same call again resumes: the kept samples are not drawn
    again and the student continues from its checkpoint (``resume.py``)."""
    from . import resume

    check_config(config)
    info = read_adapter_file(config.adapter)
    family = bundled_family(config.source_base)
    if family and info.family and info.family != family:
        raise ArchitectureMismatchError(
            f"--adapter {os.path.basename(info.path)} was made for an {info.family.upper()}-family base, "
            f"--from {config.source_base} is {family.upper()}-family")
    seeds = read_seed_data(config.seed_data)
    kind = _kind_of(info, config)
    rank = config.rank or info.rank or 2
    stored = stored_discriminator(info.path) if config.stored_discriminator else None  # a stale one fails here
    calibration = 0 if stored else config.calibration or calibration_count(len(seeds))
    max_draws = config.max_draws or 4 * config.synthetic
    mark = resume.fingerprint(config, info.path, seeds.fingerprint, stored[0].to_dict() if stored else None)
    kept_before = resume.check(config, mark)  # another run's leftovers refused before anything loads
    generator = config.generator
    if isinstance(generator, (str, os.PathLike)) and kept_before.samples is None:
        from .prompts import load_generator  # loaded now: a bad one fails before anything else loads

        generator = load_generator(str(generator))
    started = time.time()
    # The bases load and the adapter is checked against its base before the progress bar starts,
    # so that a mismatch is one line.
    source_pipe = source_pipe or load_pipeline(config.source_base)
    check_source(info, source_pipe, str(config.source_base))
    target_pipe = target_pipe or load_pipeline(config.target_base)
    bar = tqdm(total=1 + calibration + config.synthetic + config.steps + 3 * config.report_images,
               desc=f"transfer {info.name}", disable=not config.progress)

    def advance(n: int, stage: str) -> None:
        bar.update(n)
        if on_progress is not None:
            on_progress(bar.n, bar.total, stage)

    try:
        for pipe in (source_pipe, target_pipe):
            pipe.set_progress_bar_config(disable=True)
        if kept_before.samples is not None:
            samples = kept_before.samples
            kept_images = resume.load_samples(config.out, samples)
            bar.total = samples["progress"] + config.steps + 3 * config.report_images
            advance(samples["progress"], "samples kept by the interrupted run")
        else:
            resume.start_anew(config.out)
            kept_images, samples = _draw_and_filter(config, info, seeds, source_pipe, target_pipe, generator,
                                                    stored, calibration, max_draws, bar, advance)
            resume.save_samples(config.out, mark, kept_images, samples.pop("kept_prompts"), samples)
            samples = resume.read_samples(config.out)  # as a rerun reads them: both runs go on alike
        timings = dict(samples["timings"])
        result = FilterResult(**samples["result"])
        candidate_prompts = samples["candidate_prompts"]
        from PIL import Image

        pairs = [(Image.fromarray(image), prompt) for image, prompt in zip(kept_images, samples["prompts"])]
        if config.with_seeds:
            pairs += [(image.convert("RGB"), caption) for image, caption in zip(seeds.images, seeds.captions)]

        # 4. the student
        if kept_before.student is not None:
            record = kept_before.student["record"]
            advance(config.steps, "student written by the interrupted run")
        else:
            t = time.time()
            extra = {"transferred_from": {"adapter": os.path.basename(info.path), "base": str(config.source_base),
                                          "kind": info.kind, "format": info.format},
                     "synthetic": config.synthetic, "filtered": config.filter, "slot": config.slot}
            before_student = bar.n
            record = train_student(target_pipe, pairs, config, kind, info.trigger, rank,
                                   on_step=lambda step, total, loss: advance(before_student + step - bar.n,
                                                                             "student"),
                                   extra=extra, resume=kept_before.student_checkpoint)
            timings["student_s"] = round(time.time() - t, 1)
            resume.save_student(config.out, record)

        # the report
        paths = report_paths(config.out)
        sheet_prompts = list(seeds.captions[: config.report_images])
        while config.report_images and len(sheet_prompts) < config.report_images:
            sheet_prompts.append(candidate_prompts[len(sheet_prompts) % max(len(candidate_prompts), 1)])
        if config.report_images:
            report_seeds = list(range(len(sheet_prompts)))
            with source_applied(source_pipe, info):
                source_row = teacher_images(source_pipe, sheet_prompts, info.trigger, seeds=report_seeds,
                                            steps=config.sample_steps, guidance=config.guidance)
            advance(len(sheet_prompts), "report")
            student = AdapterFile(config.out, kind, "shira" if kind == "shira" else "peft", unet_family(target_pipe.unet),
                                  info.trigger, info.name)
            with source_applied(target_pipe, student):
                student_row = teacher_images(target_pipe, sheet_prompts, info.trigger, seeds=report_seeds,
                                             steps=config.sample_steps, guidance=config.guidance)
            advance(len(sheet_prompts), "report")
            base_row = teacher_images(target_pipe, sheet_prompts, None, seeds=report_seeds,
                                      steps=config.sample_steps, guidance=config.guidance)
            advance(len(sheet_prompts), "report")
            sheet = side_by_side([(f"source ({info.kind})\non {config.source_base}", source_row),
                                  (f"student ({kind})\non {config.target_base}", student_row),
                                  (f"{config.target_base}\nalone", base_row)])
            from ..files import write_atomically

            write_atomically(paths["sheet"], lambda tmp: sheet.save(tmp, format="PNG"), overwrite=True)
        report = {
            "adapter": info.path, "source": {"base": str(config.source_base), "kind": info.kind, "format": info.format,
                                             "family": unet_family(source_pipe.unet), "trigger": info.trigger},
            "target": {"base": str(config.target_base), "family": unet_family(target_pipe.unet), "kind": kind,
                       "rank": rank, "slot": config.slot, "out": config.out},
            "seed_images": len(seeds),
            "student_data": {"synthetic": len(result.kept), "seeds": len(seeds) if config.with_seeds else 0},
            "generator": config.generator if isinstance(config.generator, (str, os.PathLike)) else
            "a causal LM given in memory" if config.generator is not None else "neighbour substitution (offline)",
            "filter": {"enabled": config.filter, "calibration": calibration, "max_draws": max_draws,
                       "discriminator": "stored" if stored else "trained from seeds",
                       "discriminator_file": stored[1] if stored else None, **result.summary()},
            "prompts_sample": candidate_prompts[:8],
            "kept_prompts": [candidate_prompts[i] for i in result.kept],
            "student": {k: record.get(k) for k in ("steps", "seconds", "final_loss", "trainable_params", "file_mb",
                                                   "trigger")},
            "settings": {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                         if f.name not in ("seed_data", "generator")},
            "timings": {**timings, "total_s": round(time.time() - started, 1)},
            "files": {k: v for k, v in paths.items() if k != "sheet" or config.report_images},
        }
        report["settings"]["seed_data"] = str(config.seed_data) if isinstance(config.seed_data, (str, os.PathLike)) \
            else f"{len(seeds)} in-memory images"
        write_json(paths["report"], report)
        resume.finish(config.out)
        return report
    finally:
        bar.close()


def _draw_and_filter(config: TransferConfig, info: AdapterFile, seeds, source_pipe, target_pipe, generator, stored,
                     calibration: int, max_draws: int, bar, advance) -> tuple[list[np.ndarray], dict]:
    """Steps 1-3: prompts, the teacher's draws, the filter. Returns the kept images and what a rerun
    needs to go on without drawing again (the filter's result, the prompts, the progress made)."""
    size = source_pipe.unet.config.sample_size * source_pipe.vae_scale_factor
    real_images = [np.asarray(im.convert("RGB").resize((size, size))) for im in seeds.images]

    # 1. prompts (enough for every draw)
    t = time.time()
    prompts = synthetic_prompts(seeds.captions, calibration + max_draws, target_pipe, generator=generator,
                                seed=config.seed, keep=[info.trigger] if info.trigger else [])
    prompts_s = round(time.time() - t, 1)
    advance(1, "prompts")

    # 2 + 3. the teacher draws, the discriminator filters
    t = time.time()
    drawn_images: list[np.ndarray] = []
    with source_applied(source_pipe, info):
        def draw_images(n: int) -> list[np.ndarray]:
            start = len(drawn_images)
            images = teacher_images(source_pipe, prompts[start:start + n], info.trigger,
                                    seeds=draw_seeds(config.seed, start, n),
                                    steps=config.sample_steps, guidance=config.guidance,
                                    batch_size=config.batch_size)
            drawn_images.extend(images)
            if bar.n + len(images) > bar.total - config.steps - 3 * config.report_images:
                bar.total += len(images)
            advance(len(images), "teacher and filter")
            return images

        def draw(n: int) -> np.ndarray:
            return image_features(draw_images(n), source_pipe.vae)

        real_features = image_features(real_images, source_pipe.vae)
        calibration_features = None if stored else draw(calibration)
        result, _ = filter_samples(real_features, calibration_features, draw, config.synthetic, max_draws,
                                   use_filter=config.filter, discriminator=stored[0] if stored else None)
    candidates = drawn_images[calibration:]
    candidate_prompts = prompts[calibration:calibration + len(candidates)]
    kept = {"result": dataclasses.asdict(result), "candidate_prompts": candidate_prompts,
            "kept_prompts": [candidate_prompts[i] for i in result.kept], "progress": bar.n,
            "timings": {"prompts_s": prompts_s, "teacher_and_filter_s": round(time.time() - t, 1)}}
    return [candidates[i] for i in result.kept], kept
