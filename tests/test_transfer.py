"""``shira transfer`` end to end on the bundled toy bases (toy-sd -> toy-sdxl) with tiny settings from a
SHiRA file, and its one-line errors (LoRA inputs: test_transfer_lora.py)."""

import json
import shutil

import pytest
import torch

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


# ------------------------------------------------------------------------------------ resuming
TINY = ["--synthetic", "2", "--max-draws", "2", "--calibration", "1", "--steps", "4", "--sample-steps", "1",
        "--slot", "2", "--report-images", "0"]


@pytest.fixture(scope="module")
def pipes():
    from shira_diffusion.bases import load_pipeline

    return load_pipeline("toy-sd"), load_pipeline("toy-sdxl")


def _tiny_config(seeds, out, **changes):
    from shira_diffusion.transfer import TransferConfig

    values = dict(adapter=str(adapter_path("hatching", "toy-sd")), source_base="toy-sd", target_base="toy-sdxl",
                  seed_data=str(seeds), out=str(out), synthetic=2, max_draws=2, calibration=1, steps=4,
                  sample_steps=1, slot=2, report_images=0, progress=False)
    return TransferConfig(**{**values, **changes})


@pytest.fixture
def teacher_calls(monkeypatch):
    """Every batch the teacher draws (with --report-images 0 the teacher draws nothing else)."""
    from shira_diffusion.transfer import pipeline

    calls, real = [], pipeline.teacher_images

    def counted(*args, **kwargs):
        calls.append(kwargs["seeds"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "teacher_images", counted)
    return calls


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_values(a, b):
    a, b = SparseAdapter.load(a), SparseAdapter.load(b)
    return a.values.keys() == b.values.keys() and all(torch.equal(a.values[k], b.values[k]) for k in a.values)


@pytest.fixture(scope="module")
def uninterrupted(seeds, pipes, tmp_path_factory):
    from shira_diffusion.transfer import transfer

    out = tmp_path_factory.mktemp("whole") / "whole.safetensors"
    report = transfer(_tiny_config(seeds, out), source_pipe=pipes[0], target_pipe=pipes[1])
    return out, report


class Stop(Exception):
    """What the test's progress callback raises to stop a transfer midway (as the app's Stop does)."""


def test_an_interrupted_transfer_resumes_without_drawing_again(seeds, pipes, uninterrupted, tmp_path, teacher_calls):
    """Stopped in the student's training (the app stops a run by raising in on_progress), the same
    call again draws nothing, continues the student from its checkpoint, and ends with the adapter
    and report an uninterrupted run makes; its working files are then gone."""
    from shira_diffusion.transfer import transfer

    out = tmp_path / "hatching.sdxl.safetensors"
    config = _tiny_config(seeds, out)

    def stop_in_student(done, total, stage):
        if stage == "student":
            raise Stop

    with pytest.raises(Stop):
        transfer(config, source_pipe=pipes[0], target_pipe=pipes[1], on_progress=stop_in_student)
    assert len(teacher_calls) == 2 and not out.exists()  # calibration, then the draws
    assert sorted(p.name for p in (tmp_path / "hatching.sdxl.checkpoints").iterdir()) == ["step-000001.pt"]
    work = tmp_path / "hatching.sdxl.transfer-work"
    assert sorted(_files(work)) == ["samples.json", "samples/0000.png", "samples/0001.png"]

    steps = []
    report = transfer(config, source_pipe=pipes[0], target_pipe=pipes[1],
                      on_progress=lambda done, total, stage: steps.append(stage))
    assert len(teacher_calls) == 2  # nothing drawn again
    assert steps[0] == "samples kept by the interrupted run" and steps.count("student") == 3  # steps 2, 3 and 4
    whole, expected = uninterrupted
    assert _same_values(out, whole)
    for key in ("filter", "kept_prompts", "prompts_sample", "student_data"):
        assert report[key] == expected[key], key
    assert report["student"]["steps"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hatching.sdxl.json", "hatching.sdxl.loss.png", "hatching.sdxl.safetensors", "hatching.sdxl.transfer.json"]


def test_ctrl_c_in_the_student_says_how_to_resume_and_the_same_command_does(seeds, uninterrupted, tmp_path,
                                                                             teacher_calls, monkeypatch, capsys):
    import signal

    from shira_diffusion.transfer import pipeline

    real = pipeline.train_student

    def ctrl_c_at_step_one(*args, on_step=None, **kwargs):
        def step(done, total, loss):
            if done == 1 and not kwargs.get("resume"):
                signal.raise_signal(signal.SIGINT)  # the trainer's handler: a checkpoint at the next step
            on_step(done, total, loss)
        return real(*args, on_step=step, **kwargs)

    monkeypatch.setattr(pipeline, "train_student", ctrl_c_at_step_one)
    out = tmp_path / "ink.safetensors"
    argv = ["transfer", "--adapter", str(adapter_path("hatching", "toy-sd")), "--from", "toy-sd", "--to", "toy-sdxl",
            "--seed-data", str(seeds), "--out", str(out), *TINY]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            main(argv)
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert stopped.value.code == 130 and err.strip().splitlines()[-1] == (
        "shira: interrupted at the student's step 1 of 4; the kept samples and the student's checkpoint are "
        "saved: run the same command to resume")
    assert not out.exists() and len(teacher_calls) == 2

    # Other settings: refused before anything loads or changes, naming what differs.
    kept = _files(tmp_path)
    _one_line_error(capsys, [*argv, "--steps", "5"], "holds an interrupted transfer with other settings "
                    "(steps 4 there, 5 here): run it again with those to resume it, or pass --overwrite")
    assert _files(tmp_path) == kept

    assert main(argv) == 0, capsys.readouterr().err
    assert len(teacher_calls) == 2 and _same_values(out, uninterrupted[0])
    assert not (tmp_path / "ink.checkpoints").exists() and not (tmp_path / "ink.transfer-work").exists()


def test_a_student_checkpoint_without_its_samples_is_refused_before_any_work(seeds, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    (tmp_path / "o.checkpoints").mkdir()
    (tmp_path / "o.checkpoints" / "step-000002.pt").write_bytes(b"an earlier version's checkpoint")
    kept = _files(tmp_path)
    _one_line_error(capsys, ["transfer", "--adapter", str(adapter_path("hatching", "toy-sd")), "--from", "toy-sd",
                             "--to", "toy-sdxl", "--seed-data", str(seeds), "--out", str(out), *TINY],
                    "holds a student's checkpoints but not the samples it learnt from")
    assert _files(tmp_path) == kept


def test_an_interrupted_folder_resumes_where_it_stopped(seeds, pipes, uninterrupted, tmp_path, teacher_calls,
                                                        monkeypatch):
    """The folder form: an adapter stopped after its student was written (in its report) is not
    trained again; one stopped in its student resumes from the checkpoint."""
    from shira_diffusion.transfer import pipeline
    from shira_diffusion.transfer.batch import transfer_folder

    adapters = tmp_path / "styles"
    adapters.mkdir()
    for name in ("a", "b"):
        shutil.copy(adapter_path("hatching", "toy-sd"), adapters / f"{name}.safetensors")
        shutil.copytree(seeds, adapters / name)
    template = _tiny_config(seeds, "", report_images=1)

    def fail_on_report(*args, **kwargs):
        raise Stop

    # a: stopped while writing its report, after the student; b is not reached.
    monkeypatch.setattr(pipeline, "side_by_side", fail_on_report)
    with pytest.raises(Stop):
        transfer_folder(str(adapters), str(tmp_path / "moved"), template, rank=0, world=1,
                        source_pipe=pipes[0], target_pipe=pipes[1])
    student = (tmp_path / "moved" / "a.safetensors").read_bytes()
    monkeypatch.undo()
    trained = []
    real_train = pipeline.train_student
    monkeypatch.setattr(pipeline, "train_student", lambda *a, **k: trained.append(a[2].out) or real_train(*a, **k))
    status = transfer_folder(str(adapters), str(tmp_path / "moved"), template, rank=0, world=1,
                             source_pipe=pipes[0], target_pipe=pipes[1])
    assert status == {"a": "done", "b": "done"}
    assert trained == [str(tmp_path / "moved" / "b.safetensors")]  # a's student was kept, not trained again
    assert (tmp_path / "moved" / "a.safetensors").read_bytes() == student
    assert _same_values(tmp_path / "moved" / "a.safetensors", uninterrupted[0])
    assert (tmp_path / "moved" / "a.transfer.png").is_file()
    leftovers = [p.name for p in (tmp_path / "moved").iterdir() if p.suffix in (".transfer-work", ".checkpoints")]
    assert leftovers == []


def test_a_disk_without_room_is_refused_before_any_work(seeds, tmp_path, monkeypatch, capsys):
    from shira_diffusion.training import outputs

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    kept = _files(tmp_path)
    out = str(tmp_path / "o.safetensors")
    _one_line_error(capsys, ["transfer", "--adapter", str(adapter_path("hatching", "toy-sd")), "--from", "toy-sd",
                             "--to", "toy-sdxl", "--seed-data", str(seeds), "--out", out],
                    "--out: not enough free space")
    _one_line_error(capsys, ["convert", str(adapter_path("hatching", "toy-sd", "lora")), "--base", "toy-sd", "--out",
                             out], "--out: not enough free space")
    assert _files(tmp_path) == kept
