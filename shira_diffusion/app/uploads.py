"""Everything the app takes from a visitor's disk passes through here: size limits, allowed kinds,
sanitised names, safe zip extraction, and writes under ``$SHIRA_HOME`` only.

Accepted: adapters (``.safetensors``), images (``.png .jpg .jpeg .webp .bmp``), captions (``.txt``,
beside the images) and ``.zip`` archives of images and captions. A zip entry whose path leaves its
folder (``../x``, an absolute path, a drive letter) or that is a link refuses the whole archive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from PIL import Image

from ..catalog import sanitize_name, shira_home
from ..core.adapter import FORMAT_NAME
from ..errors import ShiraError

MB = 2**20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ADAPTER_SUFFIX = ".safetensors"
MAX_ADAPTER_BYTES = int(os.environ.get("SHIRA_APP_MAX_ADAPTER_MB", "512")) * MB
MAX_IMAGE_BYTES = 20 * MB
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_CAPTION_BYTES = 4096
MAX_ZIP_BYTES = 200 * MB  # the archive, and separately everything it unpacks to
MAX_TRAINING_IMAGES = 500
MAX_UPLOAD_BYTES = max(MAX_ADAPTER_BYTES, MAX_ZIP_BYTES)  # what the server accepts at all (launch)
LORA_MARKERS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora_unet_", "lora_te", ".alpha", "lora.up", "lora.down")


def app_home() -> Path:
    """``$SHIRA_HOME/app``: the app's uploads, training jobs and generated images."""
    return shira_home() / "app"


def prune_oldest_pngs(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest PNGs the app wrote in ``folder`` (temporary ``.``-files
    aside); one already gone, or in use elsewhere, is left to the next call."""
    files = sorted((p for p in folder.glob("*.png") if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for old in files[:-keep] if len(files) > keep else []:
        try:
            old.unlink()
        except OSError:
            pass


def upload_folder() -> Path:
    """Gradio's upload cache: ``$GRADIO_TEMP_DIR`` (``serving_environment`` puts it under
    ``$SHIRA_HOME/app/gradio``), else the system's."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


MAX_UPLOAD_CACHE_BYTES = int(os.environ.get("SHIRA_APP_MAX_UPLOAD_CACHE_MB", "2048")) * MB
UPLOAD_CACHE_MIN_AGE = 600  # seconds: a younger upload may still be in use (inspect, then Add)
KEEP_UPLOADS_SECONDS = 3600  # Gradio's delete_cache removes uploads older than this (ui.DELETE_CACHE)
_last_sweep = [0.0]


def sweep_upload_cache(folder: Path | None = None, limit: int = MAX_UPLOAD_CACHE_BYTES,
                       min_age: float = UPLOAD_CACHE_MIN_AGE, every: float = 30.0) -> int:
    """Keep Gradio's upload cache under ``limit`` bytes: the oldest files older than ``min_age``
    go first (Gradio's ``delete_cache`` removes the rest by age). At most once per ``every``
    seconds; returns the bytes removed."""
    now = time.time()
    if folder is None and not os.environ.get("GRADIO_TEMP_DIR"):
        return 0  # the system's shared gradio folder: not the app's to sweep
    if now - _last_sweep[0] < every:
        return 0
    _last_sweep[0] = now
    folder = folder or upload_folder()
    files = []
    for path in folder.rglob("*") if folder.is_dir() else []:
        try:
            info = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            files.append((info.st_mtime, info.st_size, path))
    total, removed = sum(size for _, size, _ in files), 0
    for mtime, size, path in sorted(files):
        if total - removed <= limit or now - mtime < min_age:
            break
        with contextlib.suppress(OSError):  # gone already, or in use: the next sweep tries again
            path.unlink()
            removed += size
    return removed


def served_copy(path, kind: str, name: str | None = None) -> str:
    """A copy of a file the page shows or offers (a thumbnail, a transfer's sheet, a style to
    download) where the server may serve it, so the user's styles folder itself is never served:
    ``$SHIRA_HOME/app/static/<kind>/`` for images, Gradio's upload cache for downloads."""
    source = Path(path)
    if kind == "downloads":  # a fresh folder per request; those of past requests go after an hour
        _remove_old_folders(upload_folder() / "shira-downloads", KEEP_UPLOADS_SECONDS)
        folder = upload_folder() / "shira-downloads" / uuid.uuid4().hex[:16]
    else:
        folder = app_home() / "static" / kind
    folder.mkdir(parents=True, exist_ok=True)
    info = source.stat()
    target = folder / (name or f"{source.stem}-{info.st_size:x}{info.st_mtime_ns:x}{source.suffix}")
    if not target.is_file():
        temporary = folder / f".{target.name}.{uuid.uuid4().hex[:8]}"
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
        if kind != "downloads":
            prune_oldest_pngs(folder, 1024)
    return str(target)


def _remove_old_folders(parent: Path, age: float) -> None:
    for folder in parent.iterdir() if parent.is_dir() else []:
        with contextlib.suppress(OSError):  # removed meanwhile by another request
            if time.time() - folder.stat().st_mtime > age:
                shutil.rmtree(folder, ignore_errors=True)


def check_writable(folder: Path, what: str) -> None:
    """Refuse, with one line, a folder the app must write in but cannot (read-only, another owner)."""
    from ..files import check_writable_folder

    check_writable_folder(folder, what)


def new_work_folder(kind: str) -> Path:
    """A fresh folder ``$SHIRA_HOME/app/<kind>/<random id>``."""
    folder = app_home() / kind / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    return folder


def _label(path) -> str:
    return os.path.basename(str(path))


def check_size(path, limit: int, what: str) -> int:
    size = os.path.getsize(path)
    if size > limit:
        raise ShiraError(f"{_label(path)}: {size / MB:.1f} MB is over the {limit // MB} MB limit for {what}")
    return size


def check_adapter_upload(path) -> str:
    """An uploaded adapter: a ``.safetensors`` file under the size limit, and not a LoRA file (which
    gets its own message). Full validation is ``SparseAdapter.load``'s."""
    path = str(path)
    if not path.lower().endswith(ADAPTER_SUFFIX):
        raise ShiraError(f"{_label(path)}: only .safetensors adapter files are accepted")
    check_size(path, MAX_ADAPTER_BYTES, "an adapter")
    kind = foreign_adapter_kind(path)
    if kind == "lora":
        raise ShiraError(f"{_label(path)} is a LoRA file (diffusers or kohya keys), not a SHiRA adapter: "
                         "**Convert to SHiRA** below makes one on the chosen base (as `shira convert` does), "
                         "and the Transfer tab carries it to another base")
    if kind == "peft-shira":
        raise ShiraError(f"{_label(path)} is a PEFT SHiRA checkpoint: convert it first with "
                         "`shira import-peft` and upload the result")
    return path


def foreign_adapter_kind(path) -> str | None:
    """"lora" or "peft-shira" when a safetensors file's keys say so; None otherwise (or unreadable)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            meta = handle.metadata() or {}
    except Exception:
        return None
    if meta.get("format") == FORMAT_NAME:
        return None
    if any(k.endswith("shira_weight") for k in keys):
        return "peft-shira"
    if any(marker in k for k in keys for marker in LORA_MARKERS):
        return "lora"
    return None


def check_image(path) -> Image.Image:
    """An uploaded image, opened and decoded (RGB), or a clear error."""
    check_size(path, MAX_IMAGE_BYTES, "an image")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ShiraError(f"{_label(path)}: {image.width}x{image.height} is over the "
                                 f"{MAX_IMAGE_PIXELS} pixel limit")
            return image.convert("RGB")
    except ShiraError:
        raise
    except Exception as exc:
        raise ShiraError(f"{_label(path)}: not a readable image ({type(exc).__name__})") from None


def _read_caption(path) -> str:
    check_size(path, MAX_CAPTION_BYTES, "a caption")
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ShiraError(f"{_label(path)}: captions must be UTF-8 text") from None


def _safe_member(info: zipfile.ZipInfo, archive: str) -> PurePosixPath | None:
    """The member's relative path, or an error if it points outside the archive's folder; None for
    folders and files the app ignores (macOS resource forks, hidden files)."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
        raise ShiraError(f"{archive}: entry {info.filename!r} points outside the archive's folder; refused")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ShiraError(f"{archive}: entry {info.filename!r} is a link; refused")
    if info.is_dir() or any(part.startswith((".", "__MACOSX")) for part in path.parts):
        return None
    return path


def unpack_zip(path, dest: Path) -> list[tuple[str, Path]]:
    """Extract the images and captions of a zip into ``dest``, checked entry by entry before anything
    is written. Returns (the member's path in the archive, where it was written) per file: each
    member gets its own numbered file, so members whose names differ only in folders, case or
    separators (``a-b/x.png``, ``a/b-x.png``) all survive."""
    archive = _label(path)
    check_size(path, MAX_ZIP_BYTES, "a zip archive")
    try:
        handle = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise ShiraError(f"{archive}: not a readable zip archive") from None
    with handle:
        members = []
        for info in handle.infolist():
            member = _safe_member(info, archive)
            if member is not None and member.suffix.lower() in (*IMAGE_SUFFIXES, ".txt"):
                members.append((info, member))
        if len(members) > 2 * MAX_TRAINING_IMAGES:  # images and their captions
            raise ShiraError(f"{archive}: {len(members)} files; at most {MAX_TRAINING_IMAGES} images with captions")
        if sum(info.file_size for info, _ in members) > MAX_ZIP_BYTES:
            raise ShiraError(f"{archive}: unpacks to more than {MAX_ZIP_BYTES // MB} MB; refused")
        for info, member in members:
            limit = MAX_CAPTION_BYTES if member.suffix.lower() == ".txt" else MAX_IMAGE_BYTES
            if info.file_size > limit:
                raise ShiraError(f"{archive}: entry {info.filename!r} is over the {limit // 1024} KB per-file limit")
        written = []
        for number, (info, member) in enumerate(members):
            target = dest / f"{uuid.uuid4().hex[:8]}-{number}{member.suffix.lower()}"
            with handle.open(info) as source, open(target, "wb") as out:  # reads at most file_size bytes
                shutil.copyfileobj(source, out, length=MB)
            written.append((str(member), target))
    return written


def _flat_name(member: str) -> str:
    """``a/b/0001.PNG`` -> ``a-b-0001``: a readable, sanitised file stem (not unique: see ``_unique``)."""
    path = PurePosixPath(member)
    return sanitize_name("-".join([*path.parent.parts, path.stem]))


def _unique(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ... whichever is not yet in ``taken`` (then added to it)."""
    name, number = stem, 1
    while name.lower() in taken:  # case-folded: the folder may be on a case-insensitive disk
        number += 1
        name = f"{stem}-{number}"
    taken.add(name.lower())
    return name


def _pairing_key(original: str) -> str:
    """What pairs an image with its caption: the same path without its suffix, exactly (as kohya and
    diffusers' folders pair ``x.png`` with ``x.txt``); no case folding or sanitising, so two
    different names never share a caption."""
    path = PurePosixPath(original)
    return str(path.with_suffix(""))


def training_folder(files, dest: Path, caption_for_all: str = "") -> tuple[int, int]:
    """Put uploaded images (files and zips) with their captions into ``dest`` as a captioned image
    folder: ``NAME.png`` + ``NAME.txt``. A ``.txt`` with the same name (the same path, in a zip) is an
    image's caption; otherwise ``caption_for_all``. Every image is kept under its own name, however
    alike two names are. Returns (images, captioned by their own .txt)."""
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / ".staging"
    staging.mkdir(exist_ok=True)
    try:
        entries = []  # (pairing key, shown name, file)
        for file in files or []:
            file = str(file)
            suffix = Path(file).suffix.lower()
            if suffix == ".zip":
                archive = _label(file)
                entries.extend((f"{archive}/{_pairing_key(member)}", member, staged)
                               for member, staged in unpack_zip(file, staging))
            elif suffix in (*IMAGE_SUFFIXES, ".txt"):
                entries.append((_pairing_key(Path(file).name), Path(file).name, Path(file)))
            else:
                raise ShiraError(f"{_label(file)}: only images ({', '.join(IMAGE_SUFFIXES)}), .txt captions "
                                 "and .zip archives are accepted for training")
        captions = {}
        for key, shown, path in entries:
            if path.suffix.lower() == ".txt":
                if key in captions:
                    raise ShiraError(f"two captions named {shown}: rename one (each image pairs with the .txt of "
                                     "its own name)")
                captions[key] = _read_caption(path)
        images = [(key, shown, path) for key, shown, path in entries if path.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise ShiraError("no training images: upload images (or a zip of them)")
        if len(images) > MAX_TRAINING_IMAGES:
            raise ShiraError(f"{len(images)} images: at most {MAX_TRAINING_IMAGES} per style")
        own, taken = 0, set()
        for key, shown, path in images:
            caption = captions.get(key) or caption_for_all.strip()
            if not caption:
                raise ShiraError(f"{PurePosixPath(shown).name} has no caption: add a same-name .txt, "
                                 "or one caption for all")
            own += key in captions
            name = _unique(_flat_name(shown), taken)
            check_image(path).save(dest / f"{name}.png")
            (dest / f"{name}.txt").write_text(caption, encoding="utf-8")
        return len(images), own
    finally:
        shutil.rmtree(staging, ignore_errors=True)
