import copy

import pytest
import torch
from peft import PeftModel, ShiraConfig, get_peft_model

from shira_diffusion import ShiraError, StyleBank, export_peft_shira, import_peft_shira
from shira_diffusion.core.architecture import ATTENTION

from conftest import TINY_SD, TINY_SDXL, forward, make_adapter, make_unet, unet_inputs


@pytest.mark.parametrize("config", [TINY_SD, TINY_SDXL], ids=["sd", "sdxl"])
@pytest.mark.parametrize("mask", ["struct", "rand", "wm"])
def test_export_loads_in_peft_with_identical_outputs(tmp_path, config, mask):
    unet = make_unet(config)
    peft_base = copy.deepcopy(unet)
    adapter = make_adapter(unet, "a", mask, rank=2)
    inputs = unet_inputs(unet)
    bank = StyleBank(unet)
    bank.add(adapter)
    bank.apply({"a": 1.0})
    ours = forward(unet, inputs)

    export_peft_shira(adapter, tmp_path / "peft")
    assert (tmp_path / "peft" / "adapter_config.json").exists()
    model = PeftModel.from_pretrained(peft_base, str(tmp_path / "peft"))
    theirs = forward(model, inputs)
    assert torch.equal(ours, theirs)


def test_import_from_peft_gives_identical_outputs(tmp_path):
    unet = make_unet(TINY_SD)
    base = copy.deepcopy(unet)
    config = ShiraConfig(r=2, target_modules=list(ATTENTION), init_weights=False, random_seed=7)
    model = get_peft_model(unet, config)
    inputs = unet_inputs(unet)
    theirs = forward(model, inputs)
    model.save_pretrained(str(tmp_path / "peft"))

    adapter = import_peft_shira(tmp_path / "peft", base, name="imported")
    assert adapter.mask == "peft-random" and adapter.recipe["r"] == 2
    bank = StyleBank(base)
    bank.add(adapter)
    bank.apply({"imported": 1.0})
    torch.testing.assert_close(forward(base, inputs), theirs, rtol=0, atol=1e-6)


def test_export_refuses_convolutions_and_density_sizing(sd_unet, tmp_path):
    with pytest.raises(ShiraError, match="nn.Linear only.*Conv2d"):
        export_peft_shira(make_adapter(sd_unet, targets="all"), tmp_path / "x")
    with pytest.raises(ShiraError, match="r\\*\\(rows\\+cols\\).*rank=r"):
        export_peft_shira(make_adapter(sd_unet, density=0.013), tmp_path / "y")


def test_import_rejects_other_folders(tmp_path, sd_unet):
    from shira_diffusion import AdapterFileError

    with pytest.raises(AdapterFileError, match="adapter_config.json missing"):
        import_peft_shira(tmp_path, sd_unet)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"junk")
    with pytest.raises(AdapterFileError, match="expected 'SHIRA'"):
        import_peft_shira(tmp_path, sd_unet)
