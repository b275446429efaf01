"""``transfer`` from LoRA files: the bundled diffusers/PEFT LoRA and the same as a kohya/A1111 file
(diffusers' own converter), on the bundled toy bases with tiny settings; the student's kind follows
``kind`` (``--as``)."""

import shutil

import pytest
from safetensors.torch import load_file, save_file

from shira_diffusion.bundled.specs import adapter_path
from shira_diffusion.transfer import TransferConfig, read_adapter_file, transfer

TINY = dict(synthetic=1, max_draws=2, calibration=1, steps=1, sample_steps=1, report_images=0, progress=False,
            train_overrides={"train_batch_size": 1})


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeds")
    images = adapter_path("hatching", "toy-sd").parent / "images"
    for ext in (".png", ".txt"):
        shutil.copy(images / f"0000{ext}", folder / f"0000{ext}")
    return folder


@pytest.fixture(scope="module")
def pipes():
    from shira_diffusion.bases import load_pipeline

    return load_pipeline("toy-sd"), load_pipeline("toy-sdxl")


@pytest.fixture(scope="module")
def kohya_file(tmp_path_factory):
    from diffusers.utils import convert_state_dict_to_kohya

    state = load_file(str(adapter_path("hatching", "toy-sd", "lora")))
    kohya = convert_state_dict_to_kohya(state)
    path = tmp_path_factory.mktemp("kohya") / "hatching.kohya.safetensors"
    save_file({k.replace("lora_unet_unet_", "lora_unet_"): v.contiguous() for k, v in kohya.items()}, str(path),
              metadata={"trigger": "vrt"})
    return str(path)


@pytest.mark.parametrize("which,kind", [("peft", "shira"), ("kohya", "lora")])
def test_transfer_from_lora_files(which, kind, seeds, pipes, kohya_file, tmp_path):
    path = str(adapter_path("hatching", "toy-sd", "lora")) if which == "peft" else kohya_file
    assert read_adapter_file(path).format == which
    out = str(tmp_path / "student.safetensors")
    report = transfer(TransferConfig(adapter=path, source_base="toy-sd", target_base="toy-sdxl", seed_data=str(seeds),
                                     out=out, kind=kind, **TINY), source_pipe=pipes[0], target_pipe=pipes[1])
    assert report["source"] == {"base": "toy-sd", "kind": "lora", "format": which, "family": "sd",
                                "trigger": "vrt"}
    assert read_adapter_file(out).kind == kind and read_adapter_file(out).family == "sdxl"
    assert report["filter"]["kept"] == 1 and report["student"]["steps"] == 1
    for pipe in pipes:  # the pipelines are handed back clean
        assert not getattr(pipe.unet, "peft_config", None)
