"""shira-diffusion app: the Gradio UI (and the Hugging Face Space entry point).

Run ``python app.py`` and open the printed address. This first version inspects adapter files;
generation, mixing and switching on the bundled toy bases join it as those land.
"""

from __future__ import annotations

import gradio as gr

from shira_diffusion import ShiraError, SparseAdapter
from shira_diffusion.core.summary import describe

TENSOR_COLUMNS = ["name", "kind", "shape", "entries", "density", "lora_equivalent_rank", "abs_max", "rms"]


def inspect_adapter(path: str | None):
    """Validate an uploaded adapter file: (summary markdown, per-tensor rows, metadata dict)."""
    if not path:
        return "Upload a `.safetensors` adapter to inspect it.", [], {}
    try:
        summary = describe(SparseAdapter.load(path))
    except ShiraError as exc:
        return f"**This file cannot be used:** {exc}", [], {}
    rows = [[row[c] if c != "shape" else "x".join(map(str, row[c])) for c in TENSOR_COLUMNS] for row in summary["tensors"]]
    meta = {k: v for k, v in summary.items() if k != "tensors"}
    text = (
        f"### {summary['name']}\n"
        f"A **{summary['base_arch'].upper()}**-family adapter with mask **{summary['mask']}**: "
        f"{summary['params']:,} trained entries ({summary['density']:.2%} of {len(rows)} weight tensors), "
        f"values in {summary['dtype']}."
        + (f" Trigger word: `{summary['trigger']}`." if summary["trigger"] else "")
    )
    return text, rows, meta


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="shira-diffusion") as demo:
        gr.Markdown(
            "# shira-diffusion\n"
            "Sparse high-rank (SHiRA) style adapters for Stable Diffusion: 1-2 % of the base weights, "
            "fused in place, switched in milliseconds."
        )
        with gr.Tab("Inspect an adapter"):
            upload = gr.File(label="Adapter (.safetensors)", file_types=[".safetensors"], type="filepath")
            summary = gr.Markdown("Upload a `.safetensors` adapter to inspect it.")
            tensors = gr.Dataframe(headers=TENSOR_COLUMNS, label="Adapted tensors", interactive=False)
            metadata = gr.JSON(label="Metadata")
            upload.change(inspect_adapter, inputs=upload, outputs=[summary, tensors, metadata], api_name="inspect")
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.queue(max_size=32).launch()
