"""``shira bench app`` end to end, small: the app started as ``python app.py``, two clients."""

import pytest

from shira_diffusion.bench.app import bench_app, format_app_table, mixes


def test_mixes_differ():
    chosen = mixes(8)
    assert len({tuple(m) for m in chosen}) == 8 and all(len(m) == 2 for m in chosen)


@pytest.mark.slow
def test_bench_app_serves_and_checks_every_image():
    result = bench_app(steps=2, clients=2, repeats=2, threads=1)
    assert result["all_pixel_equal"] and result["pixel_equal"] == [True, True]
    assert result["start_s"] > 0 and result["image_s"] > 0 and result["switch_ms"] >= 0
    table = format_app_table(result)
    assert "start (`python app.py` to serving)" in table and "2 of 2" in table
