"""The style catalogue: bundled and user styles, typed style.json records, locked atomic writes."""

import errno
import json
import shutil
import threading

import pytest
import torch

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


# ------------------------------------------------------------------ all or nothing (issue 26, items 5-8)
def _files(root):
    """Every file under ``root`` and its hash; lock files (empty, left by design) aside."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def test_two_adds_of_one_name_at_once_one_wins(tmp_path):
    """Synchronised adds of one name with different adapters: in every trial exactly one says
    added, the other 'already has', and the file stored is the winner's."""
    sources = {"a": BUNDLED / "hatching" / "hatching.toy-sd.safetensors",
               "b": BUNDLED / "night" / "night.toy-sd.safetensors"}
    for trial in range(20):
        styles = StyleCatalog(BUNDLED, tmp_path / f"trial{trial}")
        barrier, outcome = threading.Barrier(2), {}

        def add(who):
            barrier.wait()
            try:
                styles.add("ink", sources[who], "toy-sd")
                outcome[who] = "added"
            except ShiraError as exc:
                outcome[who] = str(exc)

        threads = [threading.Thread(target=add, args=(who,)) for who in sources]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [who for who, said in outcome.items() if said == "added"]
        assert len(winners) == 1, (trial, outcome)
        loser = "b" if winners == ["a"] else "a"
        assert "'ink' already has a shira adapter for toy-sd" in outcome[loser], outcome
        stored = styles.get("ink").adapter_path("toy-sd").read_bytes()
        assert stored == sources[winners[0]].read_bytes()
        assert sorted(_files(styles.user_root)) == ["ink/ink.toy-sd.safetensors", "ink/style.json"]


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("joining", [False, True], ids=["new style", "another base"])
def test_an_add_that_fails_before_its_record_leaves_nothing(user_catalog, adapter_file, monkeypatch, joining):
    """The disk fills between the adapter copy and style.json: no orphan adapter, nothing listed or
    loaded, the retry succeeds."""
    user_catalog.add("other", adapter_file, "toy-sd")
    if joining:
        user_catalog.add("ink", adapter_file, "toy-sd")
    base = "toy-sdxl" if joining else "toy-sd"
    sdxl = BUNDLED / "hatching" / f"hatching.{base}.safetensors"
    before, names = _files(user_catalog.user_root), user_catalog.names()
    with monkeypatch.context() as patch:
        patch.setattr(catalog, "_write_json_atomic", _full_disk)
        with pytest.raises(OSError, match="No space left"):
            user_catalog.add("ink", sdxl, base, thumbnail=BUNDLED / "hatching" / "thumbnail.png",
                             images=BUNDLED / "hatching" / "images")
    assert _files(user_catalog.user_root) == before and user_catalog.names() == names
    assert [p.name for p in user_catalog.user_root.iterdir() if p.name.startswith(".ink.adding")] == []
    assert "ink" not in [r.name for r in user_catalog.list(base)]
    with pytest.raises(ShiraError):
        user_catalog.resolve_adapter("ink", base)
    record = user_catalog.add("ink", sdxl, base)  # the retry: nothing in its way
    assert record.adapter_path(base).read_bytes() == sdxl.read_bytes()
    assert record.bases() == (["toy-sd", "toy-sdxl"] if joining else ["toy-sd"])


def test_what_a_killed_add_left_is_never_a_style_and_is_cleaned(user_catalog, adapter_file):
    """A killed add's staging folder, an earlier version's folder without style.json, an adapter
    file style.json does not name: none is listed or loaded, none blocks an add, remove cleans them
    and says what it deleted, or that there is nothing."""
    user_catalog.add("other", adapter_file, "toy-sd")
    root = user_catalog.user_root
    stage = root / ".ink.adding-dead1234"
    stage.mkdir()
    (stage / "ink.toy-sd.safetensors").write_bytes(adapter_file.read_bytes())
    (stage / "style.json").write_text(json.dumps({"files": {"toy-sd/shira": {"file": "ink.toy-sd.safetensors"}}}))
    (root / "ink").mkdir()
    (root / "ink" / "ink.toy-sd.safetensors").write_bytes(adapter_file.read_bytes()[:100])  # killed mid-copy
    other_files = {k: v for k, v in _files(root).items() if k.startswith("other/")}
    assert user_catalog.names() == [*sorted(p.name for p in BUNDLED.iterdir() if (p / "style.json").is_file()), "other"]
    assert "ink" not in user_catalog
    assert user_catalog.remove("ink") == [stage, root / "ink"]
    assert not stage.exists() and not (root / "ink").exists()
    with pytest.raises(ShiraError, match="no style 'ink', and nothing an unfinished add of it left"):
        user_catalog.remove("ink")
    # The same leftovers, swept by the next add instead.
    shutil.copytree(BUNDLED / "hatching" / "images", stage)
    (root / "ink").mkdir()
    (root / "ink" / "ink.toy-sd.safetensors").write_bytes(b"half")
    user_catalog.add("ink", adapter_file, "toy-sd")
    assert not stage.exists() and user_catalog.get("ink").bases() == ["toy-sd"]
    # An adapter file that style.json does not name (killed between copy and record): ignored;
    # a temporary of a copy killed midway: swept by the next add.
    (root / "ink" / "ink.toy-sdxl.safetensors").write_bytes(b"half")
    (root / "ink" / ".ink.toy-sdxl.safetensors.0badf00d.tmp").write_bytes(b"hal")
    assert "ink" not in [r.name for r in user_catalog.list("toy-sdxl")]
    with pytest.raises(ShiraError, match="no shira adapter for base 'toy-sdxl'"):
        user_catalog.resolve_adapter("ink", "toy-sdxl")
    sdxl = BUNDLED / "hatching" / "hatching.toy-sdxl.safetensors"
    assert user_catalog.add("ink", sdxl, "toy-sdxl").adapter_path("toy-sdxl").read_bytes() == sdxl.read_bytes()
    assert sorted(p.name for p in (root / "ink").iterdir()) == ["ink.toy-sd.safetensors", "ink.toy-sdxl.safetensors",
                                                               "style.json"]
    assert {k: v for k, v in _files(root).items() if k.startswith("other/")} == other_files


def test_a_folder_without_a_record_holding_foreign_files_is_refused_not_deleted(user_catalog, adapter_file):
    (user_catalog.user_root / "ink").mkdir(parents=True)
    (user_catalog.user_root / "ink" / "notes.txt").write_text("mine")
    with pytest.raises(ShiraError, match="ink has no style.json and holds files no add wrote \\(notes.txt\\)"):
        user_catalog.add("ink", adapter_file, "toy-sd")
    assert (user_catalog.user_root / "ink" / "notes.txt").read_text() == "mine"


def test_an_unreadable_record_is_one_line_before_any_change_and_force_removes_it(user_catalog, adapter_file):
    user_catalog.add("ink", adapter_file, "toy-sd")
    record = user_catalog.user_root / "ink" / "style.json"
    record.write_text("{oops")
    before = _files(user_catalog.user_root)
    for attempt in (lambda: user_catalog.add("ink", adapter_file, "toy-sdxl"),
                    lambda: user_catalog.add("ink", adapter_file, "toy-sd", overwrite=True),
                    lambda: user_catalog.remove("ink"),
                    lambda: user_catalog.update_entry("ink", "toy-sd/shira", {"params": 1})):
        with pytest.raises(ShiraError) as refused:
            attempt()
        message = str(refused.value)
        assert "\n" not in message and f"{record}: not a readable style record" in message
        assert _files(user_catalog.user_root) == before
    with pytest.raises(ShiraError, match="remove ink --force"):
        user_catalog.remove("ink")
    assert user_catalog.remove("ink", force=True) == [record.parent]
    assert not record.parent.exists() and "ink" not in user_catalog
    assert user_catalog.add("ink", adapter_file, "toy-sd").bases() == ["toy-sd"]


def test_remove_takes_only_style_names(user_catalog):
    with pytest.raises(ShiraError, match="style name"):
        user_catalog.remove("../home")


# ------------------------------------------------------------------ an adapter for its base (item 7)
def _sparse(path):
    from shira_diffusion.core.adapter import SparseAdapter

    return SparseAdapter.load(path)


def test_an_adapter_is_checked_against_its_base_without_loading_it(tmp_path):
    from safetensors.torch import save_file

    from shira_diffusion.base_check import check_adapter_for_base
    from shira_diffusion.errors import ArchitectureMismatchError

    sd, sdxl = (_sparse(BUNDLED / "hatching" / f"hatching.{b}.safetensors") for b in ("toy-sd", "toy-sdxl"))
    assert check_adapter_for_base(sd, "toy-sd") == "sd" and check_adapter_for_base(sdxl, "toy-sdxl") == "sdxl"
    with pytest.raises(ArchitectureMismatchError, match="base 'toy-sd': .*SDXL-family UNet, this UNet is SD-family"):
        check_adapter_for_base(sdxl, "toy-sd")
    with pytest.raises(ShiraError, match="unknown base 'toy-sd15'"):
        check_adapter_for_base(sd, "toy-sd15")
    with pytest.raises(ShiraError, match="'no-such-org/no-such-model' is not in the local Hugging Face cache"):
        check_adapter_for_base(sd, "no-such-org/no-such-model")
    # A folder base of the right family whose UNet has another shape for one adapted tensor.
    folder = tmp_path / "my-sd"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    name = sorted(sd.shapes)[0]
    shapes = {n: torch.zeros(s) for n, s in sd.shapes.items()}
    shapes[name] = torch.zeros(3, 3)
    save_file(shapes, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ArchitectureMismatchError, match=f"base '{folder}': .*{name}.*has shape"):
        check_adapter_for_base(sd, folder)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ArchitectureMismatchError, match="SD-family UNet, this UNet is SDXL-family"):
        check_adapter_for_base(sd, folder)
