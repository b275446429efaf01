"""Where a base model comes from: a bundled toy base, a local diffusers folder, a single-file
checkpoint, or a Hugging Face Hub id, resolved to a diffusers pipeline.

Nothing here assumes a network. Hub ids load from the local Hugging Face cache only; when a base
is nowhere on disk the error says what is missing and how to provide it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ShiraError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED = {
    "toy-sd": ("sd", "SD1.5-family toy base: 64x64 shapes world, one CLIP text encoder"),
    "toy-sdxl": ("sdxl", "SDXL-family toy base: other widths, two text encoders, its own VAE"),
}
PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class BaseSource:
    """A resolved base: ``kind`` is bundled, folder, single-file or hub; ``location`` its path or id."""

    name: str
    kind: str
    location: str
    description: str = ""

    @property
    def available(self) -> bool:
        if self.kind == "hub":
            return _cached_hub_folder(self.location) is not None
        return os.path.exists(self.location)


def resolve(spec: str | os.PathLike) -> BaseSource:
    """Interpret ``spec`` (bundled name, folder, file or Hub id) without loading anything."""
    text = str(spec)
    if text in BUNDLED:
        return BaseSource(text, "bundled", str(ASSETS / text), BUNDLED[text][1])
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ShiraError(f"{path} is a folder but not a diffusers pipeline (no model_index.json)")
        return BaseSource(text, "folder", str(path))
    if path.suffix in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise ShiraError(f"checkpoint file {path} does not exist")
        return BaseSource(text, "single-file", str(path))
    if text.count("/") == 1 and not path.exists():
        return BaseSource(text, "hub", text)
    raise ShiraError(
        f"unknown base {text!r}: give a bundled base ({', '.join(BUNDLED)}), a diffusers pipeline folder, "
        f"a .safetensors/.ckpt checkpoint, or a Hugging Face id like 'org/model'"
    )


def load_pipeline(spec: str | os.PathLike, dtype: torch.dtype = torch.float32, single_file_config: str | None = None):
    """The diffusers pipeline of a base (SD or SDXL family), loaded from disk only."""
    from diffusers import DiffusionPipeline

    source = resolve(spec)
    if source.kind == "bundled":
        if not source.available:
            family = BUNDLED[source.name][0]
            raise ShiraError(
                f"the bundled {family.upper()}-family base {source.name!r} is not in {source.location} (an "
                "install without the assets folder?): use a git checkout of shira-diffusion, or pass a local "
                "diffusers pipeline folder as the base instead"
            )
        return _from_folder(source.location, dtype)
    if source.kind == "folder":
        return _from_folder(source.location, dtype)
    if source.kind == "single-file":
        return _from_single_file(source.location, dtype, single_file_config)
    folder = _cached_hub_folder(source.location)
    if folder is None:
        raise ShiraError(
            f"{source.location!r} is not in the local Hugging Face cache and this machine does not download: "
            f"fetch it where there is network (`hf download {source.location}`) and copy the cache, "
            f"or save the pipeline to a folder and pass that folder"
        )
    return DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype)


def pipeline_family(pipe) -> str:
    name = type(pipe).__name__
    for prefix, family in PIPELINE_FAMILIES.items():
        if name.startswith(prefix):
            return family
    raise ShiraError(f"{name} is not an SD or SDXL text-to-image pipeline")


def _from_folder(folder: str, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    with open(os.path.join(folder, "model_index.json")) as handle:
        class_name = json.load(handle).get("_class_name", "")
    if class_name not in PIPELINE_FAMILIES:
        raise ShiraError(f"{folder} holds a {class_name or 'unknown'} pipeline; shira-diffusion needs SD or SDXL")
    return DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype)


def _from_single_file(path: str, dtype: torch.dtype, config: str | None):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors import safe_open

    if config is None:
        raise ShiraError(
            f"{path} is a single-file checkpoint: diffusers needs the matching pipeline config, which it "
            "would download. Pass a local diffusers folder of the same architecture as its config "
            "(--config FOLDER, or single_file_config=...)"
        )
    is_xl = False
    if path.endswith(".safetensors"):
        with safe_open(path, "pt") as handle:
            is_xl = any(k.startswith("conditioner.embedders.1") for k in handle.keys())
    cls = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
    return cls.from_single_file(path, config=config, torch_dtype=dtype, local_files_only=True)


def _cached_hub_folder(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or a malformed id
        return None


def list_bases() -> list[BaseSource]:
    """The bundled bases and the SD/SDXL pipelines in the local Hugging Face cache."""
    found = [resolve(name) for name in BUNDLED]
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model" and any(
                f.file_name == "model_index.json" for rev in repo.revisions for f in rev.files
            ):
                found.append(BaseSource(repo.repo_id, "hub", repo.repo_id, "in the local Hugging Face cache"))
    except Exception:  # no cache directory yet: only the bundled bases
        return found
    return found
