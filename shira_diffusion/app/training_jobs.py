"""Training a style in the background: one run at a time, per-step progress and loss, a stop
button, and on success the style lands in the user's catalogue with a thumbnail.

The run uses the trainer of ``shira_diffusion.training`` (``train(config, callbacks=...)``) on a
pipeline of its own, so the pipeline that serves images is never touched while a style trains.
Its data, outputs and checkpoints live in ``$SHIRA_HOME/app/jobs/<id>/``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import check_style_name
from ..core.masks import MASK_STRATEGIES
from ..errors import ShiraError
from .checks import checked_text, shown, whole
from .service import AppService, base_name
from .styles_view import make_thumbnail
from .uploads import new_work_folder, training_folder

logger = logging.getLogger(__name__)
MAX_TRAIN_STEPS = 5000
KEEP_JOBS = 20  # finished runs remembered (their status), the newest


@dataclass
class TrainJob:
    id: str
    name: str
    base: str
    total: int
    folder: Path
    owner: str = ""  # the visitor's session: only it may stop the run
    status: str = "preparing"  # preparing, running, saving, done, stopped, failed
    step: int = 0
    losses: list[float] = field(default_factory=list)
    message: str = ""
    started: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "stopped", "failed")

    def on_step(self, step: int, total: int, loss: float) -> None:
        self.step, self.total = step, total
        self.losses.append(float(loss))
        # after the last step: the adapter is written, then the self-check draws (up to a quarter as long)
        self.status = "running" if step < total else "saving and checking the style"


class TrainingJobs:
    """The app's training runs (one at a time), by id."""

    def __init__(self, service: AppService):
        self.service = service
        self.jobs: dict[str, TrainJob] = {}
        self._lock = threading.Lock()

    def running(self) -> TrainJob | None:
        return next((j for j in self.jobs.values() if not j.finished), None)

    def start(self, files, name: str, base: str, *, caption: str = "", trigger: str = "", mask: str | None = None,
              steps: int = 1000, description: str = "", owner: str = "") -> TrainJob:
        """Check everything, write the data folder, and start the run in a thread (``owner``: the
        visitor's session, the only one that may stop it)."""
        from ..training import TrainConfig, validate

        base = self.service.check_base(base)
        caption, trigger = checked_text(caption, "the caption"), checked_text(trigger, "the trigger word", 64)
        description = checked_text(description, "the description")
        if mask is not None and mask not in MASK_STRATEGIES:
            raise ShiraError(f"mask must be one of {', '.join(MASK_STRATEGIES)}, got {shown(mask)}")
        name = check_style_name(checked_text(name, "the style name", 64).strip())
        catalog = self.service.catalog()
        if name in catalog and catalog.get(name).source == "bundled":
            raise ShiraError(f"{name!r} is a bundled style's name; choose another")
        if name in catalog and catalog.get(name).has_adapter(base_name(base)):
            raise ShiraError(f"you already have a style {name!r} for {base_name(base)}; delete it or choose another name")
        steps = whole(steps, "steps", 1, MAX_TRAIN_STEPS)
        with self._lock:
            busy(self.running(), owner, "training")
            folder = new_work_folder("jobs")
            job = TrainJob(folder.name, name, base, steps, folder, owner)
            for old in [k for k, j in self.jobs.items() if j.finished][:-KEEP_JOBS]:
                del self.jobs[old]
            self.jobs[job.id] = job
        try:
            count, own = training_folder(files, folder / "data", caption)
            config = TrainConfig(train_data_dir=str(folder / "data"), output=str(folder / f"{name}.safetensors"),
                                 base=base, trigger=(trigger or "").strip() or None, max_train_steps=steps,
                                 progress=False, name=name, description=description,
                                 **({"mask": mask} if mask else {}))
            validate(config)
        except Exception as exc:
            job.status, job.message = "failed", str(exc)
            shutil.rmtree(folder, ignore_errors=True)
            raise ShiraError(str(exc)) if not isinstance(exc, ShiraError) else exc
        job.message = f"{count} images ({own} with their own caption)"
        job.thread = threading.Thread(target=self._run, args=(job, config, description), daemon=True,
                                      name=f"shira-train-{name}")
        job.thread.start()
        return job

    def cancel(self, job_id, owner: str = "") -> TrainJob | None:
        """Stop ``owner``'s run ``job_id`` (empty: ``owner``'s running one; None if it has none).
        Another visitor's run is refused: it is never "whatever is running"."""
        job = owned_job(self.jobs, self.running, job_id, owner, "training run")
        if job is not None:
            job.stop.set()
        return job

    def _run(self, job: TrainJob, config, description: str) -> None:
        from ..training import TrainCallbacks, train

        try:
            job.status = "running"
            record = train(config, callbacks=TrainCallbacks(on_step=job.on_step, stop=job.stop))
            if record.get("stopped"):
                job.status, job.message = "stopped", f"stopped at step {record['steps']} of {job.total}; nothing saved"
                shutil.rmtree(job.folder, ignore_errors=True)  # the page offers no resume: drop the checkpoint
                return
            job.status = "saving"
            entry = {"mask": config.mask, "params": record.get("trainable_params"), "seconds": record.get("seconds"),
                     "steps": record.get("steps"), "final_loss": record.get("final_loss")}
            self.service.catalog().add(job.name, config.output, base_name(job.base), description=description,
                                       trigger=record.get("trigger") or "", images=str(job.folder / "data"),
                                       entry={k: v for k, v in entry.items() if v is not None})
            make_thumbnail(self.service, job.name, job.base)
            job.status = "done"
            job.message = f"saved {job.name} ({record.get('steps')} steps, {record.get('seconds', 0):.0f} s)"
            if "self_check" in record:  # strength and content on new prompts, and the setting it chose
                from ..quality.self_check import summary_line

                job.message += f". {summary_line(record['self_check'])}"
            shutil.rmtree(job.folder, ignore_errors=True)  # the catalogue holds copies of the adapter and images
        except Exception as exc:  # a failed run is a message in the page; the app keeps serving
            logger.exception("training %s failed", job.name)
            job.status, job.message = "failed", f"{type(exc).__name__}: {exc}" if not isinstance(exc, ShiraError) else str(exc)


def owned_job(jobs: dict, running, job_id, owner: str, what: str):
    """The job ``job_id`` if ``owner`` started it; with no id, ``owner``'s running job or None."""
    if job_id in (None, ""):
        job = running()
        return job if job is not None and job.owner == owner else None
    job = jobs.get(job_id) if isinstance(job_id, str) else None
    if job is None:
        raise ShiraError(f"no {what} {shown(job_id)}")
    if job.owner != owner:
        raise ShiraError(f"that {what} was started by another visitor: only they can stop it")
    return job


def busy(job, owner: str, what: str) -> None:
    """One run at a time on the server: say whose is in the way (a stranger's name is not shown)."""
    if job is None:
        return
    if job.owner == owner:
        raise ShiraError(f"your {what} of {job.name!r} is still running; wait for it or stop it first")
    raise ShiraError(f"another visitor's {what} is running (one at a time on this server); try again when it ends")
