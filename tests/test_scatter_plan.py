import pytest
import torch

from shira_diffusion.core.scatter_plan import ScatterPlan
from shira_diffusion.core.masks import rand_mask, struct_mask, topk_mask


def _cases():
    g = torch.Generator().manual_seed(0)
    yield "struct-square", (320, 320), struct_mask((320, 320), 16 * 640)
    yield "struct-wide", (128, 768), struct_mask((128, 768), 8 * (128 + 768))
    yield "struct-tall", (1280, 40), struct_mask((1280, 40), 2 * 1320)
    yield "struct-conv", (64, 32, 3, 3), struct_mask((64, 32, 3, 3), 4 * (64 + 288))
    yield "struct-tiny", (8, 8), struct_mask((8, 8), 10)
    yield "rand", (256, 256), rand_mask((256, 256), 3000, g)
    yield "wm", (200, 300), topk_mask(torch.randn(200, 300, generator=g), 1200)
    yield "rows+noise", (100, 100), torch.cat([torch.arange(0, 3000), torch.tensor([5000, 7777, 9999])])


@pytest.mark.parametrize("label, shape, indices", list(_cases()), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_plan_scatters_and_gathers_exactly_the_indexed_entries(label, shape, indices, dtype):
    plan = ScatterPlan(indices)
    weight = torch.randn(shape).to(dtype)
    values = torch.randn(len(indices)).to(dtype)
    expected = weight.clone().view(-1)
    expected[indices] = values
    plan.scatter(weight, plan.to_plan_order(values))
    assert torch.equal(weight.view(-1), expected)
    assert torch.equal(plan.to_sorted_order(plan.gather(weight)), values)


def test_structured_masks_become_few_blocks():
    plan = ScatterPlan(struct_mask((320, 320), 16 * 640))
    assert len(plan.blocks) <= 6
    assert len(plan.remainder) < 0.01 * plan.numel


def test_random_masks_fall_back_to_index_put():
    plan = ScatterPlan(rand_mask((256, 256), 3000, torch.Generator().manual_seed(1)))
    assert plan.blocks == [] and len(plan.remainder) == 3000


def test_plan_rejects_non_contiguous_weights():
    plan = ScatterPlan(torch.arange(100))
    with pytest.raises(RuntimeError, match="contiguous"):
        plan.scatter(torch.randn(20, 20).t(), torch.zeros(100))
