"""Carrying a style to another base in the background (``transfer.pipeline.transfer``): one run at
a time, progress by stage, a stop button, and on success the student joins the user's catalogue for
the target base, with its report (side-by-side PNG and JSON) beside it.

The run loads pipelines of its own for both bases, so the pipelines that serve images are never
touched (the teacher applies the source adapter, the student trains on the target's UNet). Its
seeds and outputs live in ``$SHIRA_HOME/app/transfers/<id>/`` until the style is saved.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import check_style_name, sanitize_name
from ..errors import ShiraError
from .service import MAX_STEPS, AppService, base_name
from .styles_view import make_thumbnail
from .checks import check_style, checked_text, style_files
from .training_jobs import MAX_TRAIN_STEPS, busy, owned_job
from .uploads import ADAPTER_SUFFIX, MAX_ADAPTER_BYTES, check_size, new_work_folder, served_copy, training_folder

logger = logging.getLogger(__name__)
MAX_SYNTHETIC = 500
SEED_IMAGES = 5  # seeds taken from a catalogue style's training images, as `shira eval transfer`
KEEP_JOBS = 20


class TransferStopped(Exception):
    """Raised from the progress callback when the visitor pressed Stop: ends ``transfer`` there."""


@dataclass
class TransferJob:
    id: str
    name: str
    source: str
    target: str
    kind: str
    folder: Path
    owner: str = ""  # the visitor's session: only it may stop the run
    status: str = "preparing"  # preparing, running, saving, done, stopped, failed
    stage: str = "loading the bases"
    done: int = 0
    total: int = 1
    message: str = ""
    report: dict = field(default_factory=dict)
    sheet: str | None = None  # the side-by-side PNG, once saved beside the style
    started: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    stages: list = field(default_factory=list)  # every stage it went through, in order (the page polls)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "stopped", "failed")

    def on_progress(self, done: int, total: int, stage: str) -> None:
        if self.stop.is_set():
            raise TransferStopped()
        if not self.stages or self.stages[-1] != stage:
            self.stages.append(stage)
        self.done, self.total, self.stage, self.status = done, total, stage, "running"


def student_name(source_name: str, target: str) -> str:
    """``hatching`` carried to ``toy-sdxl`` -> ``hatching-toy-sdxl`` (a valid style name)."""
    return sanitize_name(f"{source_name}-{base_name(target)}")[:64].strip("-_") if source_name else ""


def key_numbers(report: dict) -> dict:
    """What the page shows of a report: acceptance, MMD before/after, kept/drawn, seconds."""
    filt, student = report.get("filter", {}), report.get("student", {})
    return {"acceptance_rate": filt.get("acceptance_rate"), "mmd_before": filt.get("mmd_before"),
            "mmd_after": filt.get("mmd_after"), "kept": filt.get("kept"), "drawn": filt.get("drawn"),
            "filled": filt.get("filled"), "student_steps": student.get("steps"),
            "final_loss": student.get("final_loss"), "seconds": report.get("timings", {}).get("total_s")}


class TransferJobs:
    """The app's transfer runs (one at a time), by id."""

    def __init__(self, service: AppService):
        self.service = service
        self.jobs: dict[str, TransferJob] = {}
        self._lock = threading.Lock()

    def running(self) -> TransferJob | None:
        return next((j for j in self.jobs.values() if not j.finished), None)

    def start(self, adapter_file: str | None, style: str | None, source: str, target: str, seed_files=None, *,
              name: str, kind: str = "shira", synthetic: int = 30, steps: int = 400, sample_steps: int = 20,
              options: dict | None = None, owner: str = "") -> TransferJob:
        """Check everything a visitor can get wrong, write the seed folder, start the run in a thread.
        ``adapter_file``: an uploaded SHiRA or LoRA file; else ``style``'s SHiRA adapter for ``source``.
        Seeds: ``seed_files`` (images + same-name .txt, or zips); else ``style``'s first training
        images. ``options``: other ``TransferConfig`` fields (calibration, max_draws, report_images)."""
        from ..transfer.lora import read_adapter_file
        from ..transfer.pipeline import KINDS, TransferConfig, bundled_family, check_config

        if not source or not target:
            raise ShiraError("choose a source base and a target base")
        source, target = self.service.check_base(source), self.service.check_base(target)  # offered bases only
        if base_name(source) == base_name(target):
            raise ShiraError(f"the source and target bases are both {source}: choose another target base")
        if kind not in KINDS:
            raise ShiraError(f"output kind must be one of {', '.join(KINDS)}, got {kind!r}")
        synthetic, steps, sample_steps = _count(synthetic, "synthetic samples", MAX_SYNTHETIC), \
            _count(steps, "student steps", MAX_TRAIN_STEPS), _count(sample_steps, "sampling steps", MAX_STEPS)
        name = check_style_name(checked_text(name, "the style name", 64).strip())
        catalog = self.service.catalog()
        variant = "shira" if kind == "shira" else "lora"
        if name in catalog and catalog.get(name).source == "bundled":
            raise ShiraError(f"{name!r} is a bundled style's name; choose another")
        if name in catalog and catalog.get(name).has_adapter(base_name(target), variant):
            raise ShiraError(f"you already have a style {name!r} for {base_name(target)}; delete it or choose "
                             "another name")
        style = checked_text(style, "the style", 64).strip() or None
        record = catalog.get(check_style(catalog, style)) if style else None  # a name, never a file
        if adapter_file:
            adapter_file = str(adapter_file)
            if not adapter_file.lower().endswith(ADAPTER_SUFFIX):
                raise ShiraError(f"{Path(adapter_file).name}: only .safetensors adapter files are accepted")
            check_size(adapter_file, MAX_ADAPTER_BYTES, "an adapter")
        elif record is not None:
            adapter_file = str(style_files(catalog, [style], base_name(source))[0])
        else:
            raise ShiraError("upload an adapter (SHiRA or LoRA) or pick one of the source base's styles")
        if not seed_files and record is None:
            raise ShiraError("no seed images: upload a few of the style's images with same-name .txt captions "
                             "(or a zip), or pick a catalogue style whose training images serve as seeds")
        if not seed_files and not _images_folder(record).is_dir():
            raise ShiraError(f"style {style!r} keeps no training images to use as seeds: upload a few of the "
                             "style's images with captions")
        try:  # a corrupt or unknown file fails here, in one line naming the file (not the server's path)
            info = read_adapter_file(adapter_file)
        except ShiraError as exc:
            raise ShiraError(str(exc).replace(adapter_file, Path(adapter_file).name)) from None
        family = bundled_family(source)
        if family and info.family and info.family != family:
            raise ShiraError(f"{Path(adapter_file).name} was made for an {info.family.upper()}-family base; "
                             f"{source} is {family.upper()}-family")
        with self._lock:
            busy(self.running(), owner, "transfer")
            folder = new_work_folder("transfers")
            job = TransferJob(folder.name, name, source, target, kind, folder, owner)
            for old in [k for k, j in self.jobs.items() if j.finished][:-KEEP_JOBS]:
                del self.jobs[old]
            self.jobs[job.id] = job
        try:
            seeds = folder / "seeds"
            if seed_files:
                count, _ = training_folder(seed_files, seeds)
            else:
                count = _copy_seed_images(style, seeds)
            config = TransferConfig(adapter=adapter_file, source_base=source, target_base=target,
                                    seed_data=str(seeds), out=str(folder / f"{name}.safetensors"), kind=kind,
                                    synthetic=synthetic, steps=steps, sample_steps=sample_steps, progress=False,
                                    **(options or {}))
            check_config(config)
        except Exception as exc:
            job.status, job.message = "failed", str(exc)
            shutil.rmtree(folder, ignore_errors=True)
            raise exc if isinstance(exc, ShiraError) else ShiraError(str(exc)) from None
        job.message = f"{count} seed images" + ("" if seed_files else f" (the first of {style}'s training images)")
        job.thread = threading.Thread(target=self._run, args=(job, config, info), daemon=True,
                                      name=f"shira-transfer-{name}")
        job.thread.start()
        return job

    def cancel(self, job_id, owner: str = "") -> TransferJob | None:
        """Stop ``owner``'s run ``job_id`` (empty: ``owner``'s running one; None if it has none);
        another visitor's run is refused."""
        job = owned_job(self.jobs, self.running, job_id, owner, "transfer")
        if job is not None:
            job.stop.set()
        return job

    def _run(self, job: TransferJob, config, info) -> None:
        from ..bases import load_pipeline
        from ..transfer.pipeline import transfer

        try:
            job.status = "running"
            pipes = []
            for spec in (config.source_base, config.target_base):
                pipe = load_pipeline(spec).to(self.service.device)
                pipe.set_progress_bar_config(disable=True)
                pipes.append(pipe)
            report = transfer(config, source_pipe=pipes[0], target_pipe=pipes[1], on_progress=job.on_progress)
            job.status, job.stage = "saving", "saving the style"
            self._save(job, config, info, report)
            where = "it is in the Create tab's gallery" if job.kind == "shira" else \
                "kept as a LoRA among your styles (the gallery mixes SHiRA adapters)"
            job.message = f"saved {job.name} for {job.target} ({report['timings']['total_s']:.0f} s); {where}"
            job.report, job.status = report, "done"  # last: the page polls status, then reads the rest
        except TransferStopped:
            job.status, job.message = "stopped", f"stopped during {job.stage}; nothing saved"
        except Exception as exc:  # a failed run is a message in the page; the app keeps serving
            logger.exception("transfer %s failed", job.name)
            job.status = "failed"
            job.message = str(exc) if isinstance(exc, ShiraError) else f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(job.folder, ignore_errors=True)  # the catalogue holds copies of what is kept

    def _save(self, job: TransferJob, config, info, report: dict) -> None:
        """The student into the user's catalogue for the target base, with its seeds as training
        images, the report beside it and (SHiRA) a thumbnail made with it."""
        from ..core.adapter import SparseAdapter
        from ..transfer.pipeline import report_paths, write_json

        variant = "shira" if job.kind == "shira" else "lora"
        label = base_name(job.target)
        student = report.get("student", {})
        entry = {"params": student.get("trainable_params"), "seconds": student.get("seconds"),
                 "steps": student.get("steps"), "final_loss": student.get("final_loss"),
                 "mask": SparseAdapter.load(config.out).mask if variant == "shira" else None,
                 "transferred_from": {"adapter": info.name, "base": job.source, "kind": info.kind},
                 "transfer": key_numbers(report)}
        catalog = self.service.catalog()
        # One of the user's styles gains an adapter for the new base and keeps its own description,
        # trigger and images; a new style gets the seeds as its training images.
        old = catalog.get(job.name) if job.name in catalog else None
        description = old.description if old else f"{info.name} carried from {job.source} to {job.target} " \
            "(shira transfer)"
        record = catalog.add(job.name, config.out, label, variant=variant,
                             trigger=(old.trigger if old else "") or info.trigger or "", description=description,
                             images=None if old else str(Path(config.seed_data)),
                             entry={k: v for k, v in entry.items() if v is not None})
        stem = record.folder / f"{job.name}.{label}{'' if variant == 'shira' else '.lora'}"
        paths = report_paths(config.out)
        if Path(paths["sheet"]).is_file():
            shutil.copyfile(paths["sheet"], f"{stem}.transfer.png")
            job.sheet = served_copy(f"{stem}.transfer.png", "sheets")  # the page shows a copy, not the style's folder
        report["files"] = {"adapter": str(record.adapter_path(label, variant)), "report": f"{stem}.transfer.json",
                           **({"sheet": f"{stem}.transfer.png"} if job.sheet else {})}
        write_json(f"{stem}.transfer.json", report)
        if variant == "shira" and not (old and old.thumbnail_path()):
            make_thumbnail(self.service, job.name, job.target)


def _count(value, what: str, limit: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer() or not 1 <= number <= limit:
        raise ShiraError(f"{what}: a whole number from 1 to {limit}, got {value!r}")
    return int(number)


def _images_folder(record) -> Path:
    return record.folder / (record.images or "images")


def _copy_seed_images(style: str, dest: Path) -> int:
    """The first ``SEED_IMAGES`` training images of a catalogue style with their captions, into
    ``dest`` (``shira eval transfer``'s seeds)."""
    from ..transfer.evaluate import seed_pairs

    dest.mkdir(parents=True, exist_ok=True)
    pairs = seed_pairs(style, SEED_IMAGES)
    if not pairs:
        raise ShiraError(f"style {style!r} keeps no training images to use as seeds: upload a few with captions")
    for i, (image, caption) in enumerate(pairs):
        image.convert("RGB").save(dest / f"{i:04d}.png")
        (dest / f"{i:04d}.txt").write_text(caption, encoding="utf-8")
    return len(pairs)
