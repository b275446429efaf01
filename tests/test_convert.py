"""LoRA files read as diffusers reads them (diffusers/PEFT and kohya keys, made with peft and
diffusers' own converters on the bundled toy-sd UNet), and ``shira convert`` (LoRA -> SHiRA without
training): deltas, reconstruction error, the command, and its errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from shira_diffusion.bases import load_pipeline
from shira_diffusion.cli import main
from shira_diffusion.core.adapter import SparseAdapter
from shira_diffusion.errors import AdapterFileError, ArchitectureMismatchError, ShiraError
from shira_diffusion.transfer import convert_lora, lora_deltas, read_adapter_file, topk_sparse

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1"]


def make_lora_files(folder, rank=2, seed=0, trigger="qqq"):
    """A rank-``rank`` LoRA on the toy-sd UNet (attention and resnet conv1) with random factors,
    written in diffusers/PEFT format and in kohya format; returns (peft path, kohya path, state)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from shira_diffusion.bases import ASSETS

    unet = UNet2DConditionModel.from_pretrained(str(ASSETS / "toy-sd" / "unet"))
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False))
    state = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    header = {"format": "pt", "trigger": trigger, "name": "tiny", "base_arch": "sd"}
    peft_path = str(folder / "tiny.lora.safetensors")
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=state, weight_name="tiny.lora.safetensors",
                                              save_function=lambda w, p: save_file(w, p, metadata=header))
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()})
    kohya_path = str(folder / "tiny.kohya.safetensors")
    save_file({k.replace("lora_unet_unet_", "lora_unet_"): v.contiguous() for k, v in kohya.items()}, kohya_path,
              metadata={"trigger": trigger})
    return peft_path, kohya_path, state


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    return make_lora_files(tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def toy_sd():
    pipe = load_pipeline("toy-sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_both_formats_read_as_the_same_deltas(lora_files, toy_sd):
    peft_path, kohya_path, state = lora_files
    peft_info, kohya_info = read_adapter_file(peft_path), read_adapter_file(kohya_path)
    assert (peft_info.kind, peft_info.format, peft_info.rank, peft_info.trigger) == ("lora", "peft", 2, "qqq")
    assert (kohya_info.kind, kohya_info.format, kohya_info.family) == ("lora", "kohya", None)
    first = lora_deltas(toy_sd, peft_path)
    second = lora_deltas(toy_sd, kohya_path)
    assert set(first) == set(second) and len(first) == len([k for k in state if k.endswith("lora_A.weight")])
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-6)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    stem = name[: -len(".weight")]
    expected = state[f"{stem}.lora_B.weight"] @ state[f"{stem}.lora_A.weight"]  # alpha = rank: scale 1
    assert torch.allclose(first[name], expected, atol=1e-6)
    conv = next(n for n in first if n.endswith("conv1.weight"))
    assert first[conv].dim() == 4
    assert not getattr(toy_sd.unet, "peft_config", None)  # the pipeline is left without the LoRA


@pytest.fixture(scope="module")
def converted(lora_files, toy_sd, tmp_path_factory):
    conversion = convert_lora(lora_files[0], toy_sd)
    path = tmp_path_factory.mktemp("converted") / "tiny.shira.safetensors"
    conversion.adapter.save(path)
    return conversion, str(path)


def test_convert_keeps_the_largest_entries(lora_files, toy_sd, converted):
    peft_path, _, _ = lora_files
    equal, _ = converted
    assert equal.params == equal.lora_params  # by default the LoRA's own parameter count
    assert 0 < equal.relative_error < 1 and equal.adapter.mask == "lora-topk" and equal.adapter.trigger == "qqq"
    assert equal.report["energy_kept"] == pytest.approx(1 - equal.relative_error ** 2, abs=1e-4)
    full = convert_lora(peft_path, toy_sd, density=1.0)
    assert full.relative_error < 1e-6
    deltas = lora_deltas(toy_sd, peft_path)
    for name in list(deltas)[:3]:
        assert torch.allclose(full.adapter.delta(name).float(), deltas[name].reshape(full.adapter.shapes[name]),
                              atol=1e-2)
        kept = equal.adapter.delta(name).float().flatten().abs()
        dropped = deltas[name].flatten().abs()[kept == 0]
        assert dropped.max() <= kept.max()  # what was left out is never larger than what was kept
    indices, values = topk_sparse(torch.tensor([[0.1, -3.0], [2.0, 0.5]]), 2)
    assert indices.tolist() == [1, 2] and values.tolist() == [-3.0, 2.0]


def test_convert_command_from_each_format(lora_files, tmp_path, capsys):
    peft_path, kohya_path, _ = lora_files
    outs = []
    for i, path in enumerate((peft_path, kohya_path)):
        out = tmp_path / f"c{i}.safetensors"
        assert main(["convert", path, "--base", "toy-sd", "--out", str(out), "--rank", "1", "--prompts", "0",
                     "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["format"] == ("peft", "kohya")[i] and 0 < result["relative_error"] < 1
        outs.append(SparseAdapter.load(out))
    assert outs[0].num_params == outs[1].num_params
    for name in outs[0].shapes:
        assert torch.equal(outs[0].indices[name], outs[1].indices[name])
    assert main(["convert", peft_path, "--base", "toy-sd", "--out", str(tmp_path / "c0.safetensors")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_strength_before_and_after(lora_files, toy_sd, converted):
    from shira_diffusion.transfer.convert import strength_before_after

    strength = strength_before_after(toy_sd, lora_files[0], converted[1], "hatching", "qqq", prompts=1, steps=1)
    assert strength["look"] == "hatching" and strength["prompts"] == 1
    assert {"lora", "shira", "lora_content", "shira_content"} <= set(strength)
    assert not getattr(toy_sd.unet, "peft_config", None)  # both taken off again
    assert dict(toy_sd.unet.named_parameters()).keys() >= converted[0].adapter.shapes.keys()


def test_convert_errors(lora_files, tmp_path, capsys):
    peft_path, kohya_path, _ = lora_files
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterFileError, match="not a readable safetensors"):
        read_adapter_file(bad)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(AdapterFileError, match="neither a SHiRA adapter nor a LoRA"):
        read_adapter_file(other)
    sdxl = load_pipeline("toy-sdxl")
    with pytest.raises(ArchitectureMismatchError, match="SD-family"):
        convert_lora(peft_path, sdxl)
    with pytest.raises(ArchitectureMismatchError, match="does not exist|is .* in the LoRA"):
        convert_lora(kohya_path, sdxl)  # no family in its header: caught by its layers
    with pytest.raises(ShiraError, match="not both"):
        convert_lora(peft_path, sdxl, rank=1, density=0.1)
    capsys.readouterr()
    assert main(["convert", str(bad), "--base", "toy-sd", "--out", str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable safetensors" in err
    assert main(["convert", peft_path, "--base", "toy-sd", "--out", str(tmp_path / "x.png")]) == 1
    assert ".safetensors" in capsys.readouterr().err
