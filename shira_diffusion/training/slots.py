"""Which Struct slot a new style trains on, so that styles trained with the defaults mix well.

Styles of one size on different slots (``core.masks.struct_slot_mask``) share no weight entry:
mixed, each keeps its own entries. ``auto`` takes the lowest slot that no SHiRA adapter in the
catalogue uses on the base (read from each adapter's recipe), skipping the style's own (a style
trained again keeps its place); when all are taken, a slot from the style's name.
"""

from __future__ import annotations

import json
import logging
import zlib

from safetensors import safe_open

from ..catalog import base_label, default_catalog
from ..core.masks import SLOTS
from .config import TrainConfig, parse_mask_slot

logger = logging.getLogger(__name__)


def used_slots(base: str, except_style: str | None = None) -> set[int]:
    """Slots the catalogue's SHiRA adapters for ``base`` were trained on."""
    used, base = set(), base_label(base)
    for record in default_catalog().list():
        if record.name == except_style:
            continue
        for key in record.files:
            key_base, _, variant = key.rpartition("/")
            path = record.adapter_path(key_base, variant)
            if key_base != base or not variant.startswith("shira") or not path.is_file():
                continue
            try:
                with safe_open(str(path), "pt") as handle:
                    recipe = json.loads((handle.metadata() or {}).get("recipe") or "{}")
                slot = parse_mask_slot(recipe.get("mask_slot", "none"))
            except Exception:  # an unreadable file or recipe takes no slot; loading it fails elsewhere
                continue
            if isinstance(slot, int):
                used.add(slot)
    return used


def resolve_mask_slot(config: TrainConfig, name: str) -> int | None:
    """The slot this run trains on (None: the shared Struct mask, or not a Struct SHiRA run)."""
    slot = parse_mask_slot(config.mask_slot)
    if config.adapter != "shira" or config.mask != "struct" or slot is None:
        return None
    if slot != "auto":
        return slot
    taken = used_slots(str(config.base), except_style=name)
    free = [k for k in range(SLOTS) if k not in taken]
    chosen = free[0] if free else zlib.crc32(name.encode()) % SLOTS
    logger.info("mask slot %d (%s)", chosen, "lowest free on %s" % config.base if free else
                "every slot is taken on %s: from the style's name" % config.base)
    return chosen
