"""The two committed toy bases: they load offline with diffusers' own classes and draw what is asked."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from shira_diffusion import ShiraError, bases
from shira_diffusion.bases import load_pipeline, pipeline_family
from shira_diffusion.bench.generate import bench_generate, content_scores, format_generate_table, grammar_prompts
from shira_diffusion.toy.looks import MEASURES, THRESHOLDS

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASES = [("toy-sd", "sd", StableDiffusionPipeline), ("toy-sdxl", "sdxl", StableDiffusionXLPipeline)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name, family, cls", BASES)
def test_bundled_base_loads_with_the_diffusers_class_and_is_documented(name, family, cls):
    folder = ASSETS / name
    pipe = cls.from_pretrained(folder)
    assert pipeline_family(pipe) == family
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    record = json.loads((folder / "training.json").read_text())
    card = (folder / "README.md").read_text()
    assert record["hardware"] in card and "training time" in card
    assert record["vae_median_psnr_db"]["plain"] >= 32 and record["vae_median_psnr_db"]["structured"] >= 26
    assert (folder / "samples.png").is_file() and (ASSETS / f"{name}-grid.png").is_file()
    tokens = pipe.tokenizer("style sks zxq", add_special_tokens=False).input_ids
    assert len(tokens) == 3 and pipe.tokenizer.unk_token_id not in tokens


@pytest.mark.parametrize("name, family, cls", BASES)
def test_bundled_base_draws_the_prompted_content_and_no_bundled_look(name, family, cls):
    pipe = load_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    expected = grammar_prompts(12, seed=7)
    images = []
    with torch.no_grad():
        for i, item in enumerate(expected):
            out = pipe(item["prompt"], num_inference_steps=20, guidance_scale=5.0, height=64, width=64,
                       generator=torch.Generator().manual_seed(i), output_type="np")
            images.append((out.images[0] * 255).round().astype(np.uint8))
    scores = content_scores(images, expected)
    assert scores["colors"] >= 10 / 12 and scores["shape"] >= 9 / 12, scores
    fired = sum(MEASURES[k](image) >= THRESHOLDS[k] for image in images for k in MEASURES)
    assert fired <= 1


def test_the_bases_share_almost_no_adapted_shape():
    result = bench_generate(["toy-sd", "toy-sdxl"], count=2, steps=1)
    shared = result["shared_shapes"]
    assert shared["toy-sd"]["shape_in_other"] == 0 and shared["toy-sdxl"]["shape_in_other"] == 0
    for record in result["bases"].values():
        assert set(record["accuracy"]) == {"colors", "shape", "all", "shape_confusion"}
        assert set(record["look_false_positives"]) == set(MEASURES)
        assert record["seconds_per_image"] > 0
    assert "toy-sdxl" in format_generate_table(result)


def test_a_missing_bundled_base_names_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(bases, "ASSETS", tmp_path)
    with pytest.raises(ShiraError, match="not in .*pass a local diffusers pipeline folder"):
        load_pipeline("toy-sd")


@pytest.mark.parametrize("name", ["toy-sd", "toy-sdxl"])
def test_bundled_looks_survive_the_base_vae(name):
    """A style adapter changes only the UNet, so a look the base's VAE cannot draw is out of any
    adapter's reach. Every look but pixel comes back through the VAE; pixel's 4 px blocks, one
    latent cell each, come back smoothed (the decoder, which also trained on them, draws them
    soft), which is why no bundled style uses pixel."""
    from shira_diffusion.evaluate import vae_ceiling
    from shira_diffusion.toy.looks import LOOKS

    pipe = load_pipeline(name)
    for look in LOOKS:
        ceiling = vae_ceiling(pipe, look, count=40)
        if look == "pixel":
            assert ceiling["strength"] < 0.1
        else:
            assert ceiling["strength"] >= 0.9, (look, ceiling)
