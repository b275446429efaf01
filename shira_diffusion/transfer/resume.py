"""Resuming an interrupted ``transfer``: what a run keeps, and the checks on it before any work.

Beside ``--out`` a run keeps ``OUT.transfer-work/``: once the teacher's samples are filtered, the
kept ones (``samples/NNNN.png``, lossless) and ``samples.json`` (their prompts, the filter's result,
the run's fingerprint); once the student is written, ``student.json`` (its record and the file's
sha256). The student's own checkpoints are the trainer's, in ``OUT.checkpoints/`` (a stop or Ctrl-C
writes one). The same command run again continues where the first stopped: it draws nothing kept
already and the student resumes from its checkpoint, so it ends with the same adapter an
uninterrupted run makes. A finished run removes both folders. Leftovers of a run with other
settings are refused, naming what differs; ``--overwrite`` starts anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

from ..errors import ShiraError
from ..training import checkpoints
from ..training.outputs import output_paths
from .discriminator import file_sha256

FORMAT = 1
# Settings that do not shape the student: where and how it is written and shown. The adapter and
# the seed images are fingerprinted by their content, the generator by its name.
UNSHAPING = ("adapter", "seed_data", "out", "overwrite", "progress", "report_images", "process", "generator")


def work_paths(out: str) -> dict[str, str]:
    folder = out[: -len(".safetensors")] + ".transfer-work"
    return {"folder": folder, "samples": os.path.join(folder, "samples"),
            "samples_json": os.path.join(folder, "samples.json"), "student": os.path.join(folder, "student.json"),
            "checkpoints": output_paths(out)["checkpoints"]}


def fingerprint(config, adapter_path: str, seeds_fingerprint: str, discriminator: dict | None) -> dict:
    """What the kept samples and the student depend on (JSON values: compared with a stored one)."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in UNSHAPING}
    generator = config.generator
    settings["generator"] = os.fspath(generator) if isinstance(generator, (str, os.PathLike)) else \
        None if generator is None else "a causal LM given in memory"
    disc = hashlib.sha256(json.dumps(discriminator, sort_keys=True).encode()).hexdigest() if discriminator else None
    mark = {"adapter": file_sha256(adapter_path), "seeds": seeds_fingerprint, "discriminator": disc,
            "settings": settings}
    return json.loads(json.dumps(mark, default=str))


@dataclasses.dataclass
class Resume:
    """What an interrupted run left: its kept samples (``samples.json``'s contents), the student's
    record once it was written, and whether the student has a checkpoint to resume."""

    samples: dict | None = None
    student: dict | None = None
    student_checkpoint: bool = False


def student_done(out: str) -> bool:
    """True when ``out`` is the student an interrupted run of this transfer wrote (its report was not)."""
    paths = work_paths(out)
    try:
        with open(paths["student"], encoding="utf-8") as handle:
            sha = json.load(handle).get("sha256")
        return os.path.isfile(out) and sha == file_sha256(out)
    except (OSError, ValueError, AttributeError):
        return False


def check(config, mark: dict) -> Resume:
    """What to resume from (nothing with ``overwrite``); refuses another run's leftovers. Reads files
    only: called before any model loads."""
    paths = work_paths(config.out)
    if config.overwrite:
        return Resume()
    samples = _read_json(paths["samples_json"])
    has_checkpoint = bool(checkpoints.checkpoint_files(paths["checkpoints"]))
    if samples is None:
        if has_checkpoint:
            raise ShiraError(f"{paths['checkpoints']} holds a student's checkpoints but not the samples it learnt "
                             f"from ({paths['samples_json']}); pass --overwrite to start anew")
        return Resume()
    differ = _differences(samples.get("fingerprint"), mark)
    if differ:
        raise ShiraError(f"{paths['folder']} holds an interrupted transfer with other settings ({differ}): run it "
                         "again with those to resume it, or pass --overwrite to start anew")
    student = _read_json(paths["student"]) if student_done(config.out) else None
    return Resume(samples=samples, student=student, student_checkpoint=has_checkpoint and student is None)


def _differences(saved, mark: dict) -> str:
    if not isinstance(saved, dict) or saved.get("format", FORMAT) != FORMAT:
        return "written by another version"
    named = {"adapter": "the adapter file", "seeds": "the seed images", "discriminator": "the stored discriminator"}
    differ = [what for key, what in named.items() if saved.get(key) != mark.get(key)]
    old, new = saved.get("settings") or {}, mark["settings"]
    differ += [f"{name.replace('_', '-')} {old.get(name)!r} there, {new.get(name)!r} here"
               for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    return ", ".join(differ[:3]) + (", ..." if len(differ) > 3 else "")


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ShiraError(f"{path} cannot be read ({exc}); pass --overwrite to start anew") from None
    if not isinstance(values, dict):
        raise ShiraError(f"{path} is not what a transfer keeps; pass --overwrite to start anew")
    return values


def start_anew(out: str) -> None:
    """An earlier run's leftovers removed (``overwrite``, or a run cut short before its samples were kept)."""
    shutil.rmtree(work_paths(out)["folder"], ignore_errors=True)


def save_samples(out: str, mark: dict, images: list, prompts: list[str], kept: dict) -> None:
    """The kept samples (lossless PNGs, their prompts) and what the report needs of the filter;
    ``samples.json`` last, so that it exists only once every image does."""
    from PIL import Image

    from ..files import write_atomically

    paths = work_paths(out)
    os.makedirs(paths["samples"], exist_ok=True)
    files = []
    for i, image in enumerate(images):
        name = f"{i:04d}.png"
        write_atomically(os.path.join(paths["samples"], name),
                         lambda tmp, image=image: Image.fromarray(image).save(tmp, format="PNG"))
        files.append(name)
    _write_json(paths["samples_json"], {"fingerprint": {**mark, "format": FORMAT}, "files": files,
                                        "prompts": list(prompts), **kept})


def read_samples(out: str) -> dict:
    return _read_json(work_paths(out)["samples_json"])


def load_samples(out: str, samples: dict) -> list:
    """The kept samples as RGB uint8 arrays, as they were drawn."""
    import numpy as np
    from PIL import Image

    folder = work_paths(out)["samples"]
    images = []
    for name in samples.get("files", []):
        path = os.path.join(folder, os.path.basename(name))
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
        except (OSError, ValueError) as exc:
            raise ShiraError(f"kept sample {path} cannot be read ({exc}); pass --overwrite to start anew") from None
    return images


def save_student(out: str, record: dict) -> None:
    """The student is written: its record and file hash (a rerun goes on to the report), and its
    checkpoints removed (no longer needed)."""
    _write_json(work_paths(out)["student"], {"sha256": file_sha256(out), "record": record})
    checkpoints.clear(work_paths(out)["checkpoints"])


def finish(out: str) -> None:
    """The run is complete: its working files go."""
    shutil.rmtree(work_paths(out)["folder"], ignore_errors=True)
    checkpoints.clear(work_paths(out)["checkpoints"])


def _write_json(path: str, values: dict) -> None:
    from ..files import write_atomically

    text = json.dumps(values, indent=1, default=str)

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)

    write_atomically(path, write)
