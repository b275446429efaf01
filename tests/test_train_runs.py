"""Driving a training run: a caller's pipeline (left as found), callbacks and stop, overwrite and
atomic writes, checkpoints that belong to their run, and Ctrl-C + resume, bit-exact."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from shira_diffusion import ShiraError, SparseAdapter
from shira_diffusion.bases import load_pipeline
from shira_diffusion.toy.looks import LOOKS
from shira_diffusion.toy.world import write_dataset
from shira_diffusion.training import StyleTrainer, TrainCallbacks, TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FAST = dict(train_batch_size=1, max_train_steps=4, progress=False, save_dtype="fp32", cache_latents=True,
            resolution=32, trigger="zxq")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs-data")
    write_dataset(folder, 3, seed=11, style="zxq", look=LOOKS["hatching"])
    return str(folder)


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs-other")
    write_dataset(folder, 3, seed=12, style="zxq", look=LOOKS["hatching"])
    return str(folder)


@pytest.fixture(scope="module")
def pipe(toy_pipeline_folders):
    pipe = load_pipeline(toy_pipeline_folders["sd"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _snapshot(unet):
    return ({k: v.clone() for k, v in unet.state_dict().items()},
            {n: type(m).__name__ for n, m in unet.named_modules()},
            {n: p.requires_grad for n, p in unet.named_parameters()}, unet.training)


def _same_unet(unet, snapshot):
    state, kinds, grads, training = snapshot
    now = unet.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    assert {n: type(m).__name__ for n, m in unet.named_modules()} == kinds
    assert {n: p.requires_grad for n, p in unet.named_parameters()} == grads and unet.training == training
    assert not any("forward" in m.__dict__ for m in unet.modules())  # no routed forward left behind
    assert not getattr(unet, "peft_config", None)


@pytest.mark.parametrize("adapter", ["shira", "lora"])
def test_a_callers_pipeline_trains_with_live_losses_stops_resumes_and_is_left_as_found(pipe, data, tmp_path,
                                                                                        adapter):
    config = dict(FAST, adapter=adapter, train_data_dir=data)
    before = _snapshot(pipe.unet)
    whole = train(TrainConfig(output=str(tmp_path / "whole.safetensors"), **config), pipeline=pipe)
    _same_unet(pipe.unet, before)

    seen, stop = [], threading.Event()

    def on_step(step, total, loss):
        seen.append((step, total, loss))
        if step == 2:
            stop.set()

    part = TrainConfig(output=str(tmp_path / "part.safetensors"), **config)
    stopped = train(part, pipeline=pipe, callbacks=TrainCallbacks(on_step=on_step, stop=stop))
    _same_unet(pipe.unet, before)
    assert [(s, t) for s, t, _ in seen] == [(1, 4), (2, 4)] and all(loss > 0 for _, _, loss in seen)
    assert stopped["stopped"] and stopped["steps"] == 2 and stopped["files"] == {}
    assert os.path.isfile(stopped["checkpoint"]) and not (tmp_path / "part.safetensors").exists()
    assert stopped["losses"] == [loss for _, _, loss in seen] == whole["losses"][:2]

    resumed = train(TrainConfig(output=part.output, resume_from_checkpoint="latest", **config), pipeline=pipe,
                    callbacks=TrainCallbacks(on_step=lambda *a: seen.append(a), stop=lambda: False))
    _same_unet(pipe.unet, before)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4]
    assert not resumed["stopped"] and resumed["sha256"] == whole["sha256"]
    assert (tmp_path / "whole.safetensors").is_file() and (tmp_path / "part.safetensors").is_file()
    if adapter == "shira":
        a, b = SparseAdapter.load(tmp_path / "whole.safetensors"), SparseAdapter.load(tmp_path / "part.safetensors")
        assert all(torch.equal(a.values[k], b.values[k]) for k in a.values)


def test_lora_training_is_seeded(pipe, data, tmp_path):
    first = train(TrainConfig(output=str(tmp_path / "a.safetensors"), adapter="lora", train_data_dir=data, **FAST),
                  pipeline=pipe)
    torch.rand(3)  # the global RNG moved on: no matter
    second = train(TrainConfig(output=str(tmp_path / "b.safetensors"), adapter="lora", train_data_dir=data, **FAST),
                   pipeline=pipe)
    assert first["sha256"] == second["sha256"]


def test_outputs_are_never_overwritten_without_asking_and_are_written_atomically(pipe, data, tmp_path):
    out = tmp_path / "style.safetensors"
    config = dict(FAST, train_data_dir=data, output=str(out), max_train_steps=1)
    train(TrainConfig(**config), pipeline=pipe)
    first = out.read_bytes()
    with pytest.raises(ShiraError, match="already exists; pass --overwrite"):
        StyleTrainer(TrainConfig(**config), pipeline=pipe)
    assert out.read_bytes() == first
    train(TrainConfig(**dict(config, overwrite=True, seed=1)), pipeline=pipe)
    assert out.read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["style.json", "style.loss.png", "style.safetensors"]  # no temp files


def test_checkpoints_belong_to_their_run(pipe, data, other_data, tmp_path):
    out = str(tmp_path / "run.safetensors")
    config = dict(FAST, train_data_dir=data, output=out)
    stop = threading.Event()
    record = train(TrainConfig(**config), pipeline=pipe,
                   callbacks=TrainCallbacks(on_step=lambda s, t, loss: stop.set(), stop=stop))
    checkpoint = record["checkpoint"]
    resume = dict(config, resume_from_checkpoint="latest")
    with pytest.raises(ShiraError, match=r"belongs to another run: learning_rate \(0.003 there, 0.001 here\), "
                                         r"max_train_steps \(4 there, 8 here\)"):
        StyleTrainer(TrainConfig(**dict(resume, learning_rate=1e-3, max_train_steps=8)))
    with pytest.raises(ShiraError, match="belongs to another run: the training data differ"):
        StyleTrainer(TrainConfig(**dict(resume, train_data_dir=other_data)))
    with pytest.raises(ShiraError, match="holds checkpoints of an earlier run"):
        StyleTrainer(TrainConfig(**dict(config, train_data_dir=other_data)))
    # Bookkeeping fields may change: a checkpoint cadence, progress display, the saved dtype.
    StyleTrainer(TrainConfig(**dict(resume, checkpointing_steps=2, save_dtype="fp16", progress=True)))
    # An explicit file, and a broken one.
    StyleTrainer(TrainConfig(**dict(config, resume_from_checkpoint=checkpoint)))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(Path(checkpoint).read_bytes()[:200])
    with pytest.raises(ShiraError, match=r"checkpoint .*broken.pt is corrupt or truncated") as info:
        StyleTrainer(TrainConfig(**dict(config, resume_from_checkpoint=str(broken))))
    assert "\n" not in str(info.value)
    # --overwrite starts anew: the earlier run's checkpoints are cleared.
    train(TrainConfig(**dict(config, train_data_dir=other_data, overwrite=True, max_train_steps=1)), pipeline=pipe)
    assert not os.path.exists(checkpoint)


def _flags(base, data, out):
    return ["--base", base, "--train_data_dir", data, "--output", out, "--max_train_steps", "24",
            "--train_batch_size", "1", "--cache_latents", "--resolution", "32", "--save_dtype", "fp32",
            "--trigger", "zxq"]


def test_ctrl_c_saves_a_checkpoint_that_resumes_bit_exactly(toy_pipeline_folders, data, other_data, tmp_path):
    import train_style

    base = toy_pipeline_folders["sd"]
    out = str(tmp_path / "ink.safetensors")
    checkpoints = tmp_path / "ink.checkpoints"
    # The same thread count as this process (the default): float sums split over threads differently
    # would differ in their last bits, and the comparison below is exact.
    # SIGINT back to its default in the child: a test runner started in the background (``cmd &``)
    # has it ignored, the child would inherit that, and Python then never installs its Ctrl-C handler.
    run = subprocess.Popen([sys.executable, str(ROOT / "train_style.py"), *_flags(base, data, out),
                            "--checkpointing_steps", "2"], stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list(checkpoints.glob("step-*.pt")) and run.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("train_style.py: interrupted at step") and "--resume_from_checkpoint latest" in last
    saved = sorted(checkpoints.glob("step-*.pt"))
    assert saved and int(saved[-1].stem.split("-")[1]) < 24 and not os.path.exists(out)

    # Another run's data: its checkpoints are refused, with or without resuming.
    for extra in (["--resume_from_checkpoint", "latest"], []):
        assert train_style.main([*_flags(base, other_data, out), *extra]) == 1
    assert os.path.exists(saved[-1])

    assert train_style.main([*_flags(base, data, out), "--resume_from_checkpoint", "latest"]) == 0
    whole = train(TrainConfig(base=base, train_data_dir=data, output=str(tmp_path / "whole.safetensors"),
                              max_train_steps=24, train_batch_size=1, cache_latents=True, resolution=32,
                              save_dtype="fp32", trigger="zxq", progress=False))
    a, b = SparseAdapter.load(out), SparseAdapter.load(tmp_path / "whole.safetensors")
    assert a.values.keys() == b.values.keys() and all(torch.equal(a.values[k], b.values[k]) for k in a.values)
    import json

    assert json.loads((tmp_path / "ink.json").read_text())["sha256"] == whole["sha256"]


def test_atomic_outputs_are_not_private(tmp_path):
    """Files written through atomic_path get the umask's mode, not mkstemp's 0600."""
    import os
    import stat

    from shira_diffusion.training.outputs import write_text

    old = os.umask(0o022)
    try:
        write_text(str(tmp_path / "run.json"), "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_write_cut_short_and_a_corrupt_checkpoint_get_one_verdict(pipe, data, tmp_path, caplog):
    """A kill during a checkpoint write leaves ``step-N.pt.tmp``: no checkpoint, for a resume and a
    plain rerun alike. A corrupt newest checkpoint gives way to the one before, with a warning, and
    the run still ends bit-exactly. All corrupt: one refusal both ways, nothing removed."""
    import logging

    config = dict(FAST, train_data_dir=data, output=str(tmp_path / "run.safetensors"), checkpointing_steps=1)
    whole = train(TrainConfig(**dict(config, output=str(tmp_path / "whole.safetensors"))), pipeline=pipe)
    stop = threading.Event()
    train(TrainConfig(**config), pipeline=pipe,
          callbacks=TrainCallbacks(on_step=lambda step, total, loss: step == 3 and stop.set(), stop=stop))
    folder = tmp_path / "run.checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002.pt", "step-000003.pt"]
    (folder / "step-000004.pt.tmp").write_bytes(b"PK\x03\x04 cut short")  # killed while writing the next
    kept = _files(folder)
    with pytest.raises(ShiraError, match="holds checkpoints of an earlier run: resume it with --resume_from"):
        StyleTrainer(TrainConfig(**config))
    resume = dict(config, resume_from_checkpoint="latest")
    assert StyleTrainer(TrainConfig(**resume)).resume_path == str(folder / "step-000003.pt")
    assert _files(folder) == kept

    newest = folder / "step-000003.pt"
    newest.write_bytes(newest.read_bytes()[:300])  # torn by a crash
    with caplog.at_level(logging.WARNING, logger="shira_diffusion"):
        trainer = StyleTrainer(TrainConfig(**resume), pipeline=pipe)
    assert trainer.resume_path == str(folder / "step-000002.pt")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step-000003.pt is corrupt or truncated" in w and "the one before" in w for w in warnings), warnings
    resumed = trainer.train()
    assert resumed["steps"] == 4 and resumed["sha256"] == whole["sha256"]

    # Only a write cut short (a kill during the first checkpoint): no checkpoint, both ways.
    fresh = dict(config, output=str(tmp_path / "fresh.safetensors"))
    partial = tmp_path / "fresh.checkpoints"
    partial.mkdir()
    (partial / "step-000001.pt.tmp").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ShiraError, match=r"no checkpoint in .*fresh.checkpoints \(only a write cut short"):
        StyleTrainer(TrainConfig(**dict(fresh, resume_from_checkpoint="latest")))
    assert (partial / "step-000001.pt.tmp").exists()
    train(TrainConfig(**dict(fresh, max_train_steps=1)), pipeline=pipe)  # a new run: the leftover cleared
    assert (tmp_path / "fresh.safetensors").is_file() and not (partial / "step-000001.pt.tmp").exists()

    # Every checkpoint corrupt: the same refusal with and without resuming; nothing removed.
    broken = tmp_path / "broken.checkpoints"
    broken.mkdir()
    for step in (1, 2):
        (broken / f"step-00000{step}.pt").write_bytes(b"not a checkpoint")
    kept = _files(broken)
    for extra in ({}, {"resume_from_checkpoint": "latest"}):
        with pytest.raises(ShiraError, match=r"broken.checkpoints holds checkpoints of an earlier run, none readable "
                                             r"\(step-000002.pt: .*\): pass --overwrite"):
            StyleTrainer(TrainConfig(**dict(config, output=str(tmp_path / "broken.safetensors"), **extra)))
    assert _files(broken) == kept


def test_outputs_that_cannot_be_written_are_refused_before_training(pipe, data, tmp_path, monkeypatch):
    """A name whose temporary name (".NAME.<8 hex>.tmp") is past the file system's limit, and a disk
    without room, are refused before training, not after its last step."""
    import shutil

    from shira_diffusion.training import outputs

    config = dict(FAST, train_data_dir=data)
    before = _files(tmp_path)
    with pytest.raises(ShiraError, match=r"--output: the file name x+\.\.\. is too long \(250 bytes; at most 241"):
        StyleTrainer(TrainConfig(**config, output=str(tmp_path / ("x" * 238 + ".safetensors"))))
    fits = str(tmp_path / ("y" * 228 + ".safetensors"))  # 240 bytes: fits, but not X.discriminator.json's
    StyleTrainer(TrainConfig(**config, output=fits))
    with pytest.raises(ShiraError, match="the files written beside it, with their temporary names, add 21"):
        StyleTrainer(TrainConfig(**config, output=fits, discriminator=True))

    usage = shutil.disk_usage(tmp_path)
    out = str(tmp_path / "style.safetensors")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(ShiraError, match=r"--output: not enough free space in .* \(1000 bytes free, about 16.0 MB"):
        StyleTrainer(TrainConfig(**config, output=out))
    # Room for the small files, not for the adapter and a checkpoint: refused once the adapter's size
    # is known, before the first step, and the caller's pipeline is left as found.
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage._replace(free=outputs.FREE_MARGIN + 1000))
    snapshot, steps = _snapshot(pipe.unet), []
    with pytest.raises(ShiraError, match="not enough free space"):
        train(TrainConfig(**config, output=out), pipeline=pipe,
              callbacks=TrainCallbacks(on_step=lambda *a: steps.append(a)))
    assert steps == []
    _same_unet(pipe.unet, snapshot)
    assert _files(tmp_path) == before
