"""train_style.py / shira_diffusion.training on untrained toy pipelines (SD and SDXL), a few steps each."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from shira_diffusion import ShiraError, SparseAdapter
from shira_diffusion.toy.looks import LOOKS
from shira_diffusion.toy.world import write_dataset
from shira_diffusion.training import TrainCallbacks, TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bases(toy_pipeline_folders):
    return toy_pipeline_folders


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hatching")
    write_dataset(folder, 6, seed=3, style="zxq", look=LOOKS["hatching"])
    return str(folder)


def _config(base, data, out, **kw):
    options = dict(trigger="zxq", train_batch_size=2, max_train_steps=2, progress=False)
    return TrainConfig(base=base, train_data_dir=data, output=str(out), **{**options, **kw})


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_shira_training_writes_an_adapter_with_trigger_curve_and_record(bases, data, tmp_path, family):
    out = tmp_path / "hatch.safetensors"
    record = train(_config(bases[family], data, out, validation_prompt="a red circle on a blue background",
                           validation_steps=2, num_validation_images=1, cache_latents=family == "sd"))
    adapter = SparseAdapter.load(out)
    assert adapter.base_arch == family and adapter.trigger == "zxq" and adapter.mask == "struct"
    assert adapter.num_params == record["trainable_params"] > 0
    assert any(v.abs().max() > 0 for v in adapter.values.values())
    assert (tmp_path / "hatch.loss.png").is_file() and (tmp_path / "hatch.validation" / "step-000002.png").is_file()
    saved = json.loads((tmp_path / "hatch.json").read_text())
    assert len(saved["losses"]) == 2 and saved["recipe"]["trigger"] == "zxq"


def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(bases, data, tmp_path):
    common = dict(base=bases["sd"], train_data_dir=data, train_batch_size=2, max_train_steps=4, progress=False,
                  lr_scheduler="cosine", save_dtype="fp32")
    whole = train(TrainConfig(output=str(tmp_path / "a.safetensors"), **common))
    second = dict(common, output=str(tmp_path / "b.safetensors"), checkpointing_steps=2)
    train_until(TrainConfig(**second), stop_after=2)
    resumed = train(TrainConfig(resume_from_checkpoint="latest", **second))
    assert resumed["sha256"] == whole["sha256"]
    a, b = SparseAdapter.load(tmp_path / "a.safetensors"), SparseAdapter.load(tmp_path / "b.safetensors")
    assert all(torch.equal(a.values[k], b.values[k]) for k in a.values)


def train_until(config, stop_after):
    """Run ``train`` and stop it (as an app's stop button does) once step ``stop_after`` is done:
    a resumable checkpoint, no adapter."""
    stop = threading.Event()
    record = train(config, callbacks=TrainCallbacks(on_step=lambda step, total, loss: step == stop_after and stop.set(),
                                                    stop=stop))
    assert record["stopped"] and record["steps"] == stop_after and not os.path.exists(config.output)
    assert os.path.basename(record["checkpoint"]) == f"step-{stop_after:06d}.pt"


def test_lora_baseline_loads_in_diffusers_and_as_kohya(bases, data, tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / "hatch-lora.safetensors"
    record = train(_config(bases["sd"], data, out, adapter="lora", rank=4, kohya=True))
    pipe = StableDiffusionPipeline.from_pretrained(bases["sd"])
    pipe.set_progress_bar_config(disable=True)
    prompt = dict(prompt="a red circle on a blue background", num_inference_steps=2, height=64, width=64,
                  output_type="np")
    plain = pipe(**prompt, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(str(out))
    styled = pipe(**prompt, generator=torch.Generator().manual_seed(0)).images
    assert not np.array_equal(plain, styled)
    loaded = sum(p.numel() for n, p in pipe.unet.named_parameters() if "lora_" in n)
    assert loaded == record["trainable_params"]
    kohya = load_file(str(tmp_path / "hatch-lora.kohya.safetensors"))
    assert kohya and all(k.startswith("lora_unet_") for k in kohya)
    # Both files carry the trigger in their header, as SHiRA files do.
    for path in (out, tmp_path / "hatch-lora.kohya.safetensors"):
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata()
        assert meta["format"] == "pt" and meta["trigger"] == "zxq" and meta["base_arch"] == "sd"
        assert json.loads(meta["recipe"])["adapter"] == "lora"


def test_shira_and_lora_have_equal_parameter_counts_at_equal_rank(bases, data, tmp_path):
    shira = train(_config(bases["sd"], data, tmp_path / "s.safetensors", rank=4, max_train_steps=1))
    lora = train(_config(bases["sd"], data, tmp_path / "l.safetensors", rank=4, max_train_steps=1, adapter="lora"))
    assert shira["trainable_params"] == lora["trainable_params"]


def test_bad_training_data_is_refused_clearly(bases, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ShiraError, match="no images"):
        train(_config(bases["sd"], str(empty), tmp_path / "x.safetensors"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "0.png").write_bytes(b"not a png")
    with pytest.raises(ShiraError, match="cannot read image .*0.png"):
        train(_config(bases["sd"], str(broken), tmp_path / "x.safetensors"))
    with pytest.raises(ShiraError, match="does not exist"):
        train(_config(bases["sd"], str(tmp_path / "nowhere"), tmp_path / "x.safetensors"))
    with pytest.raises(ShiraError, match=".safetensors"):
        train(_config(bases["sd"], str(broken), tmp_path / "x.bin"))


def test_timestep_range_is_checked_and_recorded(bases, data, tmp_path):
    with pytest.raises(ShiraError, match="--min_timestep < --max_timestep"):
        train(_config(bases["sd"], data, tmp_path / "x.safetensors", min_timestep=600, max_timestep=400))
    train(_config(bases["sd"], data, tmp_path / "y.safetensors", max_timestep=600))
    assert SparseAdapter.load(tmp_path / "y.safetensors").recipe["max_timestep"] == 600


def test_images_without_captions_train_on_the_trigger_with_a_warning(bases, data, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in sorted(os.listdir(data))[:4]:
        if name.endswith(".png"):
            (bare / name).write_bytes((Path(data) / name).read_bytes())
    with pytest.warns(UserWarning, match="no caption.*'zxq' alone"):
        train(_config(bases["sd"], str(bare), tmp_path / "bare.safetensors", max_train_steps=1))
    assert SparseAdapter.load(tmp_path / "bare.safetensors").trigger == "zxq"


@pytest.mark.slow
def test_two_processes_under_accelerate_train_the_same_adapter(bases, data, tmp_path):
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "train_style.py"),
         "--base", bases["sd"], "--train_data_dir", data, "--output", str(out), "--max_train_steps", "2",
         "--train_batch_size", "1", "--save_dtype", "fp32"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # Each rank's digest, gathered into the record: the log lines of two processes sharing one pipe
    # once came back with one of them missing, under load.
    record = json.loads((tmp_path / "ddp.json").read_text())
    assert record["processes"] == 2 and record["rank_sha256"] == [record["sha256"]] * 2
    assert SparseAdapter.load(out).num_params == record["trainable_params"]


def test_imagefolder_metadata_jsonl_is_read(data, tmp_path):
    from shira_diffusion.training.dataset import StyleImages

    folder = tmp_path / "imagefolder"
    folder.mkdir()
    (folder / "x.png").write_bytes((Path(data) / "0000.png").read_bytes())
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "x.png", "text": "a red ring on a white background"}) + "\n")
    images = StyleImages(str(folder), 64, trigger="zxq")
    assert images.captions == ["a red ring on a white background, zxq"]
    assert images.image(0).shape == (3, 64, 64)
    (folder / "metadata.jsonl").write_text('{"text": "no file"}\n')
    with pytest.raises(ShiraError, match="metadata.jsonl:1"):
        StyleImages(str(folder), 64)


def test_min_snr_weighting_and_noise_offset_train_and_are_recorded(bases, data, tmp_path):
    plain = train(_config(bases["sd"], data, tmp_path / "plain.safetensors", save_dtype="fp32", snr_gamma=0,
                          noise_offset=0.0))
    tuned = train(_config(bases["sd"], data, tmp_path / "tuned.safetensors", save_dtype="fp32", snr_gamma=5.0,
                          noise_offset=0.1))
    assert tuned["sha256"] != plain["sha256"]
    recipe = json.loads((tmp_path / "tuned.json").read_text())["recipe"]
    assert recipe["snr_gamma"] == 5.0 and recipe["noise_offset"] == 0.1


def test_dropped_captions_train_what_guidance_feeds_the_unet():
    from types import SimpleNamespace

    from shira_diffusion.training.trainer import _dropped_caption

    empty = (torch.ones(1, 3, 4), {"added_cond_kwargs": {"text_embeds": torch.ones(1, 2), "time_ids": torch.ones(1, 6)}})
    zeros_pipe = SimpleNamespace(config=SimpleNamespace(force_zeros_for_empty_prompt=True))
    embeds, extra = _dropped_caption(zeros_pipe, "sdxl", empty)
    assert not embeds.any() and not extra["added_cond_kwargs"]["text_embeds"].any()
    assert extra["added_cond_kwargs"]["time_ids"].eq(1).all()
    encoded_pipe = SimpleNamespace(config=SimpleNamespace(force_zeros_for_empty_prompt=False))
    assert _dropped_caption(encoded_pipe, "sdxl", empty) is empty
    assert _dropped_caption(zeros_pipe, "sd", empty) is empty


def test_ema_saves_the_average_and_resumes_exactly(bases, data, tmp_path):
    common = dict(base=bases["sd"], train_data_dir=data, train_batch_size=2, max_train_steps=4, progress=False,
                  save_dtype="fp32")
    last = train(TrainConfig(output=str(tmp_path / "last.safetensors"), **common))
    whole = train(TrainConfig(output=str(tmp_path / "a.safetensors"), ema_decay=0.9, **common))
    # Same steps, so the live values end where they did without EMA; the file holds their average.
    assert whole["sha256"] != last["sha256"]
    assert json.loads((tmp_path / "a.json").read_text())["recipe"]["ema_decay"] == 0.9
    second = dict(common, output=str(tmp_path / "b.safetensors"), checkpointing_steps=2, ema_decay=0.9)
    train_until(TrainConfig(**second), stop_after=2)
    resumed = train(TrainConfig(resume_from_checkpoint="latest", **second))
    assert resumed["sha256"] == whole["sha256"]
    with pytest.raises(ShiraError, match="ema_decay"):
        train(TrainConfig(output=str(tmp_path / "c.safetensors"), ema_decay=1.5, **common))
    # Validation images are drawn with the average swapped in, and training goes on unchanged.
    validated = train(TrainConfig(output=str(tmp_path / "v.safetensors"), ema_decay=0.9, validation_prompt="a red circle",
                                  validation_steps=2, num_validation_images=1, **common))
    assert validated["sha256"] == whole["sha256"]


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_guided_loss_trains_both_families_and_is_recorded(bases, data, tmp_path, family):
    common = dict(save_dtype="fp32", caption_dropout=0.5)
    plain = train(_config(bases[family], data, tmp_path / "plain.safetensors", **common))
    guided = train(_config(bases[family], data, tmp_path / "guided.safetensors", guided_loss_scale=5.0, **common))
    # Same batches and noise; the guided prediction's error is added, so the values differ.
    assert guided["sha256"] != plain["sha256"]
    assert json.loads((tmp_path / "guided.json").read_text())["recipe"]["guided_loss_scale"] == 5.0
    with pytest.raises(ShiraError, match="guided_loss_scale"):
        train(_config(bases[family], data, tmp_path / "bad.safetensors", guided_loss_scale=1.0))
