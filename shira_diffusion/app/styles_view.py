"""What the page shows of the style catalogue: gallery cards, default weights and guidance,
the inspector of an uploaded adapter, adding and removing the user's styles."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..catalog import StyleRecord, check_style_name, sanitize_name
from ..core.adapter import SparseAdapter
from ..core.summary import describe
from ..errors import ShiraError
from ..generate import DEFAULT_GUIDANCE
from .checks import check_style, scrub
from .uploads import app_home, check_adapter_upload, served_copy

TENSOR_COLUMNS = ["name", "kind", "shape", "entries", "density", "lora_equivalent_rank", "abs_max", "rms"]
THUMBNAIL_PROMPT = "a red circle on a blue background"


def placeholder_thumbnail() -> str:
    path = app_home() / "static" / "no-thumbnail.png"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (128, 128, 128)).save(path)
    return str(path)


def card(record: StyleRecord) -> tuple[str, str]:
    """(thumbnail, caption) of a style in the gallery: name, trigger, one-line description."""
    thumb = record.thumbnail_path()
    line = (record.description or "").split("\n")[0]
    if len(line) > 70:
        line = line[:67] + "..."
    mine = " (yours)" if record.source == "user" else ""
    trigger = f" · trigger `{record.trigger}`" if record.trigger else ""
    return served_thumbnail(record) if thumb else placeholder_thumbnail(), f"{record.name}{mine}{trigger} — {line}"


def served_thumbnail(record: StyleRecord) -> str:
    """The style's thumbnail, copied where the server serves it: never the style's own folder,
    which holds its training images and captions."""
    thumb = record.thumbnail_path()
    info = thumb.stat()
    return served_copy(thumb, "thumbnails", f"{record.name}-{info.st_size:x}{info.st_mtime_ns:x}.png")


def recommended(record: StyleRecord | None, base: str) -> tuple[float | None, float | None]:
    """(guidance, weight) recommended for the style's SHiRA adapter on ``base``, where recorded."""
    entry = record.entry(base) if record is not None else None
    if entry is None:
        return None, None
    return entry.guidance, entry.weight


def default_weight(record: StyleRecord | None, base: str) -> float:
    weight = recommended(record, base)[1]
    return 1.0 if weight is None else float(weight)


def default_guidance(records: list[StyleRecord | None], base: str) -> float:
    """A single style's recommended guidance; else (a mix, or none recorded) the pipelines' 5."""
    if len(records) == 1:
        guidance = recommended(records[0], base)[0]
        if guidance is not None:
            return float(guidance)
    return DEFAULT_GUIDANCE


def inspect_adapter(path: str | None):
    """Validate an uploaded adapter file: (summary markdown, per-tensor rows, metadata dict)."""
    if not path:
        return "Upload a `.safetensors` adapter to inspect it.", [], {}
    try:
        check_adapter_upload(path)
        summary = describe(SparseAdapter.load(path))
    except ShiraError as exc:
        return f"**This file cannot be used:** {scrub(exc)}", [], {}
    rows = [[row[c] if c != "shape" else "x".join(map(str, row[c])) for c in TENSOR_COLUMNS] for row in summary["tensors"]]
    meta = {k: v for k, v in summary.items() if k != "tensors"}
    text = (
        f"### {summary['name']}\n"
        f"A **{summary['base_arch'].upper()}**-family adapter with mask **{summary['mask']}**: "
        f"{summary['params']:,} trained entries ({summary['density']:.2%} of {len(rows)} weight tensors), "
        f"values in {summary['dtype']}."
        + (f" Trigger word: `{summary['trigger']}`." if summary["trigger"] else "")
    )
    return text, rows, meta


def suggested_name(path: str, adapter_name: str = "") -> str:
    return sanitize_name(adapter_name or Path(path).name.split(".")[0])


def add_user_style(service, path: str, name: str, base: str, trigger: str = "", description: str = "",
                   overwrite: bool = False) -> StyleRecord:
    """Check an uploaded adapter against the base's UNet, add it to the user's styles, and give it
    a thumbnail made with it."""
    if not path:
        raise ShiraError("upload an adapter first")
    check_adapter_upload(path)
    name = check_style_name((name or "").strip())
    adapter = SparseAdapter.load(path)
    loaded = service.base(base)
    adapter.check_compatible(dict(loaded.pipe.unet.named_parameters()), loaded.family)
    catalog = service.catalog()
    catalog.add(name, path, loaded.name, description=description or adapter.description,
                trigger=trigger if trigger else (adapter.trigger or ""), overwrite=overwrite)
    make_thumbnail(service, name, loaded.spec)
    return catalog.get(name)


def convert_user_lora(service, path: str, name: str, base: str, trigger: str = "", description: str = "",
                      rank: int | None = None):
    """A LoRA upload converted to SHiRA on ``base`` (``transfer.convert_lora``: its largest delta
    entries, as many as the LoRA's parameters unless ``rank`` says otherwise) and added to the
    user's styles like an uploaded adapter. Returns (record, conversion)."""
    import shutil

    from ..transfer.lora import convert_lora
    from .uploads import ADAPTER_SUFFIX, MAX_ADAPTER_BYTES, check_size, foreign_adapter_kind, new_work_folder

    if not path:
        raise ShiraError("upload a LoRA file first")
    if not str(path).lower().endswith(ADAPTER_SUFFIX):
        raise ShiraError(f"{Path(path).name}: only .safetensors LoRA files are accepted")
    check_size(path, MAX_ADAPTER_BYTES, "an adapter")
    if foreign_adapter_kind(path) != "lora":
        raise ShiraError(f"{Path(path).name} is not a LoRA file (no diffusers or kohya LoRA keys); a SHiRA "
                         "adapter is added as it is")
    name = check_style_name((name or "").strip())
    rank = None if rank in (None, "", 0) else int(rank)
    loaded = service.base(base)
    # The served pipeline, under its bank's lock: diffusers loads the LoRA into it for the deltas
    # and takes it out again, so no request generates meanwhile and no second copy of the base loads.
    with loaded.bank.lock:
        conversion = convert_lora(path, loaded.pipe, rank=rank, name=name)
    folder = new_work_folder("convert")
    try:
        out = folder / f"{name}.safetensors"
        conversion.adapter.save(out)
        record = add_user_style(service, str(out), name, base, trigger, description)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = conversion.report
    service.catalog().update_entry(name, f"{loaded.name}/shira", {"converted": {
        k: report[k] for k in ("format", "lora_rank", "params", "lora_params", "relative_error", "energy_kept")}})
    return record, conversion


def make_thumbnail(service, name: str, base: str) -> None:
    """A thumbnail for a user style: one image of ``THUMBNAIL_PROMPT`` with it at weight 1."""
    catalog = service.catalog()
    record = catalog.get(name)
    result = service.generate(base, [(name, 1.0)], THUMBNAIL_PROMPT, seed=0, steps=20, count=1)
    Image.open(result.images[0][0]).convert("RGB").save(record.folder / "thumbnail.png")
    key = next(iter(record.files))
    catalog.update_entry(name, key, {}, thumbnail="thumbnail.png")


def user_style_files(service, name: str) -> list[str]:
    """The adapter files of one of the user's styles (for download)."""
    catalog = service.catalog()
    record = catalog.get(check_style(catalog, name))
    if record.source != "user":
        raise ShiraError(f"{name!r} is a bundled style: its files are in the repository's styles/{name}/")
    files = [record.folder / entry.file for entry in record.files.values() if (record.folder / entry.file).is_file()]
    return [served_copy(path, "downloads", path.name) for path in files]  # copies: the folder is never served
