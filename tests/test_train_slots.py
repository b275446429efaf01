"""Styles trained with the defaults land on different Struct slots, so their masks never collide."""

import pytest
import torch

from shira_diffusion import ShiraError, SparseAdapter
from shira_diffusion.catalog import StyleCatalog
from shira_diffusion.toy.looks import LOOKS
from shira_diffusion.toy.world import write_dataset
from shira_diffusion.training import TrainConfig, train
from shira_diffusion.training.config import validate


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIRA_HOME", str(tmp_path / "home"))
    return tmp_path


def _style(folder, look, seed):
    write_dataset(folder, 4, seed=seed, look=LOOKS[look])
    return str(folder)


def test_two_styles_trained_with_the_defaults_get_disjoint_masks(home, toy_pipeline_folders):
    base = toy_pipeline_folders["sd"]
    adapters = {}
    for i, (name, look) in enumerate([("ink", "hatching"), ("dots", "halftone")]):
        out = home / f"{name}.safetensors"
        record = train(TrainConfig(base=base, train_data_dir=_style(home / name, look, i), output=str(out), name=name,
                                   trigger=f"{name}x", train_batch_size=2, max_train_steps=1, progress=False))
        adapters[name] = SparseAdapter.load(out)
        assert adapters[name].recipe["mask_slot"] == str(i)  # the lowest slot free in the catalogue
        StyleCatalog().add(name, out, base)  # what the app does with a trained style
        assert record["trainable_params"] == adapters[name].num_params
    ink, dots = adapters["ink"], adapters["dots"]
    assert ink.num_params == dots.num_params
    for tensor in ink.indices:
        assert not torch.isin(ink.indices[tensor], dots.indices[tensor]).any(), tensor


def test_a_style_trained_again_keeps_its_slot_and_none_means_the_shared_mask(home, toy_pipeline_folders):
    base = toy_pipeline_folders["sd"]
    data = _style(home / "ink", "hatching", 0)
    common = dict(base=base, train_data_dir=data, name="ink", trigger="inkx", train_batch_size=2, max_train_steps=1,
                  progress=False)
    train(TrainConfig(output=str(home / "a.safetensors"), mask_slot="3", **common))
    StyleCatalog().add("ink", home / "a.safetensors", base)
    train(TrainConfig(output=str(home / "b.safetensors"), **common))  # auto: its own slot is not "taken"
    assert SparseAdapter.load(home / "b.safetensors").recipe["mask_slot"] == "0"
    train(TrainConfig(output=str(home / "c.safetensors"), mask_slot="none", **common))
    assert SparseAdapter.load(home / "c.safetensors").recipe["mask_slot"] == "none"


@pytest.mark.parametrize("bad, message", [({"mask_slot": "9"}, "slot 0-7"), ({"mask_slot": "x"}, "slot 0-7"),
                                          ({"mask_slot": "2", "mask": "rand"}, "struct mask"),
                                          ({"mask_slot": "2", "adapter": "lora"}, "struct mask")])
def test_bad_slots_are_refused(bad, message):
    with pytest.raises(ShiraError, match=message):
        validate(TrainConfig(train_data_dir="d", output="o.safetensors", **bad))


def test_a_trained_struct_adapter_describes_its_mask(home, toy_pipeline_folders):
    out = home / "ink.safetensors"
    train(TrainConfig(base=toy_pipeline_folders["sd"], train_data_dir=_style(home / "ink", "hatching", 0),
                      output=str(out), trigger="inkx", train_batch_size=2, max_train_steps=1, progress=False))
    adapter = SparseAdapter.load(out)
    assert adapter.mask_spec == {"strategy": "struct", "slot": 0, "rank": 2}
