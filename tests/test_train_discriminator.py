"""``shira train --discriminator``: the transfer's real-vs-synthetic discriminator fit while the real
images exist, stored beside the adapter as JSON, read back exactly, and used by ``shira transfer``
(its report says "stored"). Tiny settings: 2 steps at 32 px, 3 synthetic samples of 1 denoising step."""

import json
import shutil

import numpy as np
import pytest

from shira_diffusion import ShiraError
from shira_diffusion.bundled.specs import adapter_path
from shira_diffusion.cli import main
from shira_diffusion.toy.looks import LOOKS
from shira_diffusion.toy.world import write_dataset
from shira_diffusion.training import StyleTrainer, TrainConfig, parse_flags
from shira_diffusion.transfer.discriminator import (FEATURES_VERSION, file_sha256, load_discriminator,
                                                    stored_discriminator)

FAST = dict(base="toy-sd", train_batch_size=1, max_train_steps=2, progress=False, cache_latents=True, resolution=32,
            trigger="zxq", discriminator=True, discriminator_samples=3, discriminator_sample_steps=1)
TINY_TRANSFER = ["--from", "toy-sd", "--to", "toy-sdxl", "--synthetic", "1", "--max-draws", "1", "--calibration", "1",
                 "--steps", "1", "--sample-steps", "1", "--report-images", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("disc-data")
    write_dataset(folder, 3, seed=11, style="zxq", look=LOOKS["hatching"])
    return str(folder)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("disc-run") / "ink.safetensors"
    trainer = StyleTrainer(TrainConfig(train_data_dir=data, output=str(out), **FAST))
    return trainer, trainer.train(), out


def test_a_run_with_the_flag_stores_the_discriminator_beside_the_adapter(trained):
    trainer, record, out = trained
    path = out.with_name("ink.discriminator.json")
    assert record["files"]["discriminator"] == str(path) and path.is_file()
    assert json.loads(out.with_name("ink.json").read_text())["files"]["discriminator"] == str(path)
    assert record["discriminator"]["real"] == 3 and record["discriminator"]["synthetic"] == 3
    stored = json.loads(path.read_text())
    assert stored["format"] == "shira-discriminator" and stored["features_version"] == FEATURES_VERSION
    assert stored["adapter_sha256"] == [file_sha256(str(out))] and stored["sample_steps"] == 1
    assert len(stored["weight"]) == len(stored["mean"]) == len(stored["scale"])
    assert "discriminator" not in json.loads(out.with_name("ink.json").read_text())["recipe"]


def test_the_stored_discriminator_predicts_as_the_fitted_one(trained):
    trainer, _, out = trained
    loaded, about = load_discriminator(str(out.with_name("ink.discriminator.json")))
    fitted = trainer.discriminator
    features = np.random.default_rng(0).normal(size=(16, len(fitted.weight))) * fitted.scale + fitted.mean
    assert np.array_equal(loaded.p_real(features), fitted.p_real(features))
    assert np.array_equal(loaded.weight, fitted.weight) and loaded.bias == fitted.bias
    assert about["real"] == 3 and about["base"] == "toy-sd"
    with pytest.raises(ShiraError, match="features per image"):
        loaded.p_real(features[:, :-1])


def test_transfer_uses_the_stored_one_unless_told_not_to(trained, data, tmp_path, capsys):
    _, _, out = trained
    student = tmp_path / "ink.sdxl.safetensors"
    assert main(["transfer", "--adapter", str(out), "--seed-data", data, "--out", str(student), *TINY_TRANSFER]) == 0
    report = json.loads((tmp_path / "ink.sdxl.transfer.json").read_text())
    assert report["filter"]["discriminator"] == "stored" and report["filter"]["calibration"] == 0
    assert report["filter"]["discriminator_file"] == str(out.with_name("ink.discriminator.json"))
    assert report["filter"]["drawn"] == 1  # no calibration draws: the stored one needs none
    again = tmp_path / "again.safetensors"
    assert main(["transfer", "--adapter", str(out), "--seed-data", data, "--out", str(again), *TINY_TRANSFER,
                 "--ignore-discriminator"]) == 0
    report = json.loads((tmp_path / "again.transfer.json").read_text())
    assert report["filter"]["discriminator"] == "trained from seeds" and report["filter"]["calibration"] == 1
    assert report["filter"]["discriminator_file"] is None


def test_a_discriminator_of_another_adapter_version_is_refused(trained, data, tmp_path, capsys):
    _, _, out = trained
    moved = tmp_path / "ink.safetensors"
    shutil.copy(adapter_path("hatching", "toy-sd"), moved)  # another adapter under the trained one's name
    shutil.copy(out.with_name("ink.discriminator.json"), tmp_path / "ink.discriminator.json")
    with pytest.raises(ShiraError, match="another version of ink.safetensors"):
        stored_discriminator(str(moved))
    capsys.readouterr()
    assert main(["transfer", "--adapter", str(moved), "--seed-data", data, "--out", str(tmp_path / "x.safetensors"),
                 *TINY_TRANSFER]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ignore-discriminator" in err, err
    assert stored_discriminator(str(adapter_path("hatching", "toy-sd"))) is None


def test_flags_and_checks(data, tmp_path):
    config = parse_flags(["--train_data_dir", data, "--output", "x.safetensors", "--discriminator",
                          "--discriminator_samples", "4"])
    assert config.discriminator and config.discriminator_samples == 4 and config.discriminator_sample_steps is None
    with pytest.raises(ShiraError, match="need --discriminator"):
        StyleTrainer(TrainConfig(train_data_dir=data, output=str(tmp_path / "x.safetensors"), discriminator_samples=4))
    (tmp_path / "y.discriminator.json").write_text("{}")
    with pytest.raises(ShiraError, match="y.discriminator.json already exists"):  # refused before training
        StyleTrainer(TrainConfig(train_data_dir=data, output=str(tmp_path / "y.safetensors"), **FAST))
    with pytest.raises(ShiraError, match="not a stored discriminator"):
        load_discriminator(str(tmp_path / "y.discriminator.json"))
