"""The style catalogue: bundled and user styles, typed style.json records, locked atomic writes."""

import json
import threading

import pytest

from shira_diffusion import catalog
from shira_diffusion.catalog import AdapterEntry, StyleCatalog, bank_key, check_style_name, sanitize_name
from shira_diffusion.errors import ShiraError

BUNDLED = catalog.BUNDLED_ROOT


@pytest.fixture
def user_catalog(tmp_path):
    return StyleCatalog(BUNDLED, tmp_path / "home" / "styles")


@pytest.fixture
def adapter_file():
    return BUNDLED / "hatching" / "hatching.toy-sd.safetensors"


def test_the_home_folder_follows_shira_home_then_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SHIRA_HOME", str(tmp_path / "h"))
    assert catalog.user_root() == tmp_path / "h" / "styles"
    monkeypatch.delenv("SHIRA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert catalog.shira_home() == tmp_path / "cache" / "shira-diffusion"


def test_bundled_styles_are_listed_with_typed_records(user_catalog):
    names = [r.name for r in user_catalog.list()]
    assert names == sorted(names) and {"hatching", "night", "pastel"} <= set(names)
    night = user_catalog.get("night")
    assert night.source == "bundled" and night.trigger == "kdx" and night.look == "night"
    entry = night.entry("toy-sd", "shira")
    assert isinstance(entry, AdapterEntry) and entry.file == "night.toy-sd.safetensors"
    assert isinstance(entry.guidance, float) and isinstance(entry.weight, float)
    assert "guidance_validation" in entry.measurements  # fields not named are kept as they are
    assert night.bases() == ["toy-sd", "toy-sdxl"] and night.thumbnail_path().is_file()
    assert user_catalog.list(base="no-such-base") == []


def test_a_record_round_trips_unchanged(tmp_path):
    """Reading a bundled record and writing it back gives the same JSON: nothing is lost."""
    original = json.loads((BUNDLED / "night" / "style.json").read_text())
    record = catalog.read_record(BUNDLED / "night", "bundled")
    assert json.loads(json.dumps(record.to_dict())) == original


def test_add_copies_the_adapter_into_the_users_styles_and_remove_deletes_it(user_catalog, adapter_file):
    record = user_catalog.add("my-ink", adapter_file, "toy-sd", description="mine", trigger="vrt")
    assert record.source == "user" and record.folder == user_catalog.user_root / "my-ink"
    assert record.adapter_path("toy-sd").read_bytes() == adapter_file.read_bytes()
    assert user_catalog.resolve_adapter("my-ink", "toy-sd") == record.adapter_path("toy-sd")
    assert "my-ink" in [r.name for r in user_catalog.list("toy-sd")]
    assert "my-ink" not in [r.name for r in user_catalog.list("toy-sdxl")]
    with pytest.raises(ShiraError, match="already has"):
        user_catalog.add("my-ink", adapter_file, "toy-sd")
    user_catalog.add("my-ink", adapter_file, "toy-sdxl")  # another base joins the same style
    assert user_catalog.get("my-ink").bases() == ["toy-sd", "toy-sdxl"]
    user_catalog.remove("my-ink")
    assert "my-ink" not in user_catalog and not record.folder.exists()


def test_user_styles_may_not_take_or_remove_bundled_ones(user_catalog, adapter_file):
    with pytest.raises(ShiraError, match="bundled style's name"):
        user_catalog.add("hatching", adapter_file, "toy-sd")
    with pytest.raises(ShiraError, match="bundled style"):
        user_catalog.remove("hatching")
    with pytest.raises(ShiraError, match="no style 'nope'"):
        user_catalog.get("nope")


@pytest.mark.parametrize("bad", ["", "Ink", "../evil", "a b", "x" * 65, "-lead", "ink/1", "ink.safetensors"])
def test_style_names_are_safe_folder_names(bad):
    with pytest.raises(ShiraError, match="style name"):
        check_style_name(bad)


def test_free_text_becomes_a_valid_name():
    assert sanitize_name("My Ink Style (v2).safetensors") == "my-ink-style-v2-safetensors"
    assert sanitize_name("../../etc/passwd") == "etc-passwd"
    assert sanitize_name("???") == "style"
    for text in ["My Ink", "../../x", "Ünïcode!"]:
        check_style_name(sanitize_name(text))


def test_resolve_adapter_names_what_is_missing(user_catalog, tmp_path):
    assert user_catalog.resolve_adapter("hatching", "toy-sdxl").name == "hatching.toy-sdxl.safetensors"
    with pytest.raises(ShiraError, match="no shira adapter for base 'toy-sd15'.*toy-sd, toy-sdxl"):
        user_catalog.resolve_adapter("hatching", "toy-sd15")
    with pytest.raises(ShiraError, match="no such file"):
        user_catalog.resolve_adapter(str(tmp_path / "gone.safetensors"), "toy-sd")
    with pytest.raises(ShiraError, match="styles: .*hatching"):
        user_catalog.resolve_adapter("inkk", "toy-sd")


def test_bank_keys_differ_for_files_that_share_a_name(tmp_path):
    a, b = tmp_path / "a" / "frame.safetensors", tmp_path / "b" / "frame.safetensors"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(b"x")
    assert bank_key(a) != bank_key(b) and bank_key(a).startswith("frame@")
    assert bank_key(a) == bank_key(tmp_path / "a" / ".." / "a" / "frame.safetensors")


def test_concurrent_entry_updates_are_all_kept(tmp_path):
    """Eight writers, one style: each entry lands (a lock around read-modify-write)."""
    styles = StyleCatalog(tmp_path / "bundled", tmp_path / "user")
    (tmp_path / "bundled" / "s").mkdir(parents=True)
    (tmp_path / "bundled" / "s" / "style.json").write_text(json.dumps({"files": {}}))

    def write(i):
        styles.update_entry("s", f"base{i}/shira", {"file": f"s.base{i}.safetensors", "params": i})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record = styles.get("s")
    assert sorted(record.files) == sorted(f"base{i}/shira" for i in range(8))
    assert not list((tmp_path / "bundled" / "s").glob("*.tmp"))  # no temporary file left behind


def test_malformed_records_are_refused_by_name_and_skipped_in_listings(tmp_path, caplog):
    root = tmp_path / "bundled"
    for name, text in {"good": json.dumps({"files": {}}), "broken": "{not json",
                       "typed": json.dumps({"files": {"toy-sd/shira": {"file": "x", "guidance": "high"}}})}.items():
        (root / name).mkdir(parents=True)
        (root / name / "style.json").write_text(text)
    styles = StyleCatalog(root, tmp_path / "user")
    with pytest.raises(ShiraError, match="broken.*not a readable style record"):
        styles.get("broken")
    with pytest.raises(ShiraError, match="'guidance' of x must be a number"):
        styles.get("typed")
    assert [r.name for r in styles.list()] == ["good"]
    assert "skipping style broken" in caplog.text
    with pytest.raises(ShiraError, match="needs a 'file'"):
        styles.update_entry("good", "toy-sd/shira", {"params": 3})


def test_written_files_are_readable_by_others(tmp_path):
    """Atomic writes must not leave private (0600) files: style.json and copied adapters are shared."""
    import os
    import stat

    from shira_diffusion.catalog import _copy_atomic, _write_json_atomic

    old = os.umask(0o022)
    try:
        _write_json_atomic(tmp_path / "style.json", {"a": 1})
        (tmp_path / "src.bin").write_bytes(b"x")
        _copy_atomic(tmp_path / "src.bin", tmp_path / "copy.bin")
    finally:
        os.umask(old)
    for name in ("style.json", "copy.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_a_mix_takes_each_styles_slot_adapter_where_it_has_one(user_catalog, adapter_file):
    """Alone: the default adapter. In a mix: the slot adapter of each bundled style that has one on
    the base; a style without one (pastel on toy-sdxl), or a file given as a path, as given."""
    alone = user_catalog.resolve_mix(["hatching"], "toy-sd")
    assert alone == [BUNDLED / "hatching" / "hatching.toy-sd.safetensors"]
    mix = user_catalog.resolve_mix(["hatching", "frame", str(adapter_file)], "toy-sd")
    assert mix == [BUNDLED / "hatching" / "hatching.toy-sd.slot.safetensors",
                   BUNDLED / "frame" / "frame.toy-sd.slot.safetensors", adapter_file]
    assert user_catalog.resolve_mix(["hatching", "pastel"], "toy-sdxl") == [
        BUNDLED / "hatching" / "hatching.toy-sdxl.slot.safetensors", BUNDLED / "pastel" / "pastel.toy-sdxl.safetensors"]
