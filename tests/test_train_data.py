"""Training data: every Pillow mode read as the image it shows, bombs and bad captions refused by
name, in-memory pairs, and trigger inference."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shira_diffusion import ShiraError, SparseAdapter
from shira_diffusion.bases import load_pipeline
from shira_diffusion.toy.looks import LOOKS
from shira_diffusion.toy.world import write_dataset
from shira_diffusion.training import StyleImages, TrainConfig, infer_trigger, load_training_data, to_rgb, train

FAST = dict(train_batch_size=1, max_train_steps=2, progress=False, save_dtype="fp32", cache_latents=True,
            resolution=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data-modes")
    write_dataset(folder, 3, seed=7, style="zxq", look=LOOKS["hatching"])
    return str(folder)


@pytest.fixture(scope="module")
def pipe(toy_pipeline_folders):
    pipe = load_pipeline(toy_pipeline_folders["sd"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gray16(values8: np.ndarray) -> Image.Image:
    return Image.fromarray(values8.astype(np.uint16) * 257)  # mode I;16, the same picture in 16 bits


def test_every_pillow_mode_becomes_the_rgb_image_it_shows():
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64 x 64, 0..252
    expected = np.repeat(ramp[..., None], 3, axis=2)
    sixteen = _gray16(ramp)
    assert sixteen.mode == "I;16"
    assert np.array_equal(np.asarray(to_rgb(sixteen)), expected)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(ramp.astype(np.int32) * 257, "I"))), expected)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(ramp.astype(np.float32) / 255, "F"))), expected)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(ramp, "L"))), expected)
    # Transparency lies on white: a clear pixel is white, an opaque one keeps its color.
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 10, 10, 255)
    rgb = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert tuple(rgb[0, 0]) == (200, 10, 10) and tuple(rgb[1, 1]) == (255, 255, 255)
    assert tuple(np.asarray(to_rgb(Image.fromarray(rgba, "RGBA").convert("LA")))[1, 1]) == (255, 255, 255)
    palette = Image.fromarray(rgba, "RGBA").convert("P")
    palette.info["transparency"] = palette.getpixel((1, 1))
    assert tuple(np.asarray(to_rgb(palette))[1, 1]) == (255, 255, 255)
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert tuple(np.asarray(to_rgb(cmyk))[0, 0]) == (255, 0, 0)
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_a_16_bit_png_trains_as_its_real_content(data, pipe, tmp_path):
    """A 16-bit PNG once became an all-white square; now it trains exactly as its 8-bit twin."""
    eight, sixteen = tmp_path / "eight", tmp_path / "sixteen"
    eight.mkdir()
    sixteen.mkdir()
    for path in sorted(Path(data).glob("*.png")):
        gray = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(gray, "L").save(eight / path.name)
        _gray16(gray).save(sixteen / path.name)
        for folder in (eight, sixteen):
            (folder / path.with_suffix(".txt").name).write_text(path.with_suffix(".txt").read_text())
    assert Image.open(next(sixteen.glob("*.png"))).mode.startswith("I")
    a, b = StyleImages(str(eight), 32), StyleImages(str(sixteen), 32)
    assert all(torch.equal(a.image(i), b.image(i)) for i in range(len(a)))
    assert b.image(0).min() < 0.9  # not a white square
    first = train(TrainConfig(train_data_dir=str(eight), output=str(tmp_path / "8.safetensors"), **FAST), pipeline=pipe)
    second = train(TrainConfig(train_data_dir=str(sixteen), output=str(tmp_path / "16.safetensors"), **FAST),
                   pipeline=pipe)
    assert first["sha256"] == second["sha256"]


def test_decompression_bombs_are_refused_by_name(data, tmp_path, monkeypatch):
    folder = tmp_path / "bomb"
    folder.mkdir()
    (folder / "big.png").write_bytes((Path(data) / "0000.png").read_bytes())  # 64 x 64 = 4096 pixels
    for limit in (1000, 3000):  # past twice the limit Pillow raises; past the limit it warns: both refused
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ShiraError, match=r"image .*big.png refused as a possible decompression bomb"):
            load_training_data(str(folder))


def test_in_memory_pairs_train_like_the_same_folder(data, pipe, tmp_path):
    folder = load_training_data(data)
    pairs = [(Image.open(name), caption) for name, caption in zip(folder.names, folder.captions)]
    from_folder = train(TrainConfig(train_data_dir=data, output=str(tmp_path / "f.safetensors"), **FAST), pipeline=pipe)
    from_memory = train(TrainConfig(train_data_dir=None, output=str(tmp_path / "m.safetensors"), **FAST),
                        pipeline=pipe, data=pairs)
    assert from_memory["sha256"] == from_folder["sha256"]
    assert SparseAdapter.load(tmp_path / "m.safetensors").recipe["images"] == len(pairs)
    with pytest.raises(ShiraError, match="training pair 1: expected a PIL image"):
        load_training_data([pairs[0], ("not an image", "caption")])
    with pytest.raises(ShiraError, match="is empty"):
        load_training_data([])


def test_trigger_inference_rules():
    assert infer_trigger(["a red circle, in zqx style", "a blue ring, in zqx style"]) == "in zqx style"
    assert infer_trigger(["zqx style, a red circle", "zqx style, a blue ring"]) == "zqx style"
    assert infer_trigger(["a, b, in zqx, style", "c, d, in zqx, style"]) == "in zqx, style"
    assert infer_trigger(["a red circle, in zqx style", "a blue ring"]) is None
    assert infer_trigger(["a red circle in zqx style", "a blue ring in zqx style"]) is None  # no comma
    assert infer_trigger(["a red circle, in zqx style"]) is None  # one caption shares everything with itself
    assert infer_trigger(["same, caption", "same, caption"]) == "caption"
    assert infer_trigger(["", "a, x"]) is None


def test_a_style_trained_without_trigger_stores_the_shared_phrase(data, pipe, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="shira_diffusion"):
        record = train(TrainConfig(train_data_dir=data, output=str(tmp_path / "t.safetensors"), **FAST), pipeline=pipe)
    adapter = SparseAdapter.load(tmp_path / "t.safetensors")
    assert adapter.trigger == "in zxq style" == record["trigger"] and record["trigger_inferred"]
    assert adapter.recipe["trigger_inferred"] is True
    assert any("in zxq style" in r.getMessage() and "trigger" in r.getMessage() for r in caplog.records)
    given = train(TrainConfig(train_data_dir=data, output=str(tmp_path / "g.safetensors"), trigger="zxq", **FAST),
                  pipeline=pipe)
    assert SparseAdapter.load(tmp_path / "g.safetensors").trigger == "zxq" and not given["trigger_inferred"]
