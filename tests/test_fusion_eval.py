"""``shira eval fusion`` on the bundled toy-sd base, at toy sizes: pairs, triples, a resumable file."""

import json

import pytest

from shira_diffusion.bundled.specs import STYLES
from shira_diffusion.errors import ShiraError
from shira_diffusion.fusion import evaluate as fusion_eval
from shira_diffusion.fusion.evaluate import eval_fusion, format_fusion_table, style_pairs, style_triples

THREE = ["frame", "outline", "hatching"]


def test_pairs_and_triples_leave_out_looks_that_erase_each_other():
    pairs, conflicting = style_pairs(list(STYLES))
    assert len(pairs) + len(conflicting) == 15
    assert sorted(map(sorted, conflicting)) == [["halftone", "hatching"], ["night", "pastel"]]
    triples = style_triples(list(STYLES))
    assert len(triples) == 20 - 8  # each conflicting pair sits in 4 of the 20 triples, never both in one
    assert not any({"hatching", "halftone"} <= set(t) or {"pastel", "night"} <= set(t) for t in triples)


def test_pairs_triples_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "fusion.json"
    said = []
    result = eval_fusion("toy-sd", THREE, ["shira-shared", "ties"], count=2, steps=2, triples=1, out=str(out),
                         progress=said.append)
    for method in ("shira-shared", "ties"):
        m = result["methods"][method]
        assert sorted(m["pairs"]) == ["frame+hatching", "frame+outline", "outline+hatching"]
        assert list(m["triples"]) == ["frame+outline+hatching"]
        row = m["triples"]["frame+outline+hatching"]
        assert set(row["retention"]) == set(THREE) and 0.0 <= row["content"] <= 1.0
        assert m["mean_retention"] is not None and m["triple_summary"]["mean_retention"] is not None
    # One adapter alone is the same whether the method then sums or TIES-merges: drawn once.
    assert result["methods"]["ties"]["alone"] == result["methods"]["shira-shared"]["alone"]
    assert sum("alone" in line for line in said) == len(THREE)
    assert json.loads(out.read_text())["methods"].keys() == {"shira-shared", "ties"}
    table = format_fusion_table(result)
    assert "| frame+outline+hatching |" in table and "triples:" in table

    # A rerun with the same settings loads nothing: every method is in the file.
    monkeypatch.setattr(fusion_eval, "load_pipeline", lambda base: pytest.fail("a finished method was redone"))
    again = eval_fusion("toy-sd", THREE, ["shira-shared", "ties"], count=2, steps=2, triples=1, out=str(out))
    assert again["methods"] == result["methods"]
    with pytest.raises(ShiraError, match="other settings"):
        eval_fusion("toy-sd", THREE, ["shira-shared"], count=3, steps=2, triples=1, out=str(out))


def test_bad_triple_count():
    with pytest.raises(ShiraError, match="prompts per triple"):
        eval_fusion("toy-sd", THREE, ["shira-shared"], count=2, triples=3)


def test_label_free_measure_in_eval_fusion():
    """The feature measure needs no look: it compares with each style's own training images."""
    result = eval_fusion("toy-sd", ["frame", "outline"], ["shira-shared"], count=2, steps=2, measure="features")
    m = result["methods"]["shira-shared"]
    assert result["measure"] == "features"
    assert set(m["alone"]) == {"frame", "outline"} and all(0.0 <= v <= 1.0 for v in m["alone"].values())
    assert list(m["pairs"]) == ["frame+outline"]
    with pytest.raises(ShiraError, match="unknown style measure"):
        eval_fusion("toy-sd", THREE, ["shira-shared"], count=2, measure="clipscore")


@pytest.mark.slow
def test_style_detectors_as_the_measure_in_eval_fusion():
    """Each style's detector (fit from its training images where none is stored beside its adapter)
    measures the styles alone and in the pair."""
    detected = eval_fusion("toy-sd", ["frame", "outline"], ["shira-shared"], count=2, steps=2, measure="detector")
    d = detected["methods"]["shira-shared"]
    assert detected["measure"] == "detector" and all(0.0 <= v <= 1.0 for v in d["alone"].values())
    assert set(d["pairs"]["frame+outline"]["strength"]) == {"frame", "outline"}
