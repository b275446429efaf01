"""``shira eval transfer`` at toy sizes: either direction, LoRA source to SHiRA student, chosen rows."""

import pytest

from shira_diffusion.errors import ShiraError
from shira_diffusion.transfer.evaluate import eval_transfer, format_transfer_table


def test_lora_on_toy_sdxl_to_shira_on_toy_sd(tmp_path):
    said = []
    kwargs = dict(source="toy-sdxl", target="toy-sd", variant="lora", kind="shira", rows=("transfer",), steps=2,
                  synthetic=2, prompts=2, sample_steps=2, progress=False, log=said.append)
    result = eval_transfer(["pastel"], str(tmp_path), **kwargs)
    rows = result["styles"]["pastel"]
    assert set(rows) == {"source", "transfer", "seconds"}
    assert rows["transfer"]["filter"]["kept"] == 2
    assert (tmp_path / "pastel" / "pastel.transfer.safetensors").is_file()
    table = format_transfer_table(result)
    assert table.startswith("toy-sdxl -> toy-sd (lora -> shira)") and "| pastel |" in table
    eval_transfer(["pastel"], str(tmp_path), **kwargs)
    assert said[-1] == "pastel: already measured, skipped"


def test_unknown_row():
    with pytest.raises(ShiraError, match="unknown row"):
        eval_transfer(["pastel"], "unused", rows=("teacher",))
