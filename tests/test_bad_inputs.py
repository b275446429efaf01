"""Nothing lost, nothing silent: every bad input stops early with one line naming the culprit, and
no file that existed before is changed. Table-driven through the real entry points: ``main([...])``
in process (the same code the installed command runs), a few real subprocesses, and the Python API.
"""

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from shira_diffusion import ShiraError, StyleBank
from shira_diffusion.catalog import BUNDLED_ROOT
from shira_diffusion.cli import COMMANDS, main

from conftest import TINY_SD, make_adapter, make_unet

BUNDLED = Path(BUNDLED_ROOT)
PROMPT = "a red circle on a blue background"


def _png_bomb() -> bytes:
    """A valid 100000 x 100000 PNG header with almost no data: a decompression bomb for decoders."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _with_meta(source: Path, target: Path, **fields) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), "pt") as handle:
        meta = dict(handle.metadata())
    meta.update(fields)
    save_file(load_file(str(source)), str(target), metadata=meta)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Files to feed the commands: copies of bundled adapters, mangled ones, outputs that exist."""
    w = tmp_path_factory.mktemp("bad-inputs")
    frame = BUNDLED / "frame" / "frame.toy-sd.safetensors"
    (w / "a").mkdir()
    (w / "b").mkdir()
    shutil.copy(frame, w / "a" / "frame.toy-sd.safetensors")
    shutil.copy(BUNDLED / "pastel" / "pastel.toy-sd.safetensors", w / "b" / "frame.toy-sd.safetensors")  # same name
    data = frame.read_bytes()
    (w / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    _with_meta(frame, w / "shapes-list.safetensors", shapes="[[64, 64]]")
    _with_meta(frame, w / "recipe-string.safetensors", recipe='"fast"')
    _with_meta(frame, w / "recipe-number.safetensors", recipe="3")
    (w / "bomb.png").write_bytes(_png_bomb())
    _mask_bomb(w / "mask-bomb.safetensors")
    (w / "out.png").write_bytes(b"an image the user made earlier")
    (w / "batch").mkdir()
    (w / "batch" / "000.png").write_bytes(b"an earlier batch")
    (w / "prompts.txt").write_text(f"{PROMPT}\na white ring on a black background\n")
    (w / "empty.txt").write_text("\n  \n")
    (w / "notes.txt").write_text("a file where a folder should be")
    (w / "folder.png").mkdir()
    (w / "bad.json").write_text("{oops")
    (w / "list.json").write_text("[1, 2]")
    (w / "existing.safetensors").write_bytes(frame.read_bytes())
    assert main(["export-peft", str(frame), str(w / "peft")]) == 0
    _user_styles(w / "home" / "styles", frame)
    return w


def _mask_bomb(path: Path) -> None:
    """A format-2 header describing a mask of 1e8 entries, one value stored: refused before any mask is built."""
    import json

    import torch
    from safetensors.torch import save_file

    from shira_diffusion.core.adapter import FORMAT_NAME, SPEC_FORMAT_VERSION

    save_file({"w.shira_values": torch.zeros(1, dtype=torch.float16)}, str(path), metadata={
        "format": FORMAT_NAME, "format_version": str(SPEC_FORMAT_VERSION), "base_arch": "sd",
        "shapes": json.dumps({"w": [10000, 10000]}),
        "mask_spec": json.dumps({"strategy": "struct", "slot": None, "sizes": {"w": 100_000_000}})})
    assert path.stat().st_size < 400


def _user_styles(root: Path, adapter: Path) -> None:
    """$SHIRA_HOME/styles for the table: a style "kept" and a style "broken" whose style.json is not JSON."""
    from shira_diffusion.catalog import StyleCatalog

    StyleCatalog(BUNDLED, root).add("kept", adapter, "toy-sd")
    StyleCatalog(BUNDLED, root).add("broken", adapter, "toy-sd")
    (root / "broken" / "style.json").write_text("{oops")


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(args, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


A, B = "{w}/a/frame.toy-sd.safetensors", "{w}/b/frame.toy-sd.safetensors"
GEN = ["generate", "--base", "toy-sd", "--steps", "2"]
ONE = [*GEN, "--prompt", PROMPT]

# (arguments, exit status, text the one line must hold: the culprit)
CASES = {
    "guidance nan": ([*ONE, "--out", "{w}/n.png", "--guidance", "nan"], 2, "--guidance"),
    "guidance inf": ([*ONE, "--out", "{w}/n.png", "--guidance", "inf"], 2, "--guidance"),
    "guidance negative": ([*ONE, "--out", "{w}/n.png", "--guidance", "-1"], 2, "--guidance"),
    "guidance huge": ([*ONE, "--out", "{w}/n.png", "--guidance", "1e9"], 2, "--guidance"),
    "guidance word": ([*ONE, "--out", "{w}/n.png", "--guidance", "strong"], 2, "--guidance"),
    "seed above 2^64": ([*ONE, "--out", "{w}/n.png", "--seed", str(2**64)], 2, "--seed"),
    "seed negative": ([*ONE, "--out", "{w}/n.png", "--seed", "-1"], 2, "--seed"),
    "seed batch past 2^64": ([*GEN, "--prompts-file", "{w}/prompts.txt", "--out", "{w}/new", "--seed", str(2**64 - 1)],
                             1, "seed 18446744073709551615"),
    "steps 0": ([*ONE, "--out", "{w}/n.png", "--steps", "0"], 2, "--steps"),
    # Past the base's scheduler (1000 timesteps, steps_offset 1): refused from its config, before loading.
    "steps 1000": ([*ONE, "--out", "{w}/n.png", "--steps", "1000"], 1, "--steps 1000 is beyond the base's scheduler"),
    "steps 10^9": ([*ONE, "--out", "{w}/n.png", "--steps", "1000000000"], 1, "use at most 999"),
    "weight 1e9": ([*ONE, "--out", "{w}/n.png", "--style", A + "=1e9"], 1, "1e+09"),
    "weight 1e39": ([*ONE, "--out", "{w}/n.png", "--style", A + "=1e39"], 1, "1e+39"),
    "weight nan": ([*ONE, "--out", "{w}/n.png", "--style", A + "=nan"], 1, "nan"),
    "weight -inf": ([*ONE, "--out", "{w}/n.png", "--style", A + "=-inf"], 1, "-inf"),
    "weight word": ([*ONE, "--out", "{w}/n.png", "--style", A + "=strong"], 1, "strong"),
    "style twice": ([*ONE, "--out", "{w}/n.png", "--style", A + "=0.5", "--style", A + "=1"], 1, "given twice"),
    "one file by two paths": ([*ONE, "--out", "{w}/n.png", "--style", A, "--style", "{w}/b/../a/frame.toy-sd.safetensors"],
                              1, "given twice"),
    "bundled style twice": ([*ONE, "--out", "{w}/n.png", "--style", "frame", "--style", "frame=0.5"], 1, "given twice"),
    "unknown style": ([*ONE, "--out", "{w}/n.png", "--style", "nope"], 1, "nope"),
    "style a PNG bomb": ([*ONE, "--out", "{w}/n.png", "--style", "{w}/bomb.png"], 1, "bomb.png"),
    "style truncated": ([*ONE, "--out", "{w}/n.png", "--style", "{w}/truncated.safetensors"], 1, "truncated.safetensors"),
    "style shapes a list": ([*ONE, "--out", "{w}/n.png", "--style", "{w}/shapes-list.safetensors"], 1, "'shapes'"),
    "out without extension": ([*ONE, "--out", "{w}/picture"], 1, "picture"),
    "out not an image": ([*ONE, "--out", "{w}/picture.txt"], 1, ".txt"),
    "out exists": ([*ONE, "--out", "{w}/out.png"], 1, "out.png already exists"),
    "out a folder": ([*ONE, "--out", "{w}/folder.png", "--overwrite"], 1, "folder.png is a folder"),
    "out under a file": ([*ONE, "--out", "{w}/notes.txt/x.png"], 1, "notes.txt"),
    "out unwritable": ([*ONE, "--out", "/proc/shira-test/x.png"], 1, "/proc"),
    "batch over 000.png": ([*GEN, "--prompts-file", "{w}/prompts.txt", "--out", "{w}/batch"], 1, "000.png"),
    "batch into a file": ([*GEN, "--prompts-file", "{w}/prompts.txt", "--out", "{w}/out.png"], 1, "out.png is a file"),
    "prompts missing": ([*GEN, "--prompts-file", "{w}/missing.txt", "--out", "{w}/new"], 1, "missing.txt"),
    "prompts binary": ([*GEN, "--prompts-file", "{w}/bomb.png", "--out", "{w}/new"], 1, "bomb.png: not UTF-8"),
    "prompts empty": ([*GEN, "--prompts-file", "{w}/empty.txt", "--out", "{w}/new"], 1, "empty.txt: no prompts"),
    "info truncated": (["info", "{w}/truncated.safetensors"], 1, "truncated.safetensors"),
    "info PNG bomb": (["info", "{w}/bomb.png"], 1, "bomb.png"),
    "info shapes a list": (["info", "{w}/shapes-list.safetensors"], 1, "shapes-list.safetensors: header field 'shapes'"),
    "info recipe a string": (["info", "{w}/recipe-string.safetensors"], 1, "recipe-string.safetensors: header field 'recipe'"),
    "info recipe a number": (["info", "{w}/recipe-number.safetensors"], 1, "recipe-number.safetensors: header field 'recipe'"),
    "info a mask of 1e8 entries in 330 bytes": (["info", "{w}/mask-bomb.safetensors"], 1,
                                                "mask-bomb.safetensors: header field 'mask_spec'"),
    "info a folder": (["info", "{w}/a"], 1, "a: a folder"),
    "info missing": (["info", "{w}/missing.safetensors"], 1, "missing.safetensors"),
    "export onto a checkpoint": (["export-peft", A, "{w}/peft"], 1, "already exists"),
    "export into a file": (["export-peft", A, "{w}/notes.txt"], 1, "notes.txt is a file"),
    "export a bad adapter": (["export-peft", "{w}/truncated.safetensors", "{w}/peft2"], 1, "truncated.safetensors"),
    "import onto an adapter": (["import-peft", "{w}/peft", "{w}/existing.safetensors", "--arch", "sd15"], 1,
                               "existing.safetensors already exists"),
    "import not .safetensors": (["import-peft", "{w}/peft", "{w}/new.bin", "--arch", "sd15"], 1, "new.bin"),
    "import no checkpoint": (["import-peft", "{w}/a", "{w}/new.safetensors", "--arch", "sd15"], 1, "adapter_config.json"),
    "import bad unet config": (["import-peft", "{w}/peft", "{w}/new.safetensors", "--unet-config", "{w}/bad.json"], 1,
                               "bad.json"),
    "import unet config a list": (["import-peft", "{w}/peft", "{w}/new.safetensors", "--unet-config", "{w}/list.json"],
                                  1, "list.json"),
    "import for another arch": (["import-peft", "{w}/peft", "{w}/new.safetensors", "--arch", "sd15"], 1, "peft"),
    # An output name whose temporary name (".NAME.<8 hex>.tmp", beside it) is past NAME_MAX (255):
    # refused before any model loads, not after training.
    "train output name too long": (["train", "--base", "toy-sd", "--train_data_dir", "{w}/a", "--output",
                                    "{w}/" + "x" * 238 + ".safetensors"], 1, "--output: the file name"),
    "transfer out name too long": (["transfer", "--adapter", A, "--from", "toy-sd", "--to", "toy-sdxl", "--seed-data",
                                    "{w}/a", "--out", "{w}/" + "x" * 238 + ".safetensors"], 1, "--out: the file name"),
    "convert out name too long": (["convert", A, "--base", "toy-sd", "--out", "{w}/" + "x" * 238 + ".safetensors"], 1,
                                  "--out: the file name"),
    "unknown command": (["frobnicate"], 2, "frobnicate"),
    # the style catalogue ($SHIRA_HOME is {w}/home): refused before anything is copied
    "styles add for another family": (["styles", "add", "new", str(BUNDLED / "pastel" / "pastel.toy-sdxl.safetensors"),
                                       "--base", "toy-sd"], 1, "base 'toy-sd': pastel was made for an SDXL-family"),
    "styles add for an unknown base": (["styles", "add", "new", A, "--base", "toy-sd15"], 1, "unknown base 'toy-sd15'"),
    "styles add for a base not here": (["styles", "add", "new", A, "--base", "no-org/no-model"], 1,
                                       "'no-org/no-model' is not in the local Hugging Face cache"),
    "styles add to a corrupt record": (["styles", "add", "broken", str(BUNDLED / "pastel" / "pastel.toy-sdxl.safetensors"),
                                        "--base", "toy-sdxl"], 1,
                                       "broken/style.json: not a readable style record"),
    "styles add over a corrupt record": (["styles", "add", "broken", A, "--base", "toy-sd", "--overwrite"], 1,
                                         "remove broken --force"),
    "styles remove a corrupt record": (["styles", "remove", "broken"], 1, "broken/style.json"),
    "styles add an existing adapter": (["styles", "add", "kept", A, "--base", "toy-sd"], 1,
                                       "'kept' already has a shira adapter for toy-sd"),
    "styles remove nothing": (["styles", "remove", "ghost"], 1, "no style 'ghost'"),
    "styles remove a path": (["styles", "remove", "../home"], 1, "style name '../home'"),
}


def test_every_bad_input_is_one_line_and_changes_nothing(work, capsys, monkeypatch):
    """All cases in one test: the module's files are hashed once before and checked after each."""
    monkeypatch.setenv("SHIRA_HOME", str(work / "home"))  # the user's styles: part of what must not change
    before = _hashes(work)
    failures = []
    for case, (args, code, culprit) in CASES.items():
        got, err = _run([a.format(w=work) for a in args], capsys)
        lines = err.strip().splitlines()
        if got != code or len(lines) != 1 or culprit not in lines[0] or not lines[0].startswith("shira"):
            failures.append(f"{case}: exit {got} (want {code}), stderr {err!r}")
        elif _hashes(work) != before:
            failures.append(f"{case}: files changed")
    assert not failures, "\n".join(failures)


def test_styles_remove_is_the_way_out_of_a_corrupt_record_and_a_killed_add(tmp_path, monkeypatch, capsys):
    """``styles remove NAME --force`` deletes a style whose style.json is unreadable; ``styles
    remove`` deletes what a killed add left and says what, or that there is nothing; other styles
    stay as they were."""
    monkeypatch.setenv("SHIRA_HOME", str(tmp_path))
    frame, root = BUNDLED / "frame" / "frame.toy-sd.safetensors", tmp_path / "styles"
    _user_styles(root, frame)
    kept = _hashes(root / "kept")
    capsys.readouterr()
    assert main(["styles", "remove", "broken", "--force"]) == 0
    assert capsys.readouterr().out == f"removed broken: {root / 'broken'}\n" and not (root / "broken").exists()
    stage = root / ".ghost.adding-0badf00d"  # a killed add's staging folder
    stage.mkdir()
    (stage / "ghost.toy-sd.safetensors").write_bytes(frame.read_bytes()[:1000])
    assert main(["styles", "list"]) == 0 and "ghost" not in capsys.readouterr().out
    assert main(["styles", "remove", "ghost"]) == 0
    assert capsys.readouterr().out == f"removed ghost: {stage}\n" and not stage.exists()
    code, err = _run(["styles", "remove", "ghost"], capsys)
    assert code == 1 and err.startswith("shira: error: no style 'ghost', and nothing an unfinished add of it left")
    assert len(err.splitlines()) == 1 and "kept" in err
    assert main(["styles", "add", "broken", str(frame), "--base", "toy-sd"]) == 0  # the name is free again
    assert _hashes(root / "kept") == kept


def test_unexpected_errors_are_one_line_with_the_traceback_behind_debug(monkeypatch, capsys):
    def bug(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(COMMANDS, "bases", bug)
    code, err = _run(["bases"], capsys)
    assert code == 1 and err.splitlines() == [
        "shira: internal error: RuntimeError: boom second line (run with --debug for the traceback)"]
    for args, env in ((["--debug", "bases"], None), (["bases", "--debug"], None), (["bases"], "1")):
        if env:
            monkeypatch.setenv("SHIRA_DEBUG", env)
        code, err = _run(args, capsys)
        assert code == 1 and "Traceback" in err and err.splitlines()[-1].startswith("shira: internal error")
    monkeypatch.delenv("SHIRA_DEBUG")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(COMMANDS, "bases", interrupted)
    assert _run(["bases"], capsys) == (130, "shira: interrupted\n")

    def denied(args):
        raise PermissionError(13, "Permission denied", "/somewhere/out.png")

    monkeypatch.setitem(COMMANDS, "bases", denied)
    assert _run(["bases"], capsys) == (1, "shira: error: /somewhere/out.png: Permission denied\n")


# A few real processes: the installed entry point, its exit status and streams.
SUBPROCESS_CASES = {
    "guidance nan": ([*ONE, "--out", "{w}/n.png", "--guidance", "nan"], 2, "--guidance"),
    "weight 1e9": ([*ONE, "--out", "{w}/n.png", "--style", A + "=1e9"], 1, "1e+09"),
    "info PNG bomb": (["info", "{w}/bomb.png"], 1, "bomb.png"),
}


@pytest.mark.parametrize("case", sorted(SUBPROCESS_CASES))
def test_bad_inputs_through_the_command(work, case):
    args, code, culprit = SUBPROCESS_CASES[case]
    before = _hashes(work)
    result = subprocess.run([sys.executable, "-m", "shira_diffusion.cli", *[a.format(w=work) for a in args]],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1 and culprit in lines[0], result.stderr
    assert _hashes(work) == before


# ------------------------------------------------------------------ the Python API and real generation
@pytest.fixture(scope="module")
def pipe():
    from shira_diffusion.bases import load_pipeline

    pipe = load_pipeline("toy-sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _state(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


def test_two_files_with_one_name_are_two_styles_and_bad_mixes_are_refused(pipe, work):
    from shira_diffusion.generate import generate

    a, b = str(work / "a" / "frame.toy-sd.safetensors"), str(work / "b" / "frame.toy-sd.safetensors")
    base = _state(pipe.unet)
    prompt = f"{PROMPT}, sks, qzd"  # both triggers (frame's, pastel's): the prompt is the same in all three
    mixed = generate(pipe, [prompt], steps=2, styles=[(a, 0.0), (b, 1.0)])[0]
    only_b = generate(pipe, [prompt], steps=2, styles=[(b, 1.0)])[0]
    only_a = generate(pipe, [prompt], steps=2, styles=[(a, 1.0)])[0]
    assert np.array_equal(np.asarray(mixed), np.asarray(only_b))  # b's weight went to b
    assert not np.array_equal(np.asarray(mixed), np.asarray(only_a))
    bad = {
        "given twice": dict(styles=[(a, 1.0), (a, 0.5)]),
        "1e\\+09": dict(styles=[(a, 1e9)]),
        "guidance nan": dict(guidance_scale=float("nan")),
        "guidance -1": dict(guidance_scale=-1.0),
        "seed -1": dict(seed=-1),
        "seed 18446744073709551616": dict(seed=2**64),
        "seed must be an integer": dict(seed=1.5),
    }
    for message, kwargs in bad.items():
        with pytest.raises(ShiraError, match=message):
            generate(pipe, [PROMPT], steps=2, **kwargs)
    with pytest.raises(ShiraError, match="seed 18446744073709551615"):
        generate(pipe, [PROMPT, PROMPT], steps=2, seed=2**64 - 1)
    with pytest.raises(ShiraError, match="steps 1000 is beyond the base's scheduler .*at most 999"):
        generate(pipe, [PROMPT], steps=1000)  # a loaded pipeline: its own scheduler, before any image
    assert pipe.scheduler.num_inference_steps != 1000  # tried on a copy
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, base[key]), key


def test_overwrite_replaces_outputs_atomically(pipe, work, tmp_path, monkeypatch, capsys):
    from shira_diffusion import bases

    monkeypatch.setattr(bases, "load_pipeline", lambda *a, **k: pipe)
    out = tmp_path / "out.png"
    out.write_bytes(b"old")
    assert _run([*ONE, "--out", str(out), "--overwrite"], capsys)[0] == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "000.png").write_bytes(b"old")
    (batch / "keep.txt").write_text("mine")
    assert _run([*GEN, "--prompts-file", str(work / "prompts.txt"), "--out", str(batch), "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in batch.iterdir()) == ["000.png", "001.png", "keep.txt"]  # no temporaries left
    assert (batch / "000.png").read_bytes().startswith(b"\x89PNG") and (batch / "keep.txt").read_text() == "mine"
    jpg = tmp_path / "sub" / "new.jpg"  # a folder that does not exist yet, another format
    assert _run([*ONE, "--out", str(jpg)], capsys)[0] == 0 and jpg.read_bytes()[:2] == b"\xff\xd8"


def test_export_of_a_bundled_adapter_says_what_it_left_out(work, tmp_path, capsys):
    from shira_diffusion.core.adapter import SparseAdapter

    code, err = _run(["export-peft", str(BUNDLED / "frame" / "frame.toy-sd.safetensors"), str(tmp_path / "p")], capsys)
    adapter = SparseAdapter.load(BUNDLED / "frame" / "frame.toy-sd.safetensors")
    convs = [n for n, s in adapter.shapes.items() if len(s) == 4]
    assert code == 0 and err.splitlines() == [
        f"left out {len(convs)} Conv2d tensors ({sum(len(adapter.indices[n]) for n in convs):,} of "
        f"{adapter.num_params:,} entries): PEFT's SHiRA holds nn.Linear layers only"]
    config = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SHIRA" and config["r"] == 2 and len(config["target_modules"]) == len(adapter.shapes) - len(convs)
    first = (tmp_path / "p" / "adapter_model.safetensors").read_bytes()
    assert _run(["export-peft", str(BUNDLED / "pastel" / "pastel.toy-sd.safetensors"), str(tmp_path / "p"),
                 "--overwrite"], capsys)[0] == 0
    assert (tmp_path / "p" / "adapter_model.safetensors").read_bytes() != first


def test_bank_active_is_what_the_weights_are_after_a_refused_mix():
    unet = make_unet(TINY_SD, dtype=torch.float16)
    pristine = _state(unet)
    bank = StyleBank(unet)
    bank.add(make_adapter(unet, "ink", dtype=torch.float16))
    bank.add(make_adapter(unet, "grain", "rand", seed=3, density=0.05, dtype=torch.float16))
    bank.apply({"ink": 1.0})
    fused = _state(unet)
    for weight, message in ((1e39, "beyond what float32"), (1e6, "non-finite.*float16"), (float("inf"), "finite")):
        with pytest.raises(ShiraError, match=message):
            bank.apply({"ink": weight})  # refused before anything is written: the previous mix stays
        assert bank.active == {"ink": 1.0}
    assert all(torch.equal(v, fused[k]) for k, v in unet.state_dict().items())
    with pytest.raises(ShiraError, match="non-finite"):
        bank.apply({"ink": 1.0, "grain": 1e6})  # two mask groups: written one after the other
    assert bank.active == {}
    assert all(torch.equal(v, pristine[k]) for k, v in unet.state_dict().items())
