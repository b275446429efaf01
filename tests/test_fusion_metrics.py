"""Fusion metrics against hand-computed cases, and Struct slots that never collide."""

import math

import pytest
import torch

from shira_diffusion.core.masks import SLOTS, mask_size, struct_slot_mask
from shira_diffusion.core.scatter_plan import ScatterPlan
from shira_diffusion.fusion.deltas import AdapterDeltas, load_deltas
from shira_diffusion.fusion.heatmap import pairwise_matrix, save_heatmaps
from shira_diffusion.fusion.weight_metrics import pair_metrics, pairwise_metrics, product_zero_share, spectral_norm_of_product


def sparse(name, matrix):
    matrix = torch.tensor(matrix, dtype=torch.float32)
    support = torch.nonzero(matrix.flatten()).flatten()
    return AdapterDeltas(name, "shira", {"w": matrix}, {"w": support})


def test_adapters_whose_rows_never_meet_do_not_interfere():
    result = pair_metrics(sparse("a", [[1, 0], [0, 0]]), sparse("b", [[0, 0], [0, 1]]))["overall"]
    assert result["awom"] == 0 and result["awor"] == 1 and result["jaccard"] == 0 and result["cosine"] == 0


def test_by_hand_a_shared_row():
    # A1^T A2 = [[3, 0], [6, 0]]: two of four entries non-zero, spectral norm sqrt(9 + 36).
    a, b = sparse("a", [[1, 2], [0, 0]]), sparse("b", [[3, 0], [0, 0]])
    layer = pair_metrics(a, b)["layers"]["w"]
    assert layer["awor"] == pytest.approx(0.5)
    assert layer["awom"] == pytest.approx(math.sqrt(45))
    assert layer["jaccard"] == pytest.approx(1 / 2)  # entries {0, 1} and {0}
    assert layer["cosine"] == pytest.approx(3 / (math.sqrt(5) * 3))


def test_spectral_norm_matches_the_dense_product_and_zero_share_counts_patterns():
    g = torch.Generator().manual_seed(0)
    a1, a2 = torch.randn(7, 5, generator=g), torch.randn(7, 4, generator=g)
    assert spectral_norm_of_product(a1, a2) == pytest.approx(float(torch.linalg.matrix_norm(a1.T @ a2, 2)), rel=1e-6)
    assert product_zero_share(a1, a2) == 0.0
    cancel_1, cancel_2 = torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0], [-1.0]])  # product is 0 by value
    assert product_zero_share(cancel_1, cancel_2) == 0.0  # ... but not by pattern


def test_pairwise_metrics_and_heatmap(tmp_path):
    adapters = [sparse("a", [[1, 0], [0, 0]]), sparse("b", [[0, 0], [0, 1]]), sparse("c", [[1, 1], [0, 0]])]
    pairs = pairwise_metrics(adapters)
    assert set(pairs) == {"a|b", "a|c", "b|c"}
    matrix = pairwise_matrix(["a", "b", "c"], pairs, "jaccard", diagonal=1.0)
    assert matrix[0, 2] == matrix[2, 0] == pytest.approx(0.5) and matrix[0, 1] == 0
    save_heatmaps(["a", "b", "c"], {"Jaccard": matrix}, str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_bundled_shira_styles_share_their_mask_and_lora_deltas_are_dense():
    from shira_diffusion.catalog import BUNDLED_ROOT

    night = load_deltas(BUNDLED_ROOT / "night" / "night.toy-sd.safetensors")
    pastel = load_deltas(BUNDLED_ROOT / "pastel" / "pastel.toy-sd.safetensors")
    overall = pair_metrics(night, pastel)["overall"]
    assert overall["jaccard"] == 1.0 and overall["awor"] == 0.0  # one Struct mask: every entry shared
    lora = load_deltas(BUNDLED_ROOT / "night" / "night.toy-sd.lora.safetensors")
    assert lora.kind == "lora" and set(lora.deltas) == set(night.deltas)


@pytest.mark.parametrize("shape", [(320, 320), (320, 768), (1280, 1280), (2560, 320), (128, 1152), (64, 64),
                                   (1024, 128), (32, 36)])
@pytest.mark.parametrize("rank", [2, 16])
def test_struct_slots_are_disjoint_and_exactly_sized(shape, rank):
    size = mask_size(shape, rank=rank)
    if size * SLOTS > shape[0] * shape[1]:
        pytest.skip("eight slots of this size do not fit")
    masks = [struct_slot_mask(shape, size, k) for k in range(SLOTS)]
    assert all(len(m) == size and bool((m[1:] > m[:-1]).all()) for m in masks)
    everything = torch.cat(masks)
    assert len(everything.unique()) == len(everything)  # pairwise disjoint


def test_a_large_slot_mask_is_still_a_few_strided_blocks():
    size = mask_size((1280, 1280), rank=16)
    plan = ScatterPlan(struct_slot_mask((1280, 1280), size, 3))
    assert len(plan.blocks) <= 4 and len(plan.remainder) == 0  # as few blocks as the shared Struct mask


def test_ties_keeps_lone_entries_and_resolves_sign_conflicts_by_hand():
    from shira_diffusion.core.adapter import SparseAdapter
    from shira_diffusion.fusion.ties import ties_merge

    def adapter(name, idx, vals):
        return SparseAdapter(indices={"w": torch.tensor(idx, dtype=torch.int32)},
                             values={"w": torch.tensor(vals, dtype=torch.float32)}, shapes={"w": (2, 4)},
                             base_arch="sd", name=name)

    a = adapter("a", [0, 1, 2], [1.0, 2.0, -1.0])
    b = adapter("b", [1, 2, 5], [4.0, 3.0, 7.0])
    merged = ties_merge([a, b], [1.0, 0.5])
    assert merged.indices["w"].tolist() == [0, 1, 2, 5]
    # entry 0: a alone (1); 1: both positive, mean of 2 and 2 (b at 0.5) = 2; 2: -1 vs +1.5: + wins, 1.5; 5: b alone 3.5
    assert merged.values["w"].tolist() == pytest.approx([1.0, 2.0, 1.5, 3.5])


def test_deltas_of_a_file_that_describes_its_mask(tmp_path):
    from conftest import make_adapter, make_unet

    unet = make_unet()
    a, b = make_adapter(unet, name="a", slot=0, rank=2), make_adapter(unet, name="b", slot=1, rank=2)
    for adapter in (a, b):
        adapter.with_mask_spec(adapter.name == "b" and 1 or 0).save(tmp_path / f"{adapter.name}.safetensors")
    da, db = load_deltas(tmp_path / "a.safetensors"), load_deltas(tmp_path / "b.safetensors")
    assert da.kind == "shira" and set(da.deltas) == set(a.indices)
    assert pair_metrics(da, db)["overall"]["jaccard"] == 0.0  # two slots share no entry
