import numpy as np
import pytest

from shira_diffusion.catalog import default_catalog
from shira_diffusion.metrics import style_strength
from shira_diffusion.toy.looks import LOOKS
from shira_diffusion.toy.prompts import held_out_prompts, reserved_prompts
from shira_diffusion.toy.world import make_prompt, render, sample_scene, write_dataset


def test_held_out_prompts_avoid_every_training_caption_and_are_fixed():
    prompts = held_out_prompts(100)
    assert len({p["prompt"] for p in prompts}) == 100 and prompts == held_out_prompts(100)
    assert held_out_prompts(10) == prompts[:10]
    assert not {p["prompt"] for p in prompts} & default_catalog().training_captions()
    assert all(make_prompt(p["color"], p["shape"], p["background"]) == p["prompt"] for p in prompts)


def test_training_sets_skip_the_reserved_prompts(tmp_path):
    reserved = reserved_prompts()
    write_dataset(tmp_path, 60, seed=3, exclude=reserved)
    captions = {f.read_text().strip() for f in tmp_path.glob("*.txt")}
    assert len(list(tmp_path.glob("*.png"))) == 60 and not captions & set(reserved)


def test_style_strength_is_the_share_of_images_showing_the_look():
    rng = np.random.default_rng(0)
    plain = [render(sample_scene(rng)) for _ in range(10)]
    styled = [LOOKS["hatching"](image) for image in plain]
    assert style_strength(styled, "hatching") == 1.0
    assert style_strength(plain, "hatching") == 0.0
    assert style_strength(styled[:5] + plain[:5], "hatching") == 0.5


def test_variants_name_distinct_files_and_settings():
    from shira_diffusion.core.masks import DEFAULT_MASK
    from shira_diffusion.bundled.specs import VARIANTS, adapter_path, variant_settings

    # The bundled "shira" adapters share one Struct mask; "shira-slot" takes the style's own slot.
    assert variant_settings("shira") == {"adapter": "shira", "mask": DEFAULT_MASK, "mask_slot": "none"}
    assert variant_settings("shira-slot") == {"adapter": "shira", "mask": DEFAULT_MASK}
    assert variant_settings("shira-rand") == {"adapter": "shira", "mask": "rand", "mask_slot": "none"}
    assert variant_settings("lora") == {"adapter": "lora"}
    paths = {adapter_path("night", "toy-sd", v) for v in VARIANTS}
    assert len(paths) == len(VARIANTS)
    assert adapter_path("night", "toy-sd").name == "night.toy-sd.safetensors"
    assert adapter_path("night", "toy-sd", "lora").name == "night.toy-sd.lora.safetensors"
    try:
        variant_settings("shira-unknown")
    except ValueError as error:
        assert "shira-rand" in str(error)
    else:
        raise AssertionError("an unknown variant must be refused")


def test_recommended_setting_clears_the_nearer_target_by_the_widest_margin(tmp_path, monkeypatch):
    import json

    from shira_diffusion import catalog
    from shira_diffusion.bundled import recommend as recommended
    from shira_diffusion.bundled.recommend import MAX_WEIGHT, choose, choose_weight, search_weight

    row = lambda strength, drop: {"strength": strength, "content_drop": drop}  # noqa: E731
    assert choose({5.0: row(0.95, 0.02), 3.0: row(0.99, 0.01)}) == 3.0  # margins 5 and 9 points
    assert choose({5.0: row(0.95, 0.02), 3.0: row(0.97, 0.05)}) == 5.0  # equal margins: the higher guidance
    assert choose({5.0: row(0.91, 0.00), 2.0: row(0.94, 0.05)}) == 2.0  # met by a point loses to met by four
    # None meets: the smallest miss of the nearer target.
    assert choose({5.0: row(0.72, -0.02), 3.0: row(0.72, 0.08), 2.0: row(0.76, 0.12)}) == 2.0
    assert choose_weight({1.0: row(0.95, 0.05), 1.25: row(0.97, 0.05), 0.75: row(0.93, 0.03)}) == 1.0
    # Both miss by 1.45 points (float error puts one at -1.4499..., the other at -1.4500...1): a tie.
    assert choose_weight({1.2: row(0.9036, 0.1145), 1.15: row(0.8855, 0.0904)}) == 1.15
    # The weight search goes up while strength is the nearer target, and stops once the margin narrows.
    curve = {0.75: row(0.80, 0.00), 1.0: row(0.85, 0.02), 1.25: row(0.91, 0.03), 1.5: row(0.95, 0.09),
             1.75: row(0.97, 0.15)}
    tried = []
    measured = search_weight(lambda w: tried.append(w) or curve.get(w, row(0.92, 0.03)), curve[1.0], step=0.25)
    assert tried[:2] == [1.25, 1.5] and choose_weight({w: measured[w] for w in tried[:2]}) == 1.25  # 1.5: equal
    # margin, further from 1. Then half a step from the best towards its nearer target (strength at 1.25).
    assert tried[2:] == [1.375] and choose_weight(measured) == 1.375
    # Down where content is the nearer target; within the bounds (0.25 is below MIN_WEIGHT).
    curve = {1.0: row(1.0, 0.15), 0.75: row(0.99, 0.08), 0.5: row(0.97, 0.06), 0.375: row(0.96, 0.045)}
    assert set(measured := search_weight(curve.__getitem__, curve[1.0], step=0.25)) == set(curve)
    assert choose_weight(measured) == 0.375
    # A tie ends the search; the half step goes from the best, which between equals is the nearest 1.
    assert set(search_weight(lambda w: row(0.92, 0.05), row(0.92, 0.05))) == {1.0, 1.1, 1.05}
    rising = search_weight(lambda w: row(0.5 + w / 10, 0.0), row(0.6, 0.0))  # 0.1 steps up to the bound
    assert max(rising) == MAX_WEIGHT and choose_weight(rising) == MAX_WEIGHT
    # A saved run is chosen again without generating, and written into style.json.
    monkeypatch.setattr(catalog, "BUNDLED_ROOT", tmp_path)
    (tmp_path / "night").mkdir()
    (tmp_path / "night" / "style.json").write_text(json.dumps({"files": {"toy-sd/shira": {"file": "n.st", "params": 7}}}))
    saved = {"base": "toy-sd", "candidates": [5.0, 2.0], "adapters": {"night/shira": {
        "guidance": 5.0, "prompts": 50, "measured": {"5.0": row(0.5, 0.0), "2.0": row(0.95, 0.05)},
        "weights": {"1.0": row(0.5, 0.0), "1.5": row(0.7, 0.0)}}}}
    chosen = recommended.rechoose(json.loads(json.dumps(saved)))["adapters"]["night/shira"]
    assert chosen["guidance"] == 2.0 and chosen["weight"] == 1.0  # the weights were measured at 5, not 2
    entry = json.loads((tmp_path / "night" / "style.json").read_text())["files"]["toy-sd/shira"]
    assert entry["guidance"] == 2.0 and entry["params"] == 7 and entry["guidance_validation"]["2"]["strength"] == 0.95
    assert entry["weight_validation"] == {"guidance": 2.0, "1": row(0.95, 0.05)}
    saved["adapters"]["night/shira"].update(guidance=2.0, weights={"1.0": row(0.95, 0.05), "0.75": row(0.96, 0.0)})
    assert recommended.rechoose(json.loads(json.dumps(saved)))["adapters"]["night/shira"]["weight"] == 0.75
    # An adapter retrained since the saved run keeps what style.json has: the run measured its predecessor.
    retrained = {"files": {"toy-sd/shira": {"file": "n.st", "guidance": 3.0, "trials": {"seed 1, 1000 steps": {}}}}}
    (tmp_path / "night" / "style.json").write_text(json.dumps(retrained))
    assert recommended.rechoose(json.loads(json.dumps(saved)))["adapters"] == {}
    assert json.loads((tmp_path / "night" / "style.json").read_text()) == retrained


def test_every_bundled_adapter_carries_the_guidance_and_weight_its_validation_chose():
    """A rebuilt adapter drops its entry's guidance: run `styles recommend` for it again."""
    import json

    from shira_diffusion.bundled.recommend import (CANDIDATES, SEEDS_PER_PROMPT, choose, choose_weight, search_weight,
                                             validation_prompts)
    from shira_diffusion.bundled.specs import BUILT_BY_DEFAULT, STYLES

    for name in STYLES:
        files = {k: e.to_dict() for k, e in default_catalog().get(name).files.items()}
        for base in ("toy-sd", "toy-sdxl"):
            for variant in BUILT_BY_DEFAULT:
                validation = dict(files[f"{base}/{variant}"]["guidance_validation"])
                prompts, images = validation.pop("prompts"), validation.pop("images")
                measured = {float(g): m for g, m in validation.items()}
                # Every validation prompt of the style, at every seed, at every candidate guidance.
                assert (prompts, images) == (len(validation_prompts(name)), SEEDS_PER_PROMPT * prompts)
                assert set(measured) == set(CANDIDATES)
                entry = files[f"{base}/{variant}"]
                assert entry["guidance"] == choose(measured), (name, base, variant)
                # The weight: searched at that guidance as search_weight goes, from its measurement at 1.
                weights = {float(w): m for w, m in entry["weight_validation"].items() if w != "guidance"}
                assert entry["weight_validation"]["guidance"] == entry["guidance"]
                assert weights[1.0] == measured[entry["guidance"]]
                assert search_weight(weights.__getitem__, weights[1.0]) == weights, (name, base, variant)
                assert entry["weight"] == choose_weight(weights), (name, base, variant)
