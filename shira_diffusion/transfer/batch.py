"""Transferring every adapter in a folder: ``transfer_folder``.

Layout: ``DIR/<name>.safetensors`` (any adapter file ``transfer`` reads) with its seed images in
``DIR/<name>/``; the students go to ``OUT/<name>.safetensors`` with their reports. Resumable: an
adapter whose student and report both exist is skipped. Under ``accelerate launch`` (or torchrun),
process ``rank`` of ``world`` takes adapters ``rank, rank + world, ...``; each process trains its
own students alone (no process group: the distributed variables are hidden from the trainer), and
its reports say which process made them (``settings.process``). An adapter whose transfer was
interrupted resumes where it stopped (``resume.py``): its kept samples are not drawn again and its
student continues from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager

from ..errors import ShiraError
from .pipeline import TransferConfig, report_paths, transfer
from .resume import student_done

DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                         "MASTER_PORT", "ACCELERATE_USE_CPU", "ACCELERATE_DYNAMO_BACKEND")


def partition(items: list, rank: int, world: int) -> list:
    """Process ``rank``'s share of ``items``: items ``rank, rank + world, ...``."""
    if world < 1 or not 0 <= rank < world:
        raise ShiraError(f"process rank {rank} is outside a world of {world}")
    return list(items)[rank::world]


def process_rank(environ=None) -> tuple[int, int]:
    """(rank, world) from the variables ``accelerate launch`` / torchrun set; (0, 1) when alone."""
    environ = os.environ if environ is None else environ
    try:
        return int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ShiraError(f"bad RANK/WORLD_SIZE in the environment: {environ.get('RANK')!r}/"
                         f"{environ.get('WORLD_SIZE')!r}") from None


@contextmanager
def alone():
    """The distributed launch variables hidden for the duration: each process trains on its own."""
    saved = {k: os.environ.pop(k) for k in DISTRIBUTED_VARIABLES if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def folder_adapters(folder: str) -> list[tuple[str, str, str]]:
    """[(name, adapter file, seed folder)] of a transfer folder, sorted by name; a missing seed folder fails."""
    if not os.path.isdir(folder):
        raise ShiraError(f"--adapters {folder} is not a folder")
    found = []
    for entry in sorted(os.listdir(folder)):
        if not entry.endswith(".safetensors"):
            continue
        name = entry.split(".")[0]
        seeds = os.path.join(folder, name)
        if not os.path.isdir(seeds):
            raise ShiraError(f"--adapters: {entry} has no seed folder {seeds}/ (its images with .txt captions)")
        found.append((name, os.path.join(folder, entry), seeds))
    if not found:
        raise ShiraError(f"--adapters {folder} holds no .safetensors adapter files")
    return found


def is_done(out: str) -> bool:
    paths = report_paths(out)
    return os.path.isfile(paths["adapter"]) and os.path.isfile(paths["report"])


def transfer_folder(folder: str, out_folder: str, template: TransferConfig, *, rank: int | None = None,
                    world: int | None = None, source_pipe=None, target_pipe=None) -> dict[str, str]:
    """Transfer this process's share of ``folder``'s adapters into ``out_folder`` with ``template``'s
    settings (its adapter, seed_data and out are replaced); returns {name: "done" | "skipped"}."""
    from ..bases import load_pipeline

    env_rank, env_world = process_rank()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    mine = partition(folder_adapters(folder), rank, world)
    os.makedirs(out_folder, exist_ok=True)
    status = {}
    with alone():
        for name, adapter, seeds in mine:
            out = os.path.join(out_folder, f"{name}.safetensors")
            if is_done(out) and not template.overwrite:
                status[name] = "skipped"
                continue
            # An interrupted earlier try resumes (transfer keeps its samples and the student's
            # checkpoint); a student without a report that no try of this run vouches for is redone.
            redo = os.path.exists(out) and not student_done(out)
            config = dataclasses.replace(template, adapter=adapter, seed_data=seeds, out=out,
                                         overwrite=template.overwrite or redo,
                                         process={"rank": rank, "world": world, "pid": os.getpid()})
            source_pipe = source_pipe or load_pipeline(template.source_base)
            target_pipe = target_pipe or load_pipeline(template.target_base)
            transfer(config, source_pipe=source_pipe, target_pipe=target_pipe)
            status[name] = "done"
    return status
