import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from shira_diffusion import ShiraError, SparseAdapter, build_masks, target_weights
from shira_diffusion.bases import list_bases, load_pipeline, pipeline_family, resolve
from shira_diffusion.generate import generate, parse_style, with_triggers
from shira_diffusion.toy.architectures import build_pipeline
from shira_diffusion.toy.tokenizer import build_tokenizer, toy_vocabulary


@pytest.fixture
def base_folders(toy_pipeline_folders):
    """Stand-ins for the bases (untrained toy pipelines, from conftest)."""
    return toy_pipeline_folders


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "shira_diffusion.cli", *args], capture_output=True, text=True, timeout=300)


def test_tokenizer_keeps_every_toy_word_whole_and_is_reproducible():
    tokenizer = build_tokenizer()
    again = subprocess.run(
        [sys.executable, "-c", "from shira_diffusion.toy.tokenizer import build_tokenizer as b; print(sorted(b().get_vocab().items()))"],
        capture_output=True, text=True, timeout=120,
    )
    assert again.stdout.strip() == str(sorted(tokenizer.get_vocab().items()))
    for word in toy_vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("a red circle on a blue background, in pastel style").input_ids
    assert len(ids) == 13  # ten words and a comma, plus the two specials
    decoded = tokenizer.decode(ids, skip_special_tokens=True).replace(" ,", ",")  # CLIP decodes "</w>" as a space
    assert decoded == "a red circle on a blue background, in pastel style"


@pytest.mark.parametrize("family, cls", [("sd", StableDiffusionPipeline), ("sdxl", StableDiffusionXLPipeline)])
def test_toy_architectures_load_with_the_diffusers_pipeline_classes(base_folders, family, cls):
    pipe = cls.from_pretrained(base_folders[family])
    assert pipeline_family(pipe) == family
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64


def test_toy_families_share_no_adapted_shape():
    sd = build_pipeline("sd").unet
    xl = build_pipeline("sdxl").unet
    shapes_sd = {tuple(w.shape) for w in target_weights(sd, "attn").values()}
    shapes_xl = {tuple(w.shape) for w in target_weights(xl, "attn").values()}
    assert not shapes_sd & shapes_xl


def test_resolve_kinds(base_folders, tmp_path):
    assert resolve("toy-sd").kind == "bundled"
    assert resolve(str(base_folders["sd"])).kind == "folder"
    assert resolve("someone/some-model").kind == "hub"
    with pytest.raises(ShiraError, match="not a diffusers pipeline"):
        resolve(str(tmp_path))
    with pytest.raises(ShiraError, match="does not exist"):
        resolve(str(tmp_path / "model.safetensors"))
    with pytest.raises(ShiraError, match="unknown base"):
        resolve("not a base")


def test_offline_errors_say_what_is_missing(tmp_path):
    with pytest.raises(ShiraError, match="not in the local Hugging Face cache.*hf download nobody/nothing"):
        load_pipeline("nobody/nothing")
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    with pytest.raises(ShiraError, match="single-file checkpoint.*config"):
        load_pipeline(str(ckpt))
    assert {b.name for b in list_bases()} >= {"toy-sd", "toy-sdxl"}


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_generation_is_deterministic_per_seed_and_batch_position(base_folders, family):
    pipe = load_pipeline(str(base_folders[family]))
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle on a blue background", "a white ring on a black background"]
    batch = generate(pipe, prompts, seed=3, steps=2)
    alone = generate(pipe, prompts[1:], seed=4, steps=2)
    assert np.array_equal(np.asarray(batch[1]), np.asarray(alone[0]))
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(batch[1]))
    assert batch[0].size == (64, 64)


def test_styles_are_fused_with_their_trigger_and_lifted_after(base_folders, tmp_path):
    pipe = load_pipeline(str(base_folders["sd"]))
    pipe.set_progress_bar_config(disable=True)
    weights = target_weights(pipe.unet, "attn")
    masks = build_masks(weights, "struct", rank=2)
    adapter = SparseAdapter(
        indices={n: m.to(torch.int32) for n, m in masks.items()},
        values={n: torch.randn(len(m)) * 0.5 for n, m in masks.items()},
        shapes={n: tuple(w.shape) for n, w in weights.items()},
        base_arch="sd", mask="struct", name="ink", trigger="sks",
    )
    path = tmp_path / "ink.safetensors"
    adapter.save(path)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    plain = generate(pipe, ["a red circle on a blue background"], steps=2)[0]
    styled = generate(pipe, ["a red circle on a blue background"], steps=2, styles=[(str(path), 1.0)])[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(styled))
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, before[key])
    with pytest.raises(ShiraError, match="no style 'nope'"):
        generate(pipe, ["x"], styles=[("nope", 1.0)])


def test_style_arguments():
    assert parse_style("ink") == ("ink", 1.0)
    assert parse_style("a/b.safetensors=0.5") == ("a/b.safetensors", 0.5)
    with pytest.raises(ShiraError, match="must be a number"):
        parse_style("ink=strong")
    assert with_triggers("a red ring", ["sks", ""]) == "a red ring, sks"
    assert with_triggers("a red ring, sks", ["sks"]) == "a red ring, sks"


def test_generate_command_single_and_batch(base_folders, tmp_path):
    base = str(base_folders["sd"])
    one = run_cli("generate", "--base", base, "--prompt", "a red circle on a blue background", "--seed", "0",
                  "--steps", "2", "--out", str(tmp_path / "one.png"))
    assert one.returncode == 0, one.stderr
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a blue background\n\na green square on a white background\n")
    batch = run_cli("generate", "--base", base, "--prompts-file", str(prompts), "--seed", "0", "--steps", "2",
                    "--out", str(tmp_path / "batch"))
    assert batch.returncode == 0, batch.stderr
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["000.png", "001.png"]
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "batch" / "000.png").read_bytes()
    missing = run_cli("generate", "--base", "nobody/nothing", "--prompt", "x", "--out", str(tmp_path / "y.png"))
    assert missing.returncode == 1 and "not in the local" in missing.stderr and "Traceback" not in missing.stderr
    listing = run_cli("bases")
    assert listing.returncode == 0 and "toy-sd" in listing.stdout


def test_a_lora_used_and_removed_leaves_the_unet_plain_for_a_style_bank():
    from shira_diffusion.catalog import BUNDLED_ROOT
    from shira_diffusion.core.bank import StyleBank
    from shira_diffusion.generate import applied_adapter

    pipe = load_pipeline("toy-sd")
    names = [n for n, _ in pipe.unet.named_parameters()]
    with applied_adapter(pipe, None, BUNDLED_ROOT / "night" / "night.toy-sd.lora.safetensors", "lora"):
        pass
    assert [n for n, _ in pipe.unet.named_parameters()] == names  # no PEFT wrapper left behind
    bank = StyleBank(pipe.unet)
    bank.apply({bank.load(BUNDLED_ROOT / "night" / "night.toy-sd.safetensors"): 1.0})
    bank.restore()
