"""The app's pieces without a server: the thin app.py, the inspector, recipe PNGs, upload checks
(sizes, kinds, safe zips), and the service's request checks. Fast: no pipeline is loaded."""

import importlib.util
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file
import torch

from conftest import make_adapter
from shira_diffusion.app import recipe_png, uploads
from shira_diffusion.app.service import MAX_STYLES, _checked
from shira_diffusion.errors import ShiraError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIRA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_app_py_is_a_thin_entry_point(app):
    assert len((ROOT / "app.py").read_text().splitlines()) < 30
    assert hasattr(app.demo, "shira_service") and app.demo.shira_service.default_base == "toy-sd"


def test_inspect_shows_a_valid_adapter(app, sd_unet, tmp_path):
    path = tmp_path / "ink.safetensors"
    make_adapter(sd_unet, "ink").save(path)
    text, rows, meta = app.inspect_adapter(str(path))
    assert "ink" in text and "**SD**-family" in text and "`ink-style`" in text
    assert len(rows) == len(make_adapter(sd_unet).shapes)
    assert meta["base_arch"] == "sd"


def test_inspect_explains_a_bad_file(app, tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not an adapter")
    text, rows, meta = app.inspect_adapter(str(path))
    assert text.startswith("**This file cannot be used:**") and rows == [] and meta == {}


def test_a_lora_file_gets_the_conversion_message(app, tmp_path):
    for keys in (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"],
                 ["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"]):
        path = tmp_path / "style.safetensors"
        save_file({k: torch.zeros(2, 2) for k in keys}, str(path))
        text, _, _ = app.inspect_adapter(str(path))
        assert "LoRA file" in text and "shira convert" in text


def test_only_safetensors_adapters_are_accepted(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"x")
    with pytest.raises(ShiraError, match="only .safetensors"):
        uploads.check_adapter_upload(path)


def test_recipe_round_trips_through_a_png(tmp_path):
    recipe = recipe_png.make_recipe("toy-sd", [("hatching", 0.8), ("pastel", 0.6)], "a red circle on a blue background",
                                    7, 12, 3.5)
    path = tmp_path / "out.png"
    recipe_png.save_png(Image.new("RGB", (64, 64)), path, recipe)
    assert recipe_png.read_recipe(path) == recipe
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(ShiraError, match="no shira-diffusion recipe"):
        recipe_png.read_recipe(tmp_path / "plain.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    with pytest.raises(ShiraError, match="only PNGs"):
        recipe_png.read_recipe(tmp_path / "photo.jpg")


def _image(path, color=(200, 30, 30)):
    Image.fromarray(np.full((64, 64, 3), color, np.uint8)).save(path)
    return path


def test_training_folder_pairs_images_with_captions(tmp_path, home):
    a = _image(tmp_path / "A Photo.png")
    (tmp_path / "A Photo.txt").write_text("a red square on a blue background")
    b = _image(tmp_path / "b.jpg")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(a, "sub/c.png")
        z.writestr("sub/c.txt", "a green ring on a black background")
        z.writestr("__MACOSX/sub/._c.png", "junk")
    dest = uploads.new_work_folder("jobs") / "data"
    count, own = uploads.training_folder([a, tmp_path / "A Photo.txt", b, archive], dest, "a shape")
    assert (count, own) == (3, 2)
    assert sorted(p.name for p in dest.iterdir()) == ["a-photo.png", "a-photo.txt", "b.png", "b.txt",
                                                      "sub-c.png", "sub-c.txt"]
    assert (dest / "b.txt").read_text() == "a shape"
    assert str(dest).startswith(str(home))


def _colour_of(png) -> tuple:
    return tuple(int(c) for c in np.asarray(Image.open(png).convert("RGB"))[0, 0])


def test_training_uploads_whose_names_flatten_alike_all_keep_their_own_caption(tmp_path, home):
    """``a-b/x.png`` and ``a/b-x.png`` in a zip, ``My Photo.png`` and ``my-photo.png`` uploaded: four
    images, each trained once with its own caption; nothing vanishes, nothing trains twice."""
    colours = {"a-b/x": (250, 0, 0), "a/b-x": (0, 250, 0), "My Photo": (0, 0, 250), "my-photo": (250, 250, 0)}
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for member in ("a-b/x", "a/b-x"):
            z.write(_image(tmp_path / "tmp.png", colours[member]), f"{member}.png")
            z.writestr(f"{member}.txt", f"caption of {member}")
    uploaded = []
    for stem in ("My Photo", "my-photo"):
        uploaded.append(_image(tmp_path / f"{stem}.png", colours[stem]))
        (tmp_path / f"{stem}.txt").write_text(f"caption of {stem}")
        uploaded.append(tmp_path / f"{stem}.txt")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    dest = uploads.new_work_folder("jobs") / "data"
    assert uploads.training_folder([archive, *uploaded], dest) == (4, 4)
    pngs = sorted(dest.glob("*.png"))
    assert len(pngs) == 4 and len(list(dest.glob("*.txt"))) == 4
    by_caption = {p.with_suffix(".txt").read_text(): _colour_of(p) for p in pngs}
    assert by_caption == {f"caption of {stem}": colour for stem, colour in colours.items()}
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # uploads untouched


def test_two_captions_of_one_name_are_refused(tmp_path, home):
    """Uploaded from two folders, two ``x.txt`` cannot both caption ``x.png``: say so, write nothing."""
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir(), second.mkdir()
    (first / "x.txt").write_text("one caption")
    (second / "x.txt").write_text("another caption")
    dest = uploads.new_work_folder("jobs") / "data"
    with pytest.raises(ShiraError, match="two captions named x.txt"):
        uploads.training_folder([_image(first / "x.png"), first / "x.txt", second / "x.txt"], dest)
    assert not list(dest.glob("*"))


@pytest.mark.parametrize("entry", ["../evil.png", "/etc/evil.png", "a/../../evil.png", "C:/evil.png"])
def test_a_zip_entry_outside_its_folder_is_refused(tmp_path, home, entry):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.png", b"x")
        z.writestr(entry, b"x")
    dest = uploads.new_work_folder("jobs") / "data"
    with pytest.raises(ShiraError, match="outside the archive"):
        uploads.training_folder([archive], dest, "caption")
    assert not (tmp_path / "evil.png").exists() and not list(dest.glob("*.png"))


def test_training_uploads_are_checked(tmp_path, home):
    dest = uploads.new_work_folder("jobs") / "data"
    (tmp_path / "x.exe").write_bytes(b"MZ")
    with pytest.raises(ShiraError, match="only images"):
        uploads.training_folder([tmp_path / "x.exe"], dest)
    (tmp_path / "fake.png").write_bytes(b"not a png")
    with pytest.raises(ShiraError, match="not a readable image"):
        uploads.training_folder([tmp_path / "fake.png"], dest, "caption")
    with pytest.raises(ShiraError, match="no caption"):
        uploads.training_folder([_image(tmp_path / "a.png")], dest)
    with pytest.raises(ShiraError, match="no training images"):
        uploads.training_folder([], dest)


def test_requests_are_checked_before_any_work():
    with pytest.raises(ShiraError, match="prompt"):
        _checked([], "  ", 0, 20, 1)
    with pytest.raises(ShiraError, match="at most"):
        _checked([(f"s{i}", 1.0) for i in range(MAX_STYLES + 1)], "a red circle", 0, 20, 1)
    with pytest.raises(ShiraError, match="steps"):
        _checked([], "a red circle", 0, 0, 1)


def test_a_zip_with_a_link_or_too_many_files_is_refused(tmp_path, home):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo("evil.png")
        info.external_attr = (0o120777 << 16)  # a symbolic link
        z.writestr(info, "/etc/passwd")
    dest = uploads.new_work_folder("jobs") / "data"
    with pytest.raises(ShiraError, match="is a link"):
        uploads.training_folder([archive], dest, "caption")
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(2 * uploads.MAX_TRAINING_IMAGES + 1):
            z.writestr(f"{i}.txt", "x")
    with pytest.raises(ShiraError, match="at most"):
        uploads.training_folder([archive], dest, "caption")


def test_shira_base_chooses_the_default_base(monkeypatch):
    from shira_diffusion.app.service import AppService

    monkeypatch.setenv("SHIRA_BASE", "toy-sdxl")
    service = AppService()
    assert service.default_base == "toy-sdxl" and "toy-sd" in service.base_choices()


def test_gpu_decorator_is_spaces_gpu_where_importable(monkeypatch):
    from shira_diffusion.app import gpu

    def function():
        return 1

    monkeypatch.setattr(gpu, "spaces", None)
    assert gpu.gpu(duration=30)(function) is function
    calls = []

    class FakeSpaces:
        @staticmethod
        def GPU(duration):
            calls.append(duration)
            return lambda f: ("on-gpu", f)

    monkeypatch.setattr(gpu, "spaces", FakeSpaces)
    assert gpu.gpu(duration=30)(function) == ("on-gpu", function) and calls == [30]


# ---------------------------------------------------------------- the mix panel (Create tab)
def _fusion_result(base, pairs, lora=None, conflicting=()):
    """A small stored ``eval_fusion`` result: {method: {"a+b": {a: retention, b: retention}}}."""
    methods = {method: {"pairs": {pair: {"retention": retention, "content": 0.9} for pair, retention in rows.items()}}
               for method, rows in pairs.items()}
    return {"base": base, "prompts": 40, "weight": 1.0, "guidance_scale": 5.0,
            "conflicting": [list(p) for p in conflicting], "methods": methods}


@pytest.fixture
def tiny_mix(tmp_path, sd_unet, monkeypatch):
    """A catalogue of three styles on base "tiny": ink and wash on Struct slots 0 and 1 (format 2,
    mask described), mist on the shared Struct mask (indices listed); a fusion folder of its own."""
    from shira_diffusion.catalog import StyleCatalog

    catalog = StyleCatalog(tmp_path / "bundled", tmp_path / "user")
    for i, (name, slot) in enumerate([("ink", 0), ("wash", 1), ("mist", None)]):
        adapter = make_adapter(sd_unet, name, seed=i, rank=1, **({} if slot is None else {"slot": slot}))
        if slot is not None:
            adapter.recipe["mask_slot"] = slot
            adapter.with_mask_spec(slot)
            assert adapter.mask_spec["slot"] == slot
        adapter.save(tmp_path / f"{name}.safetensors")
        catalog.add(name, tmp_path / f"{name}.safetensors", "tiny")
    fusion = tmp_path / "fusion"
    fusion.mkdir()
    monkeypatch.setenv("SHIRA_FUSION_DIR", str(fusion))
    return catalog, fusion


def test_mix_panel_reads_stored_retention_for_the_matching_method(tiny_mix):
    import json

    from shira_diffusion.app.mix_panel import WeightSpaceCache, mix_report

    catalog, fusion = tiny_mix
    (fusion / "fusion-tiny.json").write_text(json.dumps(_fusion_result(
        "tiny", {"shira-slots": {"ink+wash": {"ink": 0.94, "wash": 0.81}},
                 "shira-shared": {"ink+wash": {"ink": 0.10, "wash": 0.10}},  # not these adapters' method
                 "lora": {"wash+ink": {"ink": 0.71, "wash": 0.5}}})))
    cache, steps = WeightSpaceCache(), []
    report = mix_report("tiny", ["ink", "wash"], [0.8, 1.0], catalog=catalog, cache=cache,
                        progress=lambda fraction, text: steps.append((fraction, text)))
    assert "**ink** keeps 94 % of its strength in this mix; as LoRAs 71 %" in report.text
    assert "**wash** keeps 81 % of its strength in this mix; as LoRAs 50 %" in report.text
    assert "measured on 40 prompts, weight 1 each (your sliders: ink 0.8, wash 1)" in report.text
    assert "**ink** and **wash** overlap on 0 % of their entries (they share no weight); AWOR 0.9" in report.text
    pair = report.data["pairs"]["ink+wash"]
    assert pair["method"] == "shira-slots" and pair["slots"] == [0, 1] and pair["status"] == "measured"
    assert pair["weight_space"]["jaccard"] == 0.0 and 0.9 < pair["weight_space"]["awor"] < 1.0  # rows still meet
    assert pair["retention"] == {"ink": 0.94, "wash": 0.81} and pair["lora_retention"] == {"ink": 0.71, "wash": 0.5}
    assert Image.open(report.image).size[0] > 300 and steps[0][0] == 0.0 and steps[-1][0] == 1.0

    # a second look is answered from the cache; a changed file is measured again
    assert cache.measured == 1
    again = mix_report("tiny", ["wash", "ink"], catalog=catalog, cache=cache)
    assert cache.measured == 1 and again.data["pairs"]["wash+ink"]["weight_space"] == pair["weight_space"]
    path = catalog.resolve_adapter("ink", "tiny")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    mix_report("tiny", ["ink", "wash"], catalog=catalog, cache=cache)
    assert cache.measured == 2


def test_mix_panel_on_a_shared_mask_a_mixed_pair_and_one_style(tiny_mix):
    import json

    from shira_diffusion.app.mix_panel import NOTHING_TO_MIX, WeightSpaceCache, mix_report

    catalog, fusion = tiny_mix
    cache = WeightSpaceCache()
    report = mix_report("tiny", ["ink", "mist", "wash"], catalog=catalog, cache=cache)
    assert "Not measured yet for this base; `shira eval fusion --base tiny --json` measures it" in report.text
    assert report.data["pairs"]["ink+mist"]["method"] is None and cache.measured == 3
    assert report.data["pairs"]["ink+mist"]["status"] == "not measured"

    (fusion / "fusion-tiny.json").write_text(json.dumps(_fusion_result(
        "tiny", {"shira-slots": {"ink+wash": {"ink": 0.9, "wash": 0.8}}}, conflicting=[("mist", "wash")])))
    report = mix_report("tiny", ["ink", "mist", "wash"], [1, 1, 1], catalog=catalog, cache=cache)
    assert cache.measured == 3  # every pair from the cache
    assert "**ink** keeps 90 % of its strength mixed with wash." in report.text
    assert "**ink** + **mist**: no stored method mixes adapters like these" in report.text
    assert "**mist** + **wash**: not measured: their looks erase each other" in report.text
    assert "your sliders" not in report.text

    for styles in ([], ["ink"], ["ink", "ink"]):
        one = mix_report("tiny", styles, catalog=catalog, cache=cache)
        assert one.text == NOTHING_TO_MIX and one.image is None
    with pytest.raises(ShiraError, match="no style 'nope'"):
        mix_report("tiny", ["ink", "nope"], catalog=catalog, cache=cache)
    with pytest.raises(ShiraError, match="at most"):
        mix_report("tiny", ["a", "b", "c", "d", "e"], catalog=catalog, cache=cache)


def test_mix_panel_reads_the_repository_fusion_folder_by_default(monkeypatch):
    from shira_diffusion.app import mix_panel

    monkeypatch.delenv("SHIRA_FUSION_DIR", raising=False)
    assert mix_panel.fusion_dir() == ROOT / "assets" / "fusion"
    assert mix_panel.stored_path("toy-sd") == ROOT / "assets" / "fusion" / "fusion-toy-sd.json"
    assert mix_panel.mix_method(None, None) == "shira-shared" and mix_panel.mix_method(0, 3) == "shira-slots"
    assert mix_panel.mix_method(None, 2) is None
