"""``shira eval new-style``: is a freshly trained style at full strength with its content kept, with
no hand tuning? Each style is trained the way a user trains one (``shira train`` with the defaults,
the self-check included), then measured on reserved prompts (never used in training or calibration)
with exact measures: at the setting ``shira generate`` will use (the self-check's, where it stored
one; else guidance 5 and weight 1), and at guidance 5 and weight 1 for comparison.

Styles: an unseen look (``unseen_looks``: rendered here, no bundled style has it, the base was not trained
on it) or a bundled style's name (its training set, the bundled trigger, none of its tuned settings).
The style detector the run stored is checked against the exact measure on the same images.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import ShiraError
from .detector import StyleDetector
from .self_check import CONTENT_TOLERANCE, STRENGTH_TARGET
from .unseen_looks import UNSEEN_LOOKS



def _training_set(name: str, folder: Path, images: int, seed: int) -> str | None:
    """Write ``name``'s training images and captions into ``folder``; returns the trigger to pass (None:
    the captions carry it, and training infers it)."""
    from ..toy.prompts import reserved_prompts
    from ..toy.world import write_dataset

    folder.mkdir(parents=True, exist_ok=True)
    if name in UNSEEN_LOOKS:
        write_dataset(folder, images, seed=seed, style="qzv", look=UNSEEN_LOOKS[name][0], exclude=reserved_prompts())
        return None
    from ..catalog import default_catalog

    record = default_catalog().get(name)
    pngs = sorted((Path(record.folder) / "images").glob("*.png"))[:images]
    for png in pngs:
        shutil.copyfile(png, folder / png.name)
        shutil.copyfile(png.with_suffix(".txt"), folder / png.with_suffix(".txt").name)
    return record.trigger


def check_style_names(styles: Sequence[str]) -> None:
    """Refuse a name that is neither an unseen look nor a bundled style, before any work."""
    from ..bundled.specs import STYLES

    if not styles:
        raise ShiraError("no styles to evaluate")
    for name in styles:
        if name not in UNSEEN_LOOKS and name not in STYLES:
            raise ShiraError(f"{name!r} is neither an unseen look ({', '.join(UNSEEN_LOOKS)}) nor a bundled style "
                             f"({', '.join(STYLES)})")


def _measures(name: str):
    """(shown(image) -> bool, kept(image, prompt) -> bool: the exact measures) for ``name``."""
    if name in UNSEEN_LOOKS:
        from ..toy.content import read_content

        _, shown, removed = UNSEEN_LOOKS[name]
        return shown, lambda image, prompt: _reads_as(read_content(removed(image)), prompt)
    from ..bundled.specs import STYLES
    from ..toy.looks import shows_look
    from ..toy.styled_content import read_styled_content

    look = STYLES[name].look
    return (lambda image: shows_look(image, look)), \
        (lambda image, prompt: _reads_as(read_styled_content(image, [look]), prompt))


def _reads_as(read: dict, prompt: str) -> bool:
    from ..toy.world import parse_prompt

    want = parse_prompt(prompt)
    return all(read[k] == want[k] for k in ("color", "shape", "background"))


def _checked_kept(styled, plain, prompts, reader) -> np.ndarray:
    """The self-check's content verdict per image (``content.content_kept``'s, image by image)."""
    from .content import STRUCTURE_THRESHOLD, structure_similarity

    if reader is not None:
        return np.array([_reads_as(reader.read(im), p) for im, p in zip(styled, prompts)])
    return np.array([structure_similarity(s, p) >= STRUCTURE_THRESHOLD for s, p in zip(styled, plain)])


def eval_new_styles(base: str, styles: Sequence[str], out: str, *, images: int = 30, prompts: int = 40,
                    seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Train each style with the defaults into ``out/NAME/`` and measure it; the result is also written
    to ``out/new-style.json`` after each style."""
    from ..bases import load_pipeline
    from ..core.adapter import recommended_setting
    from ..core.bank import StyleBank
    from ..generate import applied_adapter, generate_batched, with_triggers
    from ..toy.content import read_content
    from ..toy.prompts import held_out_prompts
    from ..training import TrainConfig, train

    check_style_names(styles)
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    bank = StyleBank(pipe.unet)
    evaluation = [e["prompt"] for e in held_out_prompts(prompts)]
    plain_by_guidance: dict[float, list] = {}
    result = {"base": base, "images": images, "prompts": prompts, "targets": {
        "strength": STRENGTH_TARGET, "content_within": CONTENT_TOLERANCE}, "styles": {}}
    for name in styles:
        folder = Path(out) / name
        trigger = _training_set(name, folder / "data", images, seed)
        output = folder / f"{name}.safetensors"
        started = time.time()
        record = train(TrainConfig(train_data_dir=str(folder / "data"), output=str(output), base=base,
                                   trigger=trigger, overwrite=True), pipeline=pipe)
        seconds = time.time() - started
        check = record.get("self_check", {})
        if check.get("detector"):  # the result names files by name: it may be kept anywhere
            check = {**check, "detector": os.path.basename(check["detector"])}
        trigger = record["trigger"]
        shown, exactly_kept = _measures(name)
        reader = _content_reader(folder / "data", trigger, pipe)
        detector = StyleDetector.load(folder / check["detector"]) if check.get("detector") else None
        row = {"train_seconds": record["seconds"], "check_seconds": check.get("seconds"),
               "total_minutes": round(seconds / 60, 2), "self_check": check, "settings": {}}
        stored = recommended_setting(output)  # what generate and the app will use: 5 and 1 unless stored
        chosen = {"guidance": stored.get("guidance", 5.0), "weight": stored.get("weight", 1.0)}
        agreement, content_agreement = [], []
        for label, g, w in (("as used", chosen["guidance"], chosen["weight"]), ("guidance 5, weight 1", 5.0, 1.0)):
            if label != "as used" and (g, w) == (chosen["guidance"], chosen["weight"]):
                row["settings"][label] = row["settings"]["as used"]
                continue
            if g not in plain_by_guidance:
                plain_by_guidance[g] = generate_batched(pipe, evaluation, 20, g, desc=f"plain g{g:g}")
            plain = plain_by_guidance[g]
            with applied_adapter(pipe, bank, output, "shira", w):
                styled = generate_batched(pipe, [with_triggers(p, [trigger]) for p in evaluation], 20, g,
                                          desc=f"{name} g{g:g} w{w:g}")
            exact = np.array([shown(im) for im in styled])
            kept = np.array([exactly_kept(im, p) for im, p in zip(styled, evaluation)])
            checked = _checked_kept(styled, plain, evaluation, reader)
            content_agreement.append(kept == checked)
            base_content = float(np.mean([_reads_as(read_content(im), p) for im, p in zip(plain, evaluation)]))
            measured = {"guidance": g, "weight": w, "strength": float(exact.mean()), "content": float(kept.mean()),
                        "base_content": base_content, "content_drop": base_content - float(kept.mean()),
                        "content_as_checked": float(checked.mean())}
            measured["meets"] = measured["strength"] >= STRENGTH_TARGET and \
                measured["content_drop"] <= CONTENT_TOLERANCE + 1e-9
            if detector is not None:
                said = detector.shows(styled, plain)
                measured["detector_strength"] = float(said.mean())
                agreement.append(said == exact)
            row["settings"][label] = measured
        if detector is not None:  # and on the base's own images: the style must not be seen where it is not
            plain = plain_by_guidance[chosen["guidance"]]
            others = plain_by_guidance.get(5.0, plain)
            said = detector.shows(plain, others if others is not plain else plain[1:] + plain[:1])
            agreement.append(said == np.array([shown(im) for im in plain]))
            row["detector_agreement"] = float(np.concatenate(agreement).mean())
        row["content_agreement"] = float(np.concatenate(content_agreement).mean())
        result["styles"][name] = row
        calibrated = row["settings"]["as used"]
        log(f"{name}: strength {calibrated['strength']:.0%}, content {calibrated['content']:.0%} (base "
            f"{calibrated['base_content']:.0%}) at g{calibrated['guidance']:g} w{calibrated['weight']:g}; "
            f"{row['total_minutes']} min; detector agrees on {row.get('detector_agreement', float('nan')):.0%}, "
            f"content check on {row['content_agreement']:.0%}")
        _save(result, out)
    return result


def _content_reader(folder: Path, trigger: str, pipe):
    """The self-check's content reader for this training set (None: the structure proxy)."""
    from PIL import Image

    from .after_training import toy_content_reader
    from .prompts import without_trigger

    pngs = sorted(folder.glob("*.png"))
    captions = [without_trigger(p.with_suffix(".txt").read_text(encoding="utf-8").strip(), trigger) for p in pngs]
    return toy_content_reader([Image.open(p) for p in pngs], captions, pipe)


def _save(result: dict, out: str) -> None:
    from ..files import write_atomically

    path = os.path.join(out, "new-style.json")
    text = json.dumps(result, indent=1, default=float)
    write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def format_new_style_table(result: dict) -> str:
    lines = [f"{result['base']}: trained with the defaults on {result['images']} images, measured on "
             f"{result['prompts']} reserved prompts (target: strength >= {STRENGTH_TARGET:.0%}, content within "
             f"{CONTENT_TOLERANCE:.0%} of the base's)",
             f"{'style':10} {'setting':28} {'g':>4} {'w':>5} {'strength':>8} {'content':>7} {'base':>5} {'drop':>5} "
             f"{'check':>5} {'met':>4} {'detector':>8} {'minutes':>7}"]
    for name, row in result["styles"].items():
        for label, m in row["settings"].items():
            lines.append(f"{name:10} {label:28} {m['guidance']:4g} {m['weight']:5.3g} {m['strength']:8.0%} "
                         f"{m['content']:7.0%} {m['base_content']:5.0%} {m['content_drop']:+5.0%} "
                         f"{m['content_as_checked']:5.0%} {'yes' if m['meets'] else 'no':>4} "
                         f"{m.get('detector_strength', float('nan')):8.0%} {row['total_minutes']:7.2f}")
        if "detector_agreement" in row:
            lines.append(f"{name:10} detector agrees with the exact measure on "
                         f"{row['detector_agreement']:.0%} of its images (both settings and the base's own)")
        if "content_agreement" in row:
            lines.append(f"{name:10} the self-check's content reading agrees with the exact one on "
                         f"{row['content_agreement']:.0%} of its styled images")
    return "\n".join(lines)
