"""The bundled styles' workflow on one style built for one step in a scratch catalogue: build,
eval, recommend, retrain, each in its own test. Tests that change the catalogue work on their own
copy of it."""

import dataclasses
import json
import shutil

import pytest
from PIL import Image

from shira_diffusion import catalog
from shira_diffusion.bundled import build as build_module
from shira_diffusion.bundled import recommend, retrain
from shira_diffusion.bundled.specs import STYLES
from shira_diffusion.errors import ShiraError
from shira_diffusion.evaluate import eval_styles, format_styles_table
from shira_diffusion.toy.prompts import reserved_prompts

VARIANTS = ["shira", "shira-rand", "lora"]
CANDIDATES = (5.0, 2.0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """pastel with three variants on toy-sd, 1 training step each; a style recipe and a base recipe
    that differ from the defaults, so their precedence shows."""
    root = tmp_path_factory.mktemp("styles")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(catalog, "BUNDLED_ROOT", root)
        patch.setitem(STYLES, "pastel", dataclasses.replace(
            STYLES["pastel"], recipe={"lr_scheduler": "cosine", "noise_offset": 0.05},
            base_recipes={"toy-sd": {"noise_offset": 0.0}, "toy-sdxl": {"noise_offset": 0.2}}))
        build_module.build(["pastel"], ["toy-sd"], VARIANTS, steps=1)
    return root


@pytest.fixture(scope="module")
def recommended(built, tmp_path_factory):
    """A copy of ``built`` with guidance and weight recommended for shira and lora (2 prompts)."""
    root = tmp_path_factory.mktemp("recommended")
    shutil.copytree(built, root, dirs_exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(catalog, "BUNDLED_ROOT", root)
        chosen = recommend.recommend("toy-sd", ["pastel"], ["shira", "lora"], count=2, steps=2, candidates=CANDIDATES)
    return root, chosen


@pytest.fixture
def in_catalogue(monkeypatch, tmp_path):
    """Point the catalogue at a private copy of a built root."""
    def use(root):
        copy = tmp_path / "styles"
        shutil.copytree(root, copy)
        monkeypatch.setattr(catalog, "BUNDLED_ROOT", copy)
        return copy
    return use


def test_build_writes_the_training_set_thumbnail_and_an_entry_per_variant(built):
    folder = built / "pastel"
    assert len(list((folder / "images").glob("*.png"))) == build_module.IMAGES
    assert Image.open(folder / "thumbnail.png").size == (128, 128)
    record = catalog.StyleCatalog(built).get("pastel")
    assert (record.trigger, record.look) == ("qzd", "pastel")
    assert set(record.files) == {f"toy-sd/{v}" for v in VARIANTS}
    assert all(record.has_adapter("toy-sd", v) for v in VARIANTS)
    assert record.entry("toy-sd", "shira-rand").mask == "rand" and record.entry("toy-sd", "lora").mask is None


def test_the_base_recipe_overrides_the_style_recipe_for_every_variant(built):
    record = catalog.StyleCatalog(built).get("pastel")
    assert all(e.recipe["lr_scheduler"] == "cosine" and e.recipe["noise_offset"] == 0.0 for e in record.files.values())


def test_variants_are_compared_at_equal_parameter_count(built):
    assert len({e.params for e in catalog.StyleCatalog(built).get("pastel").files.values()}) == 1


def test_eval_styles_measures_every_variant_found_and_draws_a_sheet(built, in_catalogue, tmp_path):
    in_catalogue(built)
    result = eval_styles("toy-sd", ["pastel"], count=3, steps=2, sheet=str(tmp_path / "sheet.png"))
    sheet = Image.open(tmp_path / "sheet.png")  # one labelled row each: plain + three variants, 3 images
    assert sheet.height == 14 + 4 * 64 * 2 and sheet.width == 150 + 3 * 64 * 2
    assert set(result["styles"]) == {f"pastel/{v}" for v in VARIANTS}
    for row in result["styles"].values():
        assert 0 <= row["strength"] <= 1 and 0 <= row["content"] <= 1 and row["params"] > 0
    assert result["ceiling"]["pastel"]["strength"] == 1.0  # pastel survives the VAE
    table = format_styles_table(result)
    assert "shira-rand" in table and "100% /" in table


def test_eval_styles_refuses_more_prompts_than_are_reserved():
    with pytest.raises(ShiraError, match="100 held-out prompts"):
        eval_styles("toy-sd", ["pastel"], count=101)


def test_validation_images_avoid_training_captions_reserved_prompts_and_test_seeds(built, in_catalogue):
    in_catalogue(built)
    validation = recommend.validation_prompts("pastel")
    captions = catalog.default_catalog().get("pastel").training_captions()
    assert validation and not set(validation) & (captions | set(reserved_prompts()))
    shots = recommend.validation_images(validation)
    assert len(shots) == 2 * len(validation) == len({seed for _, seed in shots})  # every image its own seed
    assert not {seed for _, seed in shots} & set(range(len(reserved_prompts())))


def test_recommend_writes_the_chosen_guidance_and_weight_beside_the_build_entry(recommended):
    root, chosen = recommended
    result = chosen["adapters"]["pastel/shira"]
    assert result["images"] == 4
    entry = catalog.StyleCatalog(root).get("pastel").entry("toy-sd", "shira")
    assert entry.guidance == result["guidance"] in CANDIDATES and entry.weight == result["weight"]
    assert set(entry.measurements["guidance_validation"]) == {"prompts", "images", "5", "2"}
    assert entry.recipe  # the build's fields are kept
    weights = entry.measurements["weight_validation"]
    assert weights["guidance"] == entry.guidance and len(weights) >= 3
    assert "pastel/lora" in recommend.format_recommendations(chosen)


def test_generate_defaults_to_a_single_styles_recommended_guidance(recommended, monkeypatch):
    root, _ = recommended
    monkeypatch.setattr(catalog, "BUNDLED_ROOT", root)
    entry = catalog.default_catalog().get("pastel").entry("toy-sd", "shira")
    assert recommend.default_guidance([("pastel", 1.0)], "toy-sd") == entry.guidance
    assert recommend.default_guidance([("pastel", 1.0), ("night", 1.0)], "toy-sd") == 5.0  # mixes: the default


def test_reuse_guidance_measures_nothing_again(recommended, monkeypatch):
    root, _ = recommended
    monkeypatch.setattr(catalog, "BUNDLED_ROOT", root)
    entry = catalog.default_catalog().get("pastel").entry("toy-sd", "shira")
    monkeypatch.setattr(recommend, "measure_adapter", lambda *a, **k: pytest.fail("measured again"))
    again = recommend.recommend("toy-sd", ["pastel"], ["shira"], count=2, steps=2, candidates=CANDIDATES,
                                reuse_guidance=True)["adapters"]["pastel/shira"]
    assert (again["guidance"], again["weight"]) == (entry.guidance, entry.weight)
    with pytest.raises(ShiraError, match="without --reuse-guidance"):  # measured on other images
        recommend.recommend("toy-sd", ["pastel"], ["shira"], count=1, steps=2, candidates=CANDIDATES,
                            reuse_guidance=True)


def test_retrain_misses_only_leaves_an_adapter_that_meets_the_targets(recommended, in_catalogue, monkeypatch):
    in_catalogue(recommended[0])
    monkeypatch.setattr(retrain, "meets_targets", lambda measured: True)
    assert retrain.retrain("toy-sd", ["pastel"], ["shira"], seed=1, misses_only=True, count=2)["adapters"] == {}


@pytest.mark.parametrize("challenger_wins", [False, True])
def test_retrain_keeps_the_run_that_stands_better_on_validation(recommended, in_catalogue, monkeypatch,
                                                                challenger_wins):
    root = in_catalogue(recommended[0])
    incumbent = (root / "pastel" / "pastel.toy-sd.safetensors").read_bytes()
    order = iter([challenger_wins, not challenger_wins])  # challenger's margin first, incumbent's next
    monkeypatch.setattr(retrain, "margin", lambda measured: next(order))
    result = retrain.retrain("toy-sd", ["pastel"], ["shira"], seed=1, train_steps=2, count=2, steps=2,
                             candidates=CANDIDATES)
    entry = catalog.default_catalog().get("pastel").entry("toy-sd", "shira")
    kept = "seed 1, 2 steps" if challenger_wins else "seed 0, 1 steps"
    assert result["adapters"]["pastel/shira"]["kept"] == retrain.trial_label(entry.recipe) == kept
    assert set(entry.measurements["trials"]) == {"seed 0, 1 steps", "seed 1, 2 steps"}  # both runs' figures
    on_disk = (root / "pastel" / "pastel.toy-sd.safetensors").read_bytes()
    assert (on_disk == incumbent) != challenger_wins
    run_record = json.loads((root / "pastel" / "pastel.toy-sd.json").read_text())  # the kept run's record
    assert run_record["recipe"]["seed"] == entry.recipe["seed"]
    assert "seed 1, 2 steps" in retrain.format_retrain(result)


def test_retrain_refuses_a_run_already_tried(recommended, in_catalogue):
    in_catalogue(recommended[0])
    with pytest.raises(ShiraError, match="already"):
        retrain.retrain("toy-sd", ["pastel"], ["shira"], seed=0, train_steps=1, count=2)


def test_eval_at_the_recommended_setting_uses_each_adapters_guidance_and_weight(recommended, in_catalogue):
    in_catalogue(recommended[0])
    entry = catalog.default_catalog().get("pastel").entry("toy-sd", "shira")
    result = eval_styles("toy-sd", ["pastel"], ["shira", "lora"], count=2, steps=2, guidance_scale="recommended")
    assert (result["styles"]["pastel/shira"]["guidance"], result["styles"]["pastel/shira"]["weight"]) == \
        (entry.guidance, entry.weight)
    assert "5" in result["plain_by_guidance"] and "recommended" in format_styles_table(result)
