"""SparseDeltaModel: gradients equal dense autograd's at the mask, weights stay fused, restore is exact."""

import copy

import pytest
import torch

from shira_diffusion import build_masks, target_weights
from shira_diffusion.core.sparse_training import SparseDeltaModel, _GradientPlan

from conftest import TINY_SD, TINY_SDXL, make_unet, unet_inputs


def _loss(unet, inputs):
    sample, t, states, kwargs = inputs
    out = unet(sample, t, states, **kwargs).sample
    return (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum()


def _masks(unet, strategy, targets):
    weights = target_weights(unet, targets)
    gradients = None
    if strategy in ("grad", "snip"):
        gradients = {n: torch.randn(w.shape, generator=torch.Generator().manual_seed(3)) for n, w in weights.items()}
    return build_masks(weights, strategy, rank=2, gradients=gradients)


@pytest.mark.parametrize("config", [TINY_SD, TINY_SDXL], ids=["sd", "sdxl"])
@pytest.mark.parametrize("strategy, targets", [("struct", "attn"), ("rand", "attn-ff"), ("wm", "attn"),
                                               ("snip", "attn"), ("struct", "all")])
def test_value_gradients_equal_dense_gradients_at_the_mask(config, strategy, targets):
    unet = make_unet(config)
    reference = copy.deepcopy(unet)
    masks = _masks(unet, strategy, targets)
    inputs = unet_inputs(unet, batch=2)
    # Start from nonzero values, so the fused weights matter for the output and the input gradients.
    model = SparseDeltaModel(unet, masks)
    with torch.no_grad():
        for value in model.values.values():
            value.copy_(torch.randn(value.shape, generator=torch.Generator().manual_seed(value.numel())) * 0.05)
    ref_weights = target_weights(reference, targets)
    with torch.no_grad():
        for key, layer in model._layers.items():
            ref_weights[layer["name"]].view(-1)[layer["indices"]] += model.values[key]
    for w in ref_weights.values():
        w.requires_grad_(True)
    loss = _loss(model, inputs)
    loss.backward()
    ref_loss = _loss(reference, inputs)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for key, layer in model._layers.items():
        expected = ref_weights[layer["name"]].grad.flatten()[layer["indices"]]
        torch.testing.assert_close(model.values[key].grad, expected, rtol=1e-4, atol=1e-6)


def test_only_the_values_train_and_detach_restores_the_unet_bit_exactly():
    unet = make_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    model = SparseDeltaModel(unet, _masks(unet, "struct", "attn"))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [f"values.{k}" for k in model.values]
    optimizer = torch.optim.AdamW(model.values.parameters(), lr=1e-2)
    inputs = unet_inputs(unet)
    for _ in range(3):
        _loss(model, inputs).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.sync()
    changed = [k for k, v in unet.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k in {layer["name"] for layer in model._layers.values()} for k in changed)
    adapter = model.adapter(dtype=torch.float32, mask="struct")
    for key, layer in model._layers.items():
        fused = unet.state_dict()[layer["name"]].flatten()[layer["indices"]]
        torch.testing.assert_close(fused, before[layer["name"]].flatten()[layer["indices"]] + adapter.values[layer["name"]])
    model.detach()
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert "forward" not in unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.__dict__


def test_gradient_plan_uses_every_kind_of_part():
    g = torch.Generator().manual_seed(0)
    rows_out, cols_in, tokens = 48, 40, 7
    grad_out, inputs = torch.randn(tokens, rows_out, generator=g), torch.randn(tokens, cols_in, generator=g)
    dense = grad_out.t() @ inputs
    full_row = torch.arange(5 * cols_in, 6 * cols_in)
    column = torch.arange(rows_out) * cols_in + 3
    scattered = torch.tensor([7 * cols_in + 11, 20 * cols_in + 30])
    plan = _GradientPlan(torch.unique(torch.cat([full_row, column, scattered])), rows_out, cols_in)
    assert {p[0] for p in plan.parts} == {"rows", "cols", "pairs"}
    idx = torch.unique(torch.cat([full_row, column, scattered]))
    torch.testing.assert_close(plan.gradient(grad_out, inputs), dense.flatten()[idx])
    dense_idx = torch.randperm(rows_out * cols_in, generator=g)[: rows_out * cols_in // 3].sort().values
    plan = _GradientPlan(dense_idx, rows_out, cols_in)
    assert [p[0] for p in plan.parts] == ["dense"]
    torch.testing.assert_close(plan.gradient(grad_out, inputs), dense.flatten()[dense_idx])


@pytest.mark.parametrize("variant", ["shira", "peft-lora", "peft-shira"])
def test_train_benchmark_variants_run_with_equal_parameter_counts(variant):
    from shira_diffusion.bench.train import run_variant

    unet = make_unet()
    result = run_variant(variant, rank=2, latent=8, steps=1, unet=unet)
    weights = target_weights(make_unet(), "attn")
    assert result["trainable_params"] == sum(2 * (w.shape[0] + w.shape[1]) for w in weights.values())
    assert result["step_ms"] > 0 and result["peak_mb_above_loaded"] >= 0 and result["saved_for_backward_mb"] > 0
    # The adapter's own activations: each adapted layer's input (which no frozen layer keeps here) at
    # least; PEFT SHiRA's dense W + delta per layer on top.
    own = result["saved_by_adapter_mb"]
    assert 0 < own < result["saved_for_backward_mb"]
    if variant == "peft-shira":
        assert own * 2**20 > sum(w.numel() * w.element_size() for w in weights.values())


def test_train_benchmark_runs_under_bf16_autocast():
    from shira_diffusion.bench.train import run_variant

    result = run_variant("shira", rank=2, latent=8, steps=1, unet=make_unet(), dtype="bf16")
    assert result["step_ms"] > 0 and result["saved_for_backward_mb"] > 0
