"""The Create tab's mix panel: what mixing the chosen styles does to each of them, in plain words
and one heatmap.

- In weight space, measured on demand for the chosen styles' SHiRA adapters on the base
  (``fusion.weight_metrics.pair_metrics``: entry overlap, AWOR, cosine), cached per pair of
  (file path, mtime) in ``WeightSpaceCache``: a second look is instant.
- In the images, read from stored measurements of ``shira eval fusion --base B --json``
  (``$SHIRA_FUSION_DIR/fusion-<base>.json``, default ``assets/fusion`` in the repository): each
  member's retention (strength in the mix / alone) for the method matching the adapters being
  mixed (one shared mask: ``shira-shared``; different Struct slots: ``shira-slots``), and LoRA's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from ..catalog import BUNDLED_ROOT, StyleCatalog, base_label, default_catalog
from ..errors import ShiraError
from ..fusion.deltas import AdapterDeltas, load_deltas
from ..fusion.heatmap import pairwise_matrix, save_heatmaps
from ..fusion.weight_metrics import pair_metrics
from .checks import style_files
from .uploads import app_home, prune_oldest_pngs

FUSION_DIR_VARIABLE = "SHIRA_FUSION_DIR"
DEFAULT_FUSION_DIR = BUNDLED_ROOT.parent / "assets" / "fusion"
MAX_MIX = 4  # as service.MAX_STYLES (not imported: the service imports this module)
KEEP_FIGURES = 64
NOTHING_TO_MIX = "**Nothing to mix**: choose two or more styles to see what mixing them does to each."
PRESS_MEASURE = "Press **Measure this mix** to see what mixing {names} does to each style."

Progress = Callable[[float, str], None]


def fusion_dir() -> Path:
    """Where stored ``shira eval fusion`` results are read: ``$SHIRA_FUSION_DIR``, else ``assets/fusion``."""
    return Path(os.environ.get(FUSION_DIR_VARIABLE) or DEFAULT_FUSION_DIR)


def stored_path(base: str) -> Path:
    return fusion_dir() / f"fusion-{base_label(base)}.json"


def load_stored(base: str) -> tuple[dict | None, str | None]:
    """(the stored ``eval_fusion`` result for ``base``, or None; why it is missing or unusable)."""
    path = stored_path(base)
    if not path.is_file():
        try:
            shown = path.relative_to(BUNDLED_ROOT.parent)
        except ValueError:
            shown = path
        return None, (f"not measured yet for this base; `shira eval fusion --base {base_label(base)} --json` "
                      f"measures it (its last line, saved as `{shown}`, is what this panel reads)")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(result, dict) or not isinstance(result.get("methods"), dict):
            raise ValueError("no 'methods' object")
    except (OSError, ValueError) as exc:
        return None, f"`{path}` cannot be read ({exc})"
    return result, None


def adapter_slot(path: str | os.PathLike) -> int | None:
    """The Struct slot an adapter was trained on (its ``mask_spec``, else its recipe's ``mask_slot``);
    None: the shared mask. Read from the header only."""
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        spec = json.loads(meta.get("mask_spec") or "null")
        recipe = json.loads(meta.get("recipe") or "{}")
    except Exception:  # an unreadable file fails with a clear message when its deltas are read
        return None
    for slot in ((spec or {}).get("slot") if isinstance(spec, dict) else None,
                 recipe.get("mask_slot") if isinstance(recipe, dict) else None):
        try:
            return int(slot)
        except (TypeError, ValueError):
            continue
    return None


def mix_method(slot_a: int | None, slot_b: int | None) -> str | None:
    """The stored method that matches mixing these two SHiRA adapters (None: none does)."""
    if slot_a == slot_b:
        return "shira-shared"  # one mask (the shared Struct mask, or the same slot)
    if slot_a is not None and slot_b is not None:
        return "shira-slots"
    return None


def adapter_deltas(path: str | os.PathLike, name: str) -> AdapterDeltas:
    """An adapter file's deltas (``fusion.deltas.load_deltas``: listed or described masks alike)."""
    return load_deltas(path, name=name)


def _stamp(path: Path) -> tuple[str, int]:
    return str(Path(path).resolve()), os.stat(path).st_mtime_ns


class WeightSpaceCache:
    """``pair_metrics(...)["overall"]`` per (base, both files' path and mtime), least recently used
    dropped past ``size``. One measurement at a time; cached pairs are answered meanwhile."""

    def __init__(self, size: int = 512):
        self.size = size
        self._pairs: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()  # the dict
        self._measuring = threading.Lock()  # the computation
        self.measured = 0  # pairs computed (not answered from the cache)

    @staticmethod
    def key(base: str, path_a: Path, path_b: Path) -> tuple:
        return (base_label(base), *sorted([_stamp(path_a), _stamp(path_b)]))  # the figures are symmetric

    def _get(self, key):
        with self._lock:
            if key in self._pairs:
                self._pairs.move_to_end(key)
                return self._pairs[key]
        return None

    def measure(self, base: str, files: dict[str, Path], progress: Progress | None = None) -> dict[str, dict]:
        """``{"a+b": overall}`` for every pair of ``files`` (style name -> adapter file), in order."""
        say = progress or (lambda fraction, text: None)
        pairs = list(itertools.combinations(files, 2))
        keys = {(a, b): self.key(base, files[a], files[b]) for a, b in pairs}
        result = {f"{a}+{b}": self._get(keys[a, b]) for a, b in pairs}
        missing = [(a, b) for a, b in pairs if result[f"{a}+{b}"] is None]
        if not missing:
            return result
        with self._measuring:
            deltas: dict[str, AdapterDeltas] = {}
            for i, (a, b) in enumerate(missing):
                overall = self._get(keys[a, b])  # measured by another request meanwhile?
                if overall is None:
                    say(i / len(missing), f"measuring {a} + {b} in weight space")
                    for name in (a, b):
                        if name not in deltas:
                            deltas[name] = adapter_deltas(files[name], name)
                    overall = pair_metrics(deltas[a], deltas[b])["overall"]
                    with self._lock:
                        self._pairs[keys[a, b]] = overall
                        while len(self._pairs) > self.size:
                            self._pairs.popitem(last=False)
                        self.measured += 1
                result[f"{a}+{b}"] = overall
            say(1.0, "drawing the figure")
        return result


@dataclass
class MixReport:
    text: str  # Markdown
    image: str | None  # the heatmap PNG
    data: dict  # the figures, for API clients


def _stored_pair(stored: dict, method: str | None, a: str, b: str) -> dict | None:
    """{style: retention} of the pair for ``method`` in the stored result (either order), or None."""
    if stored is None or method is None:
        return None
    pairs = (stored["methods"].get(method) or {}).get("pairs") or {}
    row = pairs.get(f"{a}+{b}") or pairs.get(f"{b}+{a}")
    try:
        return {s: float(row["retention"][s]) for s in (a, b)} if row else None
    except (KeyError, TypeError, ValueError):
        return None


def _percent(value: float) -> str:
    return f"{value * 100:.0f} %"


def _weight_sentence(a: str, b: str, overall: dict) -> str:
    jaccard, awor, cosine = overall["jaccard"], overall["awor"], overall["cosine"]
    if jaccard == 0:
        shared = " (they share no weight)"
    elif jaccard >= 0.999:
        shared = " (one shared mask: on every entry the mix adds both styles' changes)"
    else:
        shared = ""
    relation = ("nearly unrelated" if abs(cosine) < 0.2 else "pulling the same way" if cosine > 0
                else "pulling against each other")
    return (f"**{a}** and **{b}** overlap on {_percent(jaccard)} of their entries{shared}; AWOR {awor:.2f} "
            f"(1: their updates never meet in a row); their changes are {relation} (cosine {cosine:+.2f}).")


def _conflicting(stored: dict | None, a: str, b: str) -> bool:
    pairs = (stored or {}).get("conflicting") or []
    return any(isinstance(p, list) and sorted(p) == sorted([a, b]) for p in pairs)


def mix_report(base: str, styles: Sequence[str], weights: Sequence[float] = (), *,
               catalog: StyleCatalog | None = None, cache: WeightSpaceCache | None = None,
               progress: Progress | None = None) -> MixReport:
    """What mixing ``styles`` (catalogue names; ``weights`` as the sliders give them) on ``base`` does
    to each: sentences per style and per pair, one heatmap PNG, and the figures."""
    label = base_label(base or "")
    if not label:
        raise ShiraError("choose a base")
    names = list(dict.fromkeys(str(s).strip() for s in styles or [] if str(s).strip()))
    if len(names) > MAX_MIX:
        raise ShiraError(f"{len(names)} styles chosen: mix at most {MAX_MIX}")
    given = {str(s).strip(): float(w) for s, w in zip(styles or [], weights or [])}
    data = {"base": label, "styles": names, "weights": {n: given.get(n) for n in names}, "pairs": {}}
    if len(names) < 2:
        return MixReport(NOTHING_TO_MIX, None, data)
    catalog = catalog or default_catalog()
    files = dict(zip(names, style_files(catalog, names, label)))  # the files a mix of them fuses (names only)
    slots = {n: adapter_slot(p) for n, p in files.items()}
    weight_space = (cache or WeightSpaceCache()).measure(label, files, progress)
    stored, missing_why = load_stored(label)
    data["stored"] = str(stored_path(label)) if stored else None

    pair_lines, retained = [], {n: [] for n in names}  # retained[style]: [(partner, shira, lora)]
    for a, b in itertools.combinations(names, 2):
        method = mix_method(slots[a], slots[b])
        shira, lora = _stored_pair(stored, method, a, b), _stored_pair(stored, "lora", a, b)
        row = {"method": method, "slots": [slots[a], slots[b]], "weight_space": weight_space[f"{a}+{b}"],
               "retention": shira, "lora_retention": lora}
        if shira:
            row["status"] = "measured"
            retained[a].append((b, shira[a], lora and lora[a]))
            retained[b].append((a, shira[b], lora and lora[b]))
        elif stored is None:
            row["status"] = "not measured"
        elif _conflicting(stored, a, b):
            row["status"] = "conflicting"
            pair_lines.append(f"**{a}** + **{b}**: not measured: their looks erase each other by construction.")
        elif method is None:
            row["status"] = "no matching method"
            pair_lines.append(f"**{a}** + **{b}**: no stored method mixes adapters like these (slots "
                              f"{slots[a]} and {slots[b]}: one shared mask, one Struct slot).")
        else:
            row["status"] = "not stored"
            pair_lines.append(f"**{a}** + **{b}**: no stored {method} measurement for this pair.")
        data["pairs"][f"{a}+{b}"] = row

    title = f"### What this mix does ({label}: {' + '.join(names)})"
    lines = [title, "", "**In the images**"]
    if stored is None:
        lines.append(f"- {missing_why[0].upper()}{missing_why[1:]}.")
    else:
        prompts = stored.get("prompts", "?")
        note = f"measured on {prompts} prompts, weight {stored.get('weight', 1):g} each"
        if any(w is not None and abs(w - float(stored.get("weight", 1))) > 1e-9 for w in data["weights"].values()):
            note += " (your sliders: " + ", ".join(f"{n} {data['weights'][n]:g}" for n in names) + ")"
        lines.append(f"({note}; stored in `{Path(data['stored']).name}`)")
        for name in names:
            if not retained[name]:
                continue
            parts = []
            for partner, shira, lora in retained[name]:
                with_lora = f"; as LoRAs {_percent(lora)}" if lora is not None else ""
                where = "in this mix" if len(names) == 2 else f"mixed with {partner}"
                parts.append(f"{_percent(shira)} of its strength {where}{with_lora}")
            lines.append(f"- **{name}** keeps " + ", ".join(parts) + ".")
        lines += [f"- {line}" for line in pair_lines]
    lines += ["", "**In weight space** (the adapter files, measured now)"]
    lines += [f"- {_weight_sentence(a, b, weight_space[f'{a}+{b}'])}" for a, b in itertools.combinations(names, 2)]
    data["text"] = "\n".join(lines)
    return MixReport(data["text"], _figure(label, names, files, data), data)


def _figure(label: str, names: list[str], files: dict[str, Path], data: dict) -> str:
    """One PNG: entry overlap and AWOR per pair, and stored retention (row style in its mix with the
    column style) where stored. Named by what it shows, so a second look reuses it."""
    stored = data.get("stored")
    digest = hashlib.sha256(json.dumps([label, names, [_stamp(files[n]) for n in names],
                                        stored and os.stat(stored).st_mtime_ns], default=str).encode()).hexdigest()
    folder = app_home() / "outputs" / "mix"
    path = folder / f"{digest[:20]}.png"
    if path.is_file():
        return str(path)
    metrics = {f"{a}|{b}": {"overall": data["pairs"][f"{a}+{b}"]["weight_space"]}
               for a, b in itertools.combinations(names, 2)}
    panels = {"entry overlap (Jaccard)": pairwise_matrix(names, metrics, "jaccard"),
              "AWOR (1: never meet)": pairwise_matrix(names, metrics, "awor")}
    index = {n: i for i, n in enumerate(names)}
    for key, label_ in (("retention", "retention in the mix (SHiRA)"), ("lora_retention", "retention (LoRA)")):
        matrix = np.full((len(names), len(names)), np.nan)
        for pair, row in data["pairs"].items():
            for style, value in (row.get(key) or {}).items():
                other = next(s for s in pair.split("+") if s != style)
                matrix[index[style], index[other]] = value
        if np.isfinite(matrix).any():
            panels[label_] = matrix
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{path.name}.{threading.get_ident()}.png"
    save_heatmaps(names, panels, str(temporary), title=f"{label}: {' + '.join(names)}")
    os.replace(temporary, path)
    prune_oldest_pngs(folder, KEEP_FIGURES)
    return str(path)
