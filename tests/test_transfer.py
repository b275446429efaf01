"""``shira transfer`` end to end on the bundled toy bases (toy-sd -> toy-sdxl) with tiny settings from a
SHiRA file, and its one-line errors (LoRA inputs: test_transfer_lora.py)."""

import json
import shutil

import pytest

from shira_diffusion.bundled.specs import adapter_path
from shira_diffusion.cli import main
from shira_diffusion.core.adapter import SparseAdapter
from shira_diffusion.core.masks import struct_slot_mask


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeds")
    images = adapter_path("hatching", "toy-sd").parent / "images"
    for name in ("0000", "0001"):
        for ext in (".png", ".txt"):
            shutil.copy(images / f"{name}{ext}", folder / f"{name}{ext}")
    return folder


def test_cli_transfers_a_shira_adapter_onto_its_slot(seeds, tmp_path, capsys):
    out = tmp_path / "hatching.sdxl.safetensors"
    code = main(["transfer", "--adapter", str(adapter_path("hatching", "toy-sd")), "--from", "toy-sd", "--to",
                 "toy-sdxl", "--seed-data", str(seeds), "--out", str(out), "--synthetic", "1", "--max-draws", "1",
                 "--calibration", "1", "--steps", "1", "--sample-steps", "1", "--slot", "2", "--report-images", "1"])
    assert code == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    adapter = SparseAdapter.load(out)
    assert adapter.base_arch == "sdxl" and adapter.trigger == "vrt"
    name = next(iter(adapter.shapes))
    expected = struct_slot_mask(adapter.shapes[name], len(adapter.indices[name]), 2)
    assert adapter.indices[name].long().tolist() == expected.tolist()  # the student's own Struct slot
    report = json.loads((tmp_path / "hatching.sdxl.transfer.json").read_text())
    assert report["filter"]["kept"] == 1 and report["filter"]["drawn"] == 1
    assert {"mmd_before", "mmd_after", "acceptance_rate"} <= set(report["filter"])
    assert report["target"]["kind"] == "shira" and report["source"]["format"] == "shira"
    assert report["student_data"] == {"synthetic": 1, "seeds": report["seed_images"]}  # the seeds teach too
    from PIL import Image

    sheet = Image.open(tmp_path / "hatching.sdxl.transfer.png")
    assert sheet.size[1] == 3 * 64  # source, student, new base alone


def _one_line_error(capsys, argv, needle):
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("shira: error:") and needle in err, err
    return err


def test_errors_are_one_line(seeds, tmp_path, capsys):
    shira_sd = str(adapter_path("hatching", "toy-sd"))
    args = ["--from", "toy-sd", "--to", "toy-sdxl", "--seed-data", str(seeds)]
    out = str(tmp_path / "o.safetensors")
    # an adapter made for another base than --from
    _one_line_error(capsys, ["transfer", "--adapter", str(adapter_path("hatching", "toy-sdxl")), *args, "--out", out],
                    "SDXL-family base, --from toy-sd is SD-family")
    # an empty seed folder
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, ["transfer", "--adapter", shira_sd, "--from", "toy-sd", "--to", "toy-sdxl",
                             "--seed-data", str(empty), "--out", out], "is empty")
    # a corrupt adapter file
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    _one_line_error(capsys, ["transfer", "--adapter", str(bad), *args, "--out", out], "bad.safetensors")
    # an existing --out, without --overwrite
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"")
    _one_line_error(capsys, ["transfer", "--adapter", shira_sd, *args, "--out", str(existing)],
                    "already exists; --overwrite replaces it")
    # an --out that cannot be written
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(capsys, ["transfer", "--adapter", shira_sd, *args, "--out", str(blocker / "x.safetensors")],
                    "not a folder")
    _one_line_error(capsys, ["transfer", "--adapter", shira_sd, *args, "--out", str(tmp_path / "x.png")],
                    ".safetensors")
    _one_line_error(capsys, ["transfer", "--adapter", shira_sd, "--from", "toy-sd", "--to", "toy-sdxl", "--out", out],
                    "--seed-data is required")
    _one_line_error(capsys, ["transfer", "--adapter", shira_sd, *args, "--out", out, "--generator",
                             str(tmp_path / "no-model")], "--generator")


def test_an_adapter_for_another_base_is_refused_once_the_base_is_loaded(seeds, tmp_path):
    from shira_diffusion.bases import ASSETS
    from shira_diffusion.errors import ArchitectureMismatchError
    from shira_diffusion.transfer import TransferConfig, transfer

    folder_base = str(ASSETS / "toy-sd")  # a folder: its family is known only once it is loaded
    for variant in ("shira", "lora"):
        config = TransferConfig(adapter=str(adapter_path("hatching", "toy-sdxl", variant)), source_base=folder_base,
                                target_base="toy-sdxl", seed_data=str(seeds), out=str(tmp_path / "x.safetensors"))
        with pytest.raises(ArchitectureMismatchError, match="does not fit --from"):
            transfer(config)
    assert not (tmp_path / "x.safetensors").exists()
