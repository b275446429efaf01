import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from shira_diffusion import AdapterFileError, ArchitectureMismatchError, SparseAdapter, StyleBank
from shira_diffusion.core.adapter import FORMAT_VERSION

from conftest import forward, make_adapter, make_unet, unet_inputs


def test_round_trip_keeps_everything(sd_unet, tmp_path):
    adapter = make_adapter(sd_unet, name="ink", dtype=torch.float16)
    path = tmp_path / "ink.safetensors"
    adapter.save(path)
    loaded = SparseAdapter.load(path)
    assert loaded.shapes == adapter.shapes
    for name in adapter.shapes:
        assert torch.equal(loaded.indices[name], adapter.indices[name])
        assert torch.equal(loaded.values[name], adapter.values[name])
        assert loaded.indices[name].dtype == torch.int32
        assert loaded.values[name].dtype == torch.float16
    for field in ("base_arch", "mask", "trigger", "name", "recipe", "fingerprint", "num_params", "density"):
        assert getattr(loaded, field) == getattr(adapter, field), field


def test_metadata_is_in_the_safetensors_header(sd_unet, tmp_path):
    path = tmp_path / "a.safetensors"
    make_adapter(sd_unet).save(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert meta["format_version"] == str(FORMAT_VERSION)
    assert meta["base_arch"] == "sd"
    assert json.loads(meta["recipe"]) == {"seed": 0}
    assert float(meta["density"]) > 0


def _rewrite(path, out, edit_tensors=None, edit_meta=None):
    """Copy an adapter file, changing tensors and/or header metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = dict(handle.metadata())
    tensors = load_file(str(path))
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    save_file(tensors, str(out), metadata=meta)
    return out


@pytest.fixture
def saved(sd_unet, tmp_path):
    adapter = make_adapter(sd_unet)
    path = tmp_path / "good.safetensors"
    adapter.save(path)
    first = sorted(adapter.shapes)[0]
    return path, first, adapter


def _first_values(tensors, name):
    return tensors[name + ".shira_values"]


BAD_TENSOR_EDITS = {
    "missing values": (lambda t, n: t.pop(n + ".shira_values"), "missing values"),
    "missing indices": (lambda t, n: t.pop(n + ".shira_indices"), "missing indices"),
    "extra key": (lambda t, n: t.__setitem__("stray.weight.shira_values", torch.zeros(3)), "unexpected values key"),
    "foreign key": (lambda t, n: t.__setitem__("something_else", torch.zeros(3)), "unexpected tensor key"),
    "out of range": (lambda t, n: t[n + ".shira_indices"].__setitem__(-1, 10**7), "out of range"),
    "negative": (lambda t, n: t[n + ".shira_indices"].__setitem__(0, -5), "index -5 out of range"),
    "unsorted": (lambda t, n: t.__setitem__(n + ".shira_indices", t[n + ".shira_indices"].flip(0).contiguous()), "unsorted"),
    "duplicated": (lambda t, n: t[n + ".shira_indices"].__setitem__(1, t[n + ".shira_indices"][0]), "duplicated"),
    "nan": (lambda t, n: _first_values(t, n).__setitem__(3, float("nan")), "non-finite"),
    "inf": (lambda t, n: _first_values(t, n).__setitem__(3, float("inf")), "non-finite"),
    "length mismatch": (lambda t, n: t.__setitem__(n + ".shira_values", _first_values(t, n)[:-1].clone()), "indices but"),
    "int64 indices": (lambda t, n: t.__setitem__(n + ".shira_indices", t[n + ".shira_indices"].long()), "int32"),
    "integer values": (lambda t, n: t.__setitem__(n + ".shira_values", torch.zeros_like(_first_values(t, n), dtype=torch.int32)), "float"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSOR_EDITS))
def test_bad_tensors_are_rejected_with_the_tensor_named(saved, tmp_path, case):
    path, first, _ = saved
    edit, message = BAD_TENSOR_EDITS[case]
    bad = _rewrite(path, tmp_path / "bad.safetensors", edit_tensors=lambda t: edit(t, first))
    with pytest.raises(AdapterFileError, match=message) as info:
        SparseAdapter.load(bad)
    if case != "foreign key":
        assert "stray.weight" in str(info.value) or first in str(info.value)


@pytest.mark.parametrize(
    "case, edit, message",
    [
        ("unknown version", lambda m: m.__setitem__("format_version", "99"), "unknown format_version '99'"),
        ("no format", lambda m: m.pop("format"), "not a shira-diffusion adapter"),
        ("other format", lambda m: m.__setitem__("format", "pt"), "not a shira-diffusion adapter"),
        ("no shapes", lambda m: m.pop("shapes"), "shapes"),
        ("corrupt shapes", lambda m: m.__setitem__("shapes", "{oops"), "'shapes' is not valid JSON"),
        ("shapes a list", lambda m: m.__setitem__("shapes", "[1, 2]"), "'shapes' must be a JSON object.*got a list"),
        ("shapes a number", lambda m: m.__setitem__("shapes", "7"), "'shapes' must be a JSON object.*got a number"),
        ("shape a string", lambda m: m.__setitem__("shapes", '{"a.weight": "64x64"}'), "'shapes': tensor 'a.weight'"),
        ("shape of floats", lambda m: m.__setitem__("shapes", '{"a.weight": [1.5, 2]}'), "positive integers"),
        ("shape negative", lambda m: m.__setitem__("shapes", '{"a.weight": [-1, 2]}'), "positive integers"),
        ("recipe a string", lambda m: m.__setitem__("recipe", '"fast"'), "'recipe' must be a JSON object.*got a string"),
        ("recipe a number", lambda m: m.__setitem__("recipe", "3"), "'recipe' must be a JSON object.*got a number"),
        ("recipe a list", lambda m: m.__setitem__("recipe", "[]"), "'recipe' must be a JSON object.*got a list"),
        ("corrupt recipe", lambda m: m.__setitem__("recipe", "{"), "'recipe' is not valid JSON"),
        ("edited shapes", lambda m: m.__setitem__("base_fingerprint", "0" * 16), "fingerprint"),
        ("unknown arch", lambda m: m.__setitem__("base_arch", "sd3"), "unknown base_arch"),
    ],
)
def test_bad_headers_are_rejected(saved, tmp_path, case, edit, message):
    path, _, _ = saved
    bad = _rewrite(path, tmp_path / "bad.safetensors", edit_meta=edit)
    with pytest.raises(AdapterFileError, match=message) as info:
        SparseAdapter.load(bad)
    assert str(info.value).startswith(str(bad))  # the file is named


def test_save_is_atomic_and_refuses_to_overwrite_when_asked(saved, tmp_path, monkeypatch):
    from shira_diffusion.core import adapter as adapter_module
    from shira_diffusion.errors import OutputExistsError

    path, _, adapter = saved
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists"):
        adapter.save(path, overwrite=False)

    def fail(tensors, filename, metadata):
        open(filename, "wb").write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(adapter_module, "save_file", fail)
    with pytest.raises(OSError, match="No space"):
        adapter.save(path)
    assert path.read_bytes() == before  # the old file is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors"]  # no temporary left behind


def test_shape_recorded_differently_from_the_tensors_is_rejected(saved, tmp_path):
    path, first, adapter = saved

    def shrink(meta):
        shapes = json.loads(meta["shapes"])
        shapes[first] = [2, 2]
        meta["shapes"] = json.dumps(shapes)
        meta.pop("base_fingerprint")

    bad = _rewrite(path, tmp_path / "bad.safetensors", edit_meta=shrink)
    with pytest.raises(AdapterFileError, match=f"{first}.*out of range"):
        SparseAdapter.load(bad)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, I am not a safetensors file", struct.pack("<Q", 10**9) + b"{}", b"\x00" * 64],
    ids=["empty", "text", "huge header", "zeros"],
)
def test_not_safetensors(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(AdapterFileError, match="junk.safetensors"):
        SparseAdapter.load(path)


def test_truncated_file(saved, tmp_path):
    path, _, _ = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match="not a valid safetensors"):
        SparseAdapter.load(cut)


def test_missing_file(tmp_path):
    with pytest.raises(AdapterFileError, match="no such file"):
        SparseAdapter.load(tmp_path / "nope.safetensors")


def test_plain_safetensors_without_our_header(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(AdapterFileError, match="not a shira-diffusion adapter"):
        SparseAdapter.load(path)


def test_nothing_is_applied_from_a_bad_file(sd_unet, saved, tmp_path):
    path, first, _ = saved
    before = {k: v.clone() for k, v in sd_unet.state_dict().items()}
    bank = StyleBank(sd_unet)
    for case in ("nan", "out of range", "duplicated"):
        edit, _ = BAD_TENSOR_EDITS[case]
        bad = _rewrite(path, tmp_path / f"{case}.safetensors", edit_tensors=lambda t: edit(t, first))
        with pytest.raises(AdapterFileError):
            bank.load(bad)
    assert len(bank) == 0
    for key, value in sd_unet.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bank_rejects_bad_values_even_when_the_mask_is_known(sd_unet, saved, tmp_path):
    # The bank skips index scans for masks it holds; values must still be checked.
    path, first, _ = saved
    bank = StyleBank(sd_unet)
    bank.load(path, name="good")
    bank.apply({"good": 1.0})
    state = {k: v.clone() for k, v in sd_unet.state_dict().items()}
    edit, _ = BAD_TENSOR_EDITS["nan"]
    bad = _rewrite(path, tmp_path / "nan.safetensors", edit_tensors=lambda t: edit(t, first))
    with pytest.raises(AdapterFileError, match=f"{first}.*non-finite"):
        bank.load(bad, name="bad")
    assert bank.names == ["good"] and bank.active == {"good": 1.0}
    for key, value in sd_unet.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_wrong_architecture_is_refused_and_weights_untouched(sd_unet, sdxl_unet, tmp_path):
    adapter = make_adapter(sd_unet)
    before = {k: v.clone() for k, v in sdxl_unet.state_dict().items()}
    bank = StyleBank(sdxl_unet)
    with pytest.raises(ArchitectureMismatchError, match="SD-family UNet, this UNet is SDXL-family"):
        bank.add(adapter)
    for key, value in sdxl_unet.state_dict().items():
        assert torch.equal(value, before[key])


def test_same_family_other_shapes_are_refused(sd_unet):
    bigger = make_unet({**__import__("conftest").TINY_SD, "cross_attention_dim": 64})
    adapter = make_adapter(sd_unet)
    with pytest.raises(ArchitectureMismatchError, match=r"has shape \[.*\] in the adapter but \[.*\] in this UNet"):
        StyleBank(bigger).add(adapter)


def test_tensor_missing_from_the_unet(sd_unet):
    adapter = make_adapter(sd_unet)
    name = sorted(adapter.shapes)[0]
    adapter.shapes["not.a.layer.weight"] = adapter.shapes.pop(name)
    adapter.indices["not.a.layer.weight"] = adapter.indices.pop(name)
    adapter.values["not.a.layer.weight"] = adapter.values.pop(name)
    with pytest.raises(ArchitectureMismatchError, match="not.a.layer.weight.*does not exist"):
        StyleBank(sd_unet).add(adapter)


def test_repr_and_density(sd_unet):
    adapter = make_adapter(sd_unet, name="x")
    assert 0 < adapter.density < 1
    assert "x" in repr(adapter) and "params=" in repr(adapter)


def test_delta_matches_indices(sd_unet):
    adapter = make_adapter(sd_unet)
    name = sorted(adapter.shapes)[0]
    delta = adapter.delta(name)
    assert delta.shape == adapter.shapes[name]
    assert int((delta != 0).sum()) == int((adapter.values[name] != 0).sum())
    assert torch.equal(delta.flatten()[adapter.indices[name].long()], adapter.values[name])


def test_sdxl_round_trip(sdxl_unet, tmp_path):
    adapter = make_adapter(sdxl_unet, targets="all")
    adapter.save(tmp_path / "x.safetensors")
    loaded = SparseAdapter.load(tmp_path / "x.safetensors")
    assert loaded.base_arch == "sdxl"
    assert any(len(s) == 4 for s in loaded.shapes.values())  # Conv2d weights too
    bank = StyleBank(sdxl_unet)
    base = forward(sdxl_unet, unet_inputs(sdxl_unet))
    bank.add(loaded)
    bank.apply({loaded.name: 1.0})
    assert not torch.equal(forward(sdxl_unet, unet_inputs(sdxl_unet)), base)
    bank.restore()
    assert torch.equal(forward(sdxl_unet, unet_inputs(sdxl_unet)), base)


def test_a_struct_adapter_saved_with_its_mask_described_holds_values_only(tmp_path):
    """Format version 2: the Struct mask (shared or on a slot) is rebuilt from the header's
    description; the file is the values alone, as small as a LoRA's at equal parameter count."""
    import os

    from conftest import make_adapter, make_unet

    unet = make_unet()
    for slot in (None, 3):
        adapter = make_adapter(unet, name="d", slot=slot, rank=2, dtype=torch.float16)
        listed, described = tmp_path / f"listed{slot}.safetensors", tmp_path / f"described{slot}.safetensors"
        adapter.save(listed)
        adapter.with_mask_spec(slot).save(described)
        loaded = SparseAdapter.load(described)
        assert loaded.mask_spec["slot"] == slot and loaded.mask_spec["rank"] == 2
        assert all(torch.equal(loaded.indices[n], adapter.indices[n]) for n in adapter.indices)
        assert all(torch.equal(loaded.values[n], adapter.values[n]) for n in adapter.indices)
        assert os.path.getsize(described) < 0.5 * os.path.getsize(listed)
    rand = make_adapter(unet, name="r", mask="rand")
    assert rand.with_mask_spec(None).mask_spec is None  # not a Struct mask: indices stay listed
    wrong_slot = make_adapter(unet, name="w", slot=1, rank=2)
    assert wrong_slot.with_mask_spec(2).mask_spec is None


def test_a_described_mask_that_does_not_fit_is_refused(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from conftest import make_adapter, make_unet

    path = tmp_path / "d.safetensors"
    make_adapter(make_unet(), name="d").with_mask_spec(None).save(path)
    with safe_open(str(path), "pt") as handle:
        meta, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    for spec, message in [({"strategy": "rand"}, "struct mask"), ({"strategy": "struct", "slot": "x", "rank": 2},
                                                                     "slot 'x'"),
                          ({"strategy": "struct", "slot": None, "rank": 9}, "values")]:
        save_file(tensors, str(path), metadata={**meta, "mask_spec": json.dumps(spec)})
        with pytest.raises(AdapterFileError, match=message):
            SparseAdapter.load(path)


def _crafted_described_file(path, sizes: dict, shapes: dict, stored: int = 1, rank=None):
    """A format-2 header claiming ``sizes`` (or ``rank``) over ``shapes``, with ``stored`` values each."""
    from shira_diffusion.core.adapter import FORMAT_NAME, SPEC_FORMAT_VERSION

    spec = {"strategy": "struct", "slot": None, **({"rank": rank} if rank else {"sizes": sizes})}
    tensors = {name + ".shira_values": torch.zeros(stored, dtype=torch.float16) for name in shapes}
    save_file(tensors, str(path), metadata={
        "format": FORMAT_NAME, "format_version": str(SPEC_FORMAT_VERSION), "base_arch": "sd",
        "shapes": json.dumps(shapes), "mask_spec": json.dumps(spec)})
    return path


@pytest.mark.parametrize("shapes,sizes,rank,message", [
    ({"w": [10000, 10000]}, {"w": 100_000_000}, None, "stores 1 values"),  # the 330-byte upload of 1e8 entries
    ({"w": [46000, 46000]}, {"w": 2_000_000_000}, None, "stores 1 values"),  # 2e9: would ask for 16 GB
    ({"w": [40000, 40000]}, None, 10000, "stores 1 values"),  # a rank, not sizes
    ({"w": [20_000_000, 100]}, {"w": 1}, None, "far too large"),  # one value, a walk of 20 million rows
    ({"w": [100000, 100000]}, {"w": 1}, None, "int32"),
])
def test_a_crafted_header_is_refused_before_anything_is_built(tmp_path, shapes, sizes, rank, message):
    import resource
    import time

    from shira_diffusion.core.masks import DESCRIBED_MASK_CACHE

    path = _crafted_described_file(tmp_path / "x.safetensors", sizes, shapes, rank=rank)
    assert path.stat().st_size < 600
    cached = DESCRIBED_MASK_CACHE.nbytes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(AdapterFileError, match=message):
        SparseAdapter.load(path)
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # KB: nothing near the claim
    assert DESCRIBED_MASK_CACHE.nbytes == cached  # a refused file leaves nothing cached


def test_the_described_mask_cache_is_bounded_by_bytes():
    from shira_diffusion.core.masks import _TensorCache, described_struct_indices

    cache = _TensorCache(max_bytes=4000)
    for i in range(10):
        cache.get(("k", i), lambda: torch.zeros(250, dtype=torch.int32))  # 1000 bytes each
    assert cache.nbytes <= 4000 and len(cache._items) == 4
    assert ("k", 9) in cache._items and ("k", 0) not in cache._items  # the oldest went first
    cache.get(("big",), lambda: torch.zeros(2000, dtype=torch.int32))  # larger than the whole cache: not kept
    assert ("big",) not in cache._items
    first = described_struct_indices((64, 32), 96, 1)
    assert described_struct_indices((64, 32), 96, 1) is first  # still computed once per shape
