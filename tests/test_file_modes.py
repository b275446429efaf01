"""Files the package writes for the user (adapters, LoRAs, PEFT exports, reports) get the umask's
mode, like any file the user creates: never private 0600, which safetensors' writer and mkstemp
would leave them at."""

import os
import stat
import subprocess
import sys

import pytest
import torch

from conftest import make_adapter, make_unet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_an_adapter_file_is_not_private(tmp_path, umask_022):
    adapter = make_adapter(make_unet(), name="m")
    adapter.save(tmp_path / "listed.safetensors")
    adapter.with_mask_spec(None).save(tmp_path / "described.safetensors")
    assert _mode(tmp_path / "listed.safetensors") == 0o644
    assert _mode(tmp_path / "described.safetensors") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["described.safetensors", "listed.safetensors"]


def test_a_safetensors_file_written_through_atomic_path_is_not_private(tmp_path, umask_022):
    """The LoRA writer (diffusers' save_lora_weights with safetensors' save_file) goes through this."""
    from safetensors.torch import save_file

    from shira_diffusion.training.outputs import atomic_path

    with atomic_path(str(tmp_path / "lora.safetensors")) as temporary:
        save_file({"w": torch.ones(2)}, temporary)
    assert _mode(tmp_path / "lora.safetensors") == 0o644


def test_a_peft_export_is_not_private(tmp_path, umask_022):
    from shira_diffusion.core.peft_shira import export_peft_shira

    export_peft_shira(make_adapter(make_unet(), name="m", rank=2), tmp_path / "peft")
    assert {p.name: _mode(p) for p in (tmp_path / "peft").iterdir()} == {
        "adapter_model.safetensors": 0o644, "adapter_config.json": 0o644}


def test_shira_convert_writes_a_file_others_can_read(tmp_path):
    """End to end through the command, under the umask a shell gives it."""
    out = tmp_path / "converted.safetensors"
    lora = os.path.join(REPO, "styles", "hatching", "hatching.toy-sd.lora.safetensors")
    result = subprocess.run(
        ["bash", "-c", 'umask 022 && exec "$0" -m shira_diffusion.cli convert "$1" --base toy-sd --out "$2" --prompts 0',
         sys.executable, lora, str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert _mode(out) == 0o644
