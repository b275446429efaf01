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


def test_export_writes_the_linear_tensors_and_leaves_out_convolutions(sd_unet, tmp_path):
    from shira_diffusion import SparseAdapter
    from shira_diffusion.core.peft_shira import peft_split

    unet = make_unet(TINY_SD)
    peft_base = copy.deepcopy(unet)
    adapter = make_adapter(unet, "a", targets="all", rank=2)
    linear, skipped = peft_split(adapter)
    assert linear and skipped and all(len(adapter.shapes[n]) == 4 for n in skipped)
    export_peft_shira(adapter, tmp_path / "peft")
    linear_only = SparseAdapter(indices={n: adapter.indices[n] for n in linear},
                                values={n: adapter.values[n] for n in linear},
                                shapes={n: adapter.shapes[n] for n in linear}, base_arch="sd", name="lin")
    bank = StyleBank(unet)
    bank.add(linear_only)
    bank.apply({"lin": 1.0})
    inputs = unet_inputs(unet)
    model = PeftModel.from_pretrained(peft_base, str(tmp_path / "peft"))
    assert torch.equal(forward(unet, inputs), forward(model, inputs))

    with pytest.raises(ShiraError, match="nn.Linear only.*Conv2d"):
        export_peft_shira(adapter, tmp_path / "x", linear_only=False)
    convs = SparseAdapter(indices={n: adapter.indices[n] for n in skipped},
                          values={n: adapter.values[n] for n in skipped},
                          shapes={n: adapter.shapes[n] for n in skipped}, base_arch="sd", name="c")
    with pytest.raises(ShiraError, match="nothing to export.*Conv2d"):
        export_peft_shira(convs, tmp_path / "y")
    with pytest.raises(ShiraError, match="r\\*\\(rows\\+cols\\).*rank=r"):
        export_peft_shira(make_adapter(sd_unet, density=0.013), tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_export_never_replaces_a_checkpoint_unless_asked(sd_unet, tmp_path):
    from shira_diffusion.errors import OutputExistsError

    folder = tmp_path / "peft"
    export_peft_shira(make_adapter(sd_unet, "a", rank=2), folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(OutputExistsError, match="adapter_(model|config).*already exists.*--overwrite"):
        export_peft_shira(make_adapter(sd_unet, "b", seed=1, rank=2), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    export_peft_shira(make_adapter(sd_unet, "b", seed=1, scale=0.5, rank=2), folder, overwrite=True)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert set(after) == set(before) and after["adapter_model.safetensors"] != before["adapter_model.safetensors"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ShiraError, match="is a file, not a folder"):
        export_peft_shira(make_adapter(sd_unet, "a", rank=2), tmp_path / "file", overwrite=True)


def test_import_rejects_other_folders(tmp_path, sd_unet):
    from shira_diffusion import AdapterFileError

    with pytest.raises(AdapterFileError, match="adapter_config.json missing"):
        import_peft_shira(tmp_path, sd_unet)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"junk")
    with pytest.raises(AdapterFileError, match="expected 'SHIRA'"):
        import_peft_shira(tmp_path, sd_unet)


def test_import_names_the_file_for_bad_checkpoints(tmp_path, sd_unet):
    from safetensors.torch import load_file, save_file

    from shira_diffusion import AdapterFileError

    export_peft_shira(make_adapter(sd_unet, "a", rank=2), tmp_path / "peft")
    config = tmp_path / "peft" / "adapter_config.json"
    weights = tmp_path / "peft" / "adapter_model.safetensors"
    assert import_peft_shira(tmp_path / "peft", sd_unet).num_params > 0
    tensors = load_file(weights)
    key = next(k for k in tensors if k.endswith(".shira_indices"))
    shifted = dict(tensors)
    shifted[key] = tensors[key].clone()
    shifted[key][1, 0] = 10_000  # a column past the weight's width: would wrap into the next row
    save_file(shifted, weights)
    with pytest.raises(AdapterFileError, match="adapter_model.safetensors.*outside"):
        import_peft_shira(tmp_path / "peft", sd_unet)
    twice = dict(tensors)
    twice[key] = tensors[key].clone()
    twice[key][:, 1] = twice[key][:, 0]
    save_file(twice, weights)
    with pytest.raises(AdapterFileError, match="adapter_model.safetensors.*duplicated"):
        import_peft_shira(tmp_path / "peft", sd_unet)
    for text in ("{not json", "[1, 2]"):
        config.write_text(text)
        with pytest.raises(AdapterFileError, match="adapter_config.json"):
            import_peft_shira(tmp_path / "peft", sd_unet)
