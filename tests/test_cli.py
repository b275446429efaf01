import json
import subprocess
import sys

import pytest
import torch

from shira_diffusion import SparseAdapter
from shira_diffusion.bench.switch import bench_switch, format_switch_table
from shira_diffusion.cli import main

from conftest import TINY_SD, make_adapter, make_unet


def run_cli(*args):
    """The installed entry point as a user runs it: separate process, real exit code and streams."""
    return subprocess.run(
        [sys.executable, "-m", "shira_diffusion.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args",
    [[], ["bench"], ["bench", "switch"], ["info"], ["export-peft"], ["import-peft"], ["bases"], ["generate"], ["train"], ["bench", "generate"], ["bench", "train"], ["bench", "all"], ["eval", "styles"], ["styles"],
     ["styles", "list"], ["styles", "add"], ["styles", "remove"], ["styles", "build"], ["styles", "recommend"],
     ["styles", "retrain"]],
    ids=lambda a: " ".join(a) or "shira",
)
def test_every_subcommand_has_help(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--help"])
    assert exit_info.value.code == 0
    assert "usage: shira" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["bench", "switch", "--arch", "sd3"], "invalid choice: 'sd3'"),
        (["bench", "switch", "--r", "-4"], "must be a positive integer"),
        (["bench", "switch", "--density", "2"], "must be in (0, 1]"),
        (["bench", "switch", "--r", "4", "--density", "0.1"], "not allowed with argument"),
        (["bench", "switch", "--repeats", "2"], "repeats must be at least 5"),
        (["info"], "the following arguments are required: adapter"),
        (["info", "missing.safetensors"], "missing.safetensors: no such file"),
        (["import-peft", "x", "y.safetensors"], "give exactly one of --arch or --unet-config"),
        (["bench", "all", "--device", "cuda:0" if not torch.cuda.is_available() else "tpu"], "--device"),
        (["bench", "switch", "--dtype", "fp8"], "invalid choice: 'fp8'"),
        (["styles", "remove", "hatching"], "bundled style"),
        (["styles", "add", "Bad Name", "x.safetensors", "--base", "toy-sd"], "x.safetensors"),
    ],
)
def test_bad_arguments_give_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shira") and "error:" in lines[0] and message in lines[0]
    assert "Traceback" not in result.stderr


def test_info_and_peft_round_trip_through_the_cli(tmp_path, sd_unet):
    adapter = make_adapter(sd_unet, "ink", rank=2)
    path = tmp_path / "ink.safetensors"
    adapter.save(path)
    result = run_cli("info", str(path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["name"] == "ink" and summary["params"] == adapter.num_params
    assert all(row["lora_equivalent_rank"] == 2 for row in summary["tensors"])
    assert "ink-style" in run_cli("info", str(path)).stdout

    assert run_cli("export-peft", str(path), str(tmp_path / "peft")).returncode == 0
    config = tmp_path / "unet_config.json"
    config.write_text(json.dumps(sd_unet.config))
    result = run_cli("import-peft", str(tmp_path / "peft"), str(tmp_path / "back.safetensors"), "--unet-config", str(config))
    assert result.returncode == 0, result.stderr
    back = SparseAdapter.load(tmp_path / "back.safetensors")
    for name in adapter.shapes:
        assert torch.equal(back.indices[name], adapter.indices[name])
        assert torch.equal(back.values[name], adapter.values[name])


def test_import_peft_for_a_full_size_architecture_needs_no_weights(tmp_path):
    # --arch builds the SD1.5 UNet on the meta device: shapes only, so a wrong file fails fast
    result = run_cli("import-peft", str(tmp_path), str(tmp_path / "o.safetensors"), "--arch", "sd15")
    assert result.returncode == 1 and "adapter_config.json missing" in result.stderr


@pytest.mark.parametrize("mask", ["struct", "rand"])
def test_switch_benchmark_runs_every_contender(mask):
    # The real command builds the full-size UNet (minutes of CPU); a tiny one runs the same code.
    result = bench_switch(arch="tiny", mask=mask, rank=2, repeats=5, log=lambda _: None, unet=make_unet(TINY_SD))
    for key in (
        "shira_warm_switch_ms", "shira_cold_switch_ms", "diffusers_lora_warm_switch_ms",
        "diffusers_lora_cold_switch_ms", "peft_shira_warm_switch_ms",
    ):
        assert result[key] > 0, key
    assert result["shira_params"] == result["lora_params"] == result["peft_shira_params"]
    assert result["speedup_vs_diffusers_lora"] > 0 and result["cold_speedup_vs_diffusers_lora"] > 0
    assert result["diffusers_pipeline_lora_cold_switch_ms"] > 0
    assert "shira-diffusion" in format_switch_table(result)
    json.dumps(result)
    if mask == "struct":  # slots, the copy floor and a bank of 100 styles
        for key in ("slot_switch_ms", "slot_mix_two_ms", "slot_mix_four_ms", "floor_single_ms", "held_100_switch_ms"):
            assert result[key] > 0, key
        assert result["held_style_mb"] > 0 and "Struct slots" in format_switch_table(result)


def test_switch_benchmark_runs_in_bf16():
    result = bench_switch(arch="tiny", rank=2, repeats=5, log=lambda _: None, unet=make_unet(TINY_SD), dtype="bf16")
    assert result["dtype"] == "bf16" and result["shira_warm_switch_ms"] > 0 and result["device"].startswith("CPU")


def test_generate_uses_a_single_bundled_styles_recommended_guidance_and_weight(tmp_path, monkeypatch, capsys):
    import shutil
    from pathlib import Path

    from shira_diffusion import catalog
    from shira_diffusion import generate as generate_module

    bundled = Path(catalog.BUNDLED_ROOT) / "pastel"
    (tmp_path / "pastel").mkdir()
    shutil.copy(bundled / "pastel.toy-sd.safetensors", tmp_path / "pastel")
    recommended_setting = {"file": "pastel.toy-sd.safetensors", "guidance": 2.0, "weight": 1.25}
    (tmp_path / "pastel" / "style.json").write_text(json.dumps({"files": {"toy-sd/shira": recommended_setting}}))
    monkeypatch.setattr(catalog, "BUNDLED_ROOT", tmp_path)
    from PIL import Image

    used = []
    monkeypatch.setattr(generate_module, "generate",
                        lambda pipe, prompts, **kw: used.append(kw) or [Image.new("RGB", (8, 8))])
    out = str(tmp_path / "x.png")
    main(["generate", "--base", "toy-sd", "--prompt", "a red circle on a blue background", "--style", "pastel",
          "--out", out])
    assert used[-1]["guidance_scale"] == 2.0 and used[-1]["styles"] == [("pastel", 1.25)]
    assert "weight 1.25: recommended for pastel" in capsys.readouterr().err
    main(["generate", "--base", "toy-sd", "--prompt", "a red circle", "--style", "pastel=1", "--out", out, "--overwrite"])
    assert used[-1]["styles"] == [("pastel", 1.0)]  # a weight given is the weight used
    main(["generate", "--base", "toy-sd", "--prompt", "a red circle", "--style", "pastel", "--guidance", "7",
          "--out", out, "--overwrite"])
    assert used[-1]["guidance_scale"] == 7.0
    main(["generate", "--base", "toy-sd", "--prompt", "a red circle", "--out", out, "--overwrite"])  # no style: the default
    assert used[-1]["guidance_scale"] == 5.0
