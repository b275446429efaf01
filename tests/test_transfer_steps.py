"""Transfer steps one by one (shira_diffusion/transfer/): synthetic prompts (offline neighbours and a
tiny causal LM built from a config), image features, the discriminator, MMD, the rejection filter,
the folder batch's partitioning and resuming. No pipeline is loaded here except a tiny VAE."""

import numpy as np
import pytest
import torch

from shira_diffusion.errors import ShiraError
from shira_diffusion.toy.tokenizer import build_tokenizer
from shira_diffusion.transfer import (fit_discriminator, filter_samples, image_features, lm_prompts, mmd_rbf,
                                      neighbour_prompts)
from shira_diffusion.transfer.batch import folder_adapters, partition, process_rank, transfer_folder
from shira_diffusion.transfer.pipeline import TransferConfig, report_paths
from shira_diffusion.transfer.prompts import clean_caption, load_generator, nearest_words, word_vocabulary

SEEDS = ["a black triangle on a red background", "a purple circle on a white background",
         "a green ring on a yellow background"]


def _embeddings(tokenizer, seed=0):
    return torch.randn(len(tokenizer), 16, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ step 1: prompts

def test_neighbour_prompts_imitate_the_seeds_and_keep_the_shared_words():
    tokenizer = build_tokenizer()
    embeddings = _embeddings(tokenizer)
    prompts = neighbour_prompts(SEEDS, 12, tokenizer, embeddings, seed=3, keep=["vrt"])
    assert len(prompts) == 12 and len(set(prompts)) == 12
    for prompt in prompts:
        words = prompt.split()
        assert len(words) == 7 and words[0] == "a" and words[3:5] == ["on", "a"] and words[-1] == "background"
    assert prompts == neighbour_prompts(SEEDS, 12, tokenizer, embeddings, seed=3, keep=["vrt"])  # seeded
    assert prompts != neighbour_prompts(SEEDS, 12, tokenizer, embeddings, seed=4, keep=["vrt"])
    assert set(prompts) - set(SEEDS), "nothing new"


def test_nearest_words_follow_the_embedding_space():
    tokenizer = build_tokenizer()
    embeddings = _embeddings(tokenizer)
    vocab = tokenizer.get_vocab()
    embeddings[vocab["orange</w>"]] = embeddings[vocab["red</w>"]] * 2  # same direction: nearest
    words, table = word_vocabulary(tokenizer, embeddings)
    assert "red" in words and all(len(w) >= 3 and w.isalpha() for w in words)
    assert nearest_words("red", words, table, k=3)[0] == "orange"
    assert nearest_words("not-a-token", words, table) == []
    with pytest.raises(ShiraError, match="seed captions"):
        neighbour_prompts(["", "  "], 3, tokenizer, embeddings)


def test_a_tiny_causal_lm_writes_prompts(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer(max_length=512)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    state = torch.random.get_rng_state()
    prompts = lm_prompts(SEEDS, 3, str(tmp_path), seed=1, max_new_tokens=8, max_tries=6)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone
    assert len(prompts) == 3 and all(isinstance(p, str) and p for p in prompts)
    assert all(p == clean_caption(p) for p in prompts)
    with pytest.raises(ShiraError, match="--generator"):
        load_generator(str(tmp_path / "missing"))


def test_clean_caption():
    assert clean_caption(" 4. A Red circle, on blue!!\n5. next") == "a red circle, on blue"
    assert clean_caption("\n\n") == ""


# ------------------------------------------------------------------------------------ step 3: filter

def test_image_features_with_and_without_a_vae():
    from diffusers import AutoencoderKL

    images = [np.full((16, 16, 3), c, np.uint8) for c in (0, 128, 255)]
    plain = image_features(images)
    assert plain.shape[0] == 3 and np.isfinite(plain).all()
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    both = image_features(images, vae)
    assert both.shape == (3, plain.shape[1] + 8)
    assert not np.allclose(plain[0], plain[2])


def test_discriminator_separates_and_mmd_measures():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (8, 5))
    fake = rng.normal(3, 1, (40, 5))
    disc = fit_discriminator(real, fake, l2=1.0)
    assert disc.p_real(real).mean() > 0.8 and disc.p_real(fake).mean() < 0.2
    assert mmd_rbf(real, rng.normal(0, 1, (40, 5))) < mmd_rbf(real, fake)
    assert mmd_rbf(real, real) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ShiraError):
        mmd_rbf(real, real[:0])


def test_filter_keeps_what_looks_real_and_draws_more_up_to_the_cap():
    rng = np.random.default_rng(1)
    real = rng.normal(0, 1, (6, 4))
    calibration = rng.normal(2.5, 1, (12, 4))

    def draw(n):  # every third sample looks real
        return np.stack([rng.normal(0 if i % 3 == 0 else 2.5, 0.5, 4) for i in range(n)])

    result, drawn = filter_samples(real, calibration, draw, wanted=5, max_draws=40)
    assert len(result.kept) == 5 and result.drawn == len(drawn) <= 40
    assert result.accepted == 5 and result.filled == 0
    assert result.mmd_after < result.mmd_before
    rate = result.summary()["acceptance_rate"]
    assert rate == pytest.approx(result.taken_for_real / result.drawn, abs=1e-4) and 0 < rate < 1

    hopeless, _ = filter_samples(real, calibration, lambda n: rng.normal(5, 0.5, (n, 4)), wanted=4, max_draws=10)
    assert hopeless.drawn == 10 and len(hopeless.kept) == 4 and hopeless.filled == 4 - hopeless.accepted

    plain, _ = filter_samples(real, calibration, draw, wanted=5, max_draws=40, use_filter=False)
    assert plain.drawn == 5 and plain.kept == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------ batch

def test_partition_and_process_rank():
    items = list(range(7))
    assert partition(items, 0, 2) == [0, 2, 4, 6] and partition(items, 1, 2) == [1, 3, 5]
    assert sorted(partition(items, 0, 3) + partition(items, 1, 3) + partition(items, 2, 3)) == items
    with pytest.raises(ShiraError):
        partition(items, 2, 2)
    assert process_rank({}) == (0, 1)
    assert process_rank({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)


def test_transfer_folder_takes_its_share_and_skips_done_ones(tmp_path, monkeypatch):
    import shira_diffusion.transfer.batch as batch

    folder = tmp_path / "adapters"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.safetensors").write_bytes(b"x")
        (folder / name).mkdir()
    out = tmp_path / "out"
    calls = []

    def fake_transfer(config, source_pipe=None, target_pipe=None):
        calls.append((config.adapter, config.seed_data, config.out))
        paths = report_paths(config.out)
        open(paths["adapter"], "w").close()
        open(paths["report"], "w").close()

    monkeypatch.setattr(batch, "transfer", fake_transfer)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    template = TransferConfig(adapter="", source_base="toy-sd", target_base="toy-sdxl", seed_data=None, out="")
    status = transfer_folder(str(folder), str(out), template, source_pipe=object(), target_pipe=object())
    assert status == {"b": "done"} and calls[0][1] == str(folder / "b")
    status = transfer_folder(str(folder), str(out), template, rank=0, world=1, source_pipe=object(),
                             target_pipe=object())
    assert status == {"a": "done", "b": "skipped", "c": "done"}
    (folder / "d.safetensors").write_bytes(b"x")
    with pytest.raises(ShiraError, match="no seed folder"):
        folder_adapters(str(folder))


@pytest.mark.parametrize("args", [["transfer"], ["convert"], ["eval", "transfer"]], ids=" ".join)
def test_commands_have_help(args, capsys):
    from shira_diffusion.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--help"])
    assert exit_info.value.code == 0 and "usage: shira" in capsys.readouterr().out


def test_bad_flags_are_one_line(capsys):
    from shira_diffusion.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["transfer", "--adapter", "a.safetensors", "--from", "toy-sd", "--to", "toy-sdxl", "--out", "o.safetensors",
              "--as", "dora"])
    assert exit_info.value.code == 2 and "invalid choice: 'dora'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "x.safetensors", "--base", "toy-sd", "--out", "o.safetensors", "--rank", "2", "--density", "0.1"])
    assert "not allowed with argument" in capsys.readouterr().err
