import pytest
import torch
from conftest import TINY_SDXL, make_unet, unet_inputs

from shira_diffusion import (
    ShiraError,
    build_masks,
    calibration_gradients,
    mask_size,
    target_weights,
)
from shira_diffusion.core.masks import MASK_STRATEGIES, matrix_shape, struct_mask


def _grads(weights, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(w.shape, generator=g) for n, w in weights.items()}


@pytest.mark.parametrize("strategy", MASK_STRATEGIES)
@pytest.mark.parametrize("size", [{"density": 0.01}, {"density": 0.02}, {"rank": 1}, {"rank": 3}])
def test_exact_counts_inside_layers_linear_and_conv(sd_unet, strategy, size):
    weights = target_weights(sd_unet, "all")
    assert any(w.dim() == 4 for w in weights.values()) and any(w.dim() == 2 for w in weights.values())
    masks = build_masks(weights, strategy, gradients=_grads(weights), **size)
    assert set(masks) == set(weights)
    for name, mask in masks.items():
        expected = mask_size(weights[name].shape, **size)
        assert len(mask) == expected, name
        assert mask.dtype == torch.int64
        assert int(mask.min()) >= 0 and int(mask.max()) < weights[name].numel(), name
        assert torch.all(mask[1:] > mask[:-1]), f"{name}: not sorted and unique"


def test_rank_sizing_equals_lora_parameter_count(sd_unet):
    weights = target_weights(sd_unet, "attn")
    masks = build_masks(weights, "struct", rank=4)
    lora = sum(4 * (w.shape[0] + w.shape[1]) for w in weights.values())
    assert sum(len(m) for m in masks.values()) == lora


def test_struct_holds_the_diagonal_rows_and_a_column_band():
    rows, cols = 64, 48
    mask = struct_mask((rows, cols), 4 * (rows + cols))
    dense = torch.zeros(rows * cols, dtype=torch.bool)
    dense[mask] = True
    dense = dense.view(rows, cols)
    assert dense.diagonal().all()
    assert dense[:, 0].all()  # the band starts at column 0
    full_rows = dense.all(dim=1).nonzero().flatten()
    assert len(full_rows) >= 1
    # high rank: a random delta on the mask has (near) full rank, unlike a rank-4 LoRA
    delta = torch.zeros(rows, cols)
    delta[dense] = torch.randn(int(dense.sum()))
    assert torch.linalg.matrix_rank(delta) == min(rows, cols)


def test_struct_tiny_budget_is_part_of_the_diagonal():
    mask = struct_mask((10, 10), 4)
    assert len(mask) == 4
    assert all(int(i) % 11 == 0 for i in mask)


def test_conv_masks_use_the_out_by_in_kernel_view(sd_unet):
    weights = {n: w for n, w in target_weights(sd_unet, "all").items() if w.dim() == 4}
    name, weight = next(iter(weights.items()))
    rows, cols = matrix_shape(weight.shape)
    assert rows == weight.shape[0] and cols == weight.shape[1] * weight.shape[2] * weight.shape[3]
    mask = build_masks({name: weight}, "struct", rank=2)[name]
    assert len(mask) == 2 * (rows + cols)


def test_rand_is_seeded_per_tensor_and_order_independent(sd_unet):
    weights = target_weights(sd_unet, "attn")
    a = build_masks(weights, "rand", density=0.05, seed=3)
    b = build_masks(dict(reversed(list(weights.items()))), "rand", density=0.05, seed=3)
    c = build_masks(weights, "rand", density=0.05, seed=4)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_wm_picks_the_largest_weights(sd_unet):
    weights = target_weights(sd_unet, "attn")
    masks = build_masks(weights, "wm", density=0.05)
    for name, mask in masks.items():
        flat = weights[name].abs().flatten()
        chosen = flat[mask]
        rest = flat[torch.ones_like(flat, dtype=torch.bool).index_fill_(0, mask, False)]
        assert chosen.min() >= rest.max()


def test_snip_and_grad_follow_their_scores(sd_unet):
    weights = target_weights(sd_unet, "attn")
    grads = _grads(weights)
    grad_masks = build_masks(weights, "grad", density=0.05, gradients=grads)
    snip_masks = build_masks(weights, "snip", density=0.05, gradients=grads)
    for name in weights:
        g = grads[name].abs().flatten()
        s = (weights[name] * grads[name]).abs().flatten()
        assert g[grad_masks[name]].min() >= g.sort(descending=True).values[len(grad_masks[name]) - 1]
        assert s[snip_masks[name]].min() >= s.sort(descending=True).values[len(snip_masks[name]) - 1]


@pytest.mark.parametrize("config", ["sd", "sdxl"])
def test_calibration_gradients_on_a_real_unet(config):
    unet = make_unet(TINY_SDXL if config == "sdxl" else __import__("conftest").TINY_SD)
    weights = target_weights(unet, "attn")
    inputs = unet_inputs(unet)

    def loss_fn(model, batch):
        sample, t, states, kwargs = batch
        return model(sample, t, states, **kwargs).sample.pow(2).mean()

    grads = calibration_gradients(unet, weights, loss_fn, [inputs, unet_inputs(unet, seed=2)])
    assert set(grads) == set(weights)
    assert all(g.shape == weights[n].shape and float(g.sum()) > 0 for n, g in grads.items())
    assert not any(p.requires_grad for p in unet.parameters())  # frozen state restored
    masks = build_masks(weights, "snip", rank=1, gradients=grads)
    assert all(len(m) == mask_size(weights[n].shape, rank=1) for n, m in masks.items())


def test_target_presets_nest(sd_unet):
    attn = set(target_weights(sd_unet, "attn"))
    attn_ff = set(target_weights(sd_unet, "attn-ff"))
    everything = set(target_weights(sd_unet, "all"))
    assert attn < attn_ff < everything
    assert all(n.rsplit(".", 2)[-2] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0.weight") for n in attn)
    assert not any("conv_in" in n or "conv_out" in n or "time_emb" in n for n in everything)
    assert any(".resnets." in n and n.endswith("conv1.weight") for n in everything)
    # Everything but the two layers that read the prompt embeddings.
    image_only = set(target_weights(sd_unet, "all-but-text-kv"))
    assert everything - image_only == {n for n in everything if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}
    assert everything - image_only


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "diagonal"}, "unknown mask"),
        ({"rank": 0}, "rank must be positive"),
        ({"density": 1.5}, "density must be in"),
        ({"density": 0.1, "rank": 2}, "exactly one of"),
        ({"rank": 10_000}, "does not fit"),
        ({"strategy": "grad"}, "needs gradients"),
    ],
)
def test_bad_mask_arguments(sd_unet, kwargs, message):
    weights = target_weights(sd_unet, "attn")
    with pytest.raises(ShiraError, match=message):
        build_masks(weights, **kwargs)


def test_unknown_target_preset(sd_unet):
    with pytest.raises(ShiraError, match="unknown target preset"):
        target_weights(sd_unet, "everything")
    with pytest.raises(ShiraError, match="no Linear or Conv2d module"):
        target_weights(sd_unet, ["no_such_layer"])
