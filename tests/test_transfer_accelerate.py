"""A folder transfer (``shira transfer --adapters DIR --out FOLDER``) under a real two-process
``accelerate launch``: each process takes its own adapter, and a rerun skips both.

Launched as the two-process training test launches (``--multi_gpu``, which torchrun runs as CPU
processes where there is no GPU): ``accelerate launch --cpu --num_processes 2`` starts a single
process without a rank on a CPU-only machine (accelerate's simple launcher). Tiny settings: one
synthetic sample, one calibration sample, one denoising step, one student step, no report sheet."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from shira_diffusion.bundled.specs import adapter_path

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "shira_diffusion.cli"]
TINY = ["--from", "toy-sd", "--to", "toy-sdxl", "--synthetic", "1", "--max-draws", "1", "--calibration", "1",
        "--steps", "1", "--sample-steps", "1", "--report-images", "0"]


@pytest.fixture
def folder(tmp_path):
    """Two adapters (copies of a bundled toy-sd style) with two seed images each."""
    folder = tmp_path / "adapters"
    folder.mkdir()
    images = adapter_path("hatching", "toy-sd").parent / "images"
    for name in ("ink", "wash"):
        shutil.copy(adapter_path("hatching", "toy-sd"), folder / f"{name}.safetensors")
        (folder / name).mkdir()
        for stem in ("0000", "0001"):
            for ext in (".png", ".txt"):
                shutil.copy(images / f"{stem}{ext}", folder / name / f"{stem}{ext}")
    return folder


def _launch(folder, out, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*LAUNCH, "transfer", "--adapters", str(folder), "--out", str(out), *TINY],
                          capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def test_two_processes_share_a_folder_and_a_rerun_skips_it(folder, tmp_path):
    out = tmp_path / "moved"
    started = time.time()
    run = _launch(folder, out, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    processes = {}
    for name in ("ink", "wash"):
        assert (out / f"{name}.safetensors").is_file()
        report = json.loads((out / f"{name}.transfer.json").read_text())
        processes[name] = report["settings"]["process"]
        assert report["adapter"] == str(folder / f"{name}.safetensors")
    # Adapters are taken in name order, adapter i by process i % 2.
    assert processes["ink"]["rank"] == 0 and processes["wash"]["rank"] == 1, processes
    assert processes["ink"]["world"] == processes["wash"]["world"] == 2
    assert processes["ink"]["pid"] != processes["wash"]["pid"]
    assert "ink: done" in run.stdout and "wash: done" in run.stdout, run.stdout
    first = time.time() - started

    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    run = _launch(folder, out, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ink: skipped" in run.stdout and "wash: skipped" in run.stdout, run.stdout
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing rewritten
    print(f"two-process folder transfer {first:.0f} s, rerun {time.time() - started - first:.0f} s")
