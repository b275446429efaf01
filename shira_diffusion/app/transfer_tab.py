"""The Transfer tab: carry a style (an uploaded SHiRA or LoRA file, or a catalogue style) from one
base to another with synthetic data (``shira transfer``), in the background, with progress and a
stop button; the student joins the target base's styles and the report's PNG and numbers show."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from ..errors import ShiraError
from ..transfer.pipeline import KINDS
from .service import MAX_STEPS, AppService, base_name
from .checks import checked_text, finite, scrub, session_of, user_errors
from .training_jobs import MAX_TRAIN_STEPS
from .transfer_jobs import MAX_SYNTHETIC, SEED_IMAGES, TransferJobs, key_numbers, student_name
from .uploads import IMAGE_SUFFIXES, sweep_upload_cache

POLL_SECONDS = 0.5
DEFAULT_SYNTHETIC = 30  # the settings of docs/transfer.md's figures (a few minutes per style on a CPU)
DEFAULT_STEPS = 400


def numbers_text(report: dict) -> str:
    n = key_numbers(report)
    rate = f"{n['acceptance_rate']:.0%}" if n["acceptance_rate"] is not None else "-"
    filled = f", {n['filled']} filled" if n.get("filled") else ""
    return (f"acceptance **{rate}** · kept / drawn **{n['kept']} / {n['drawn']}**{filled} · "
            f"MMD to the seeds **{n['mmd_before']} -> {n['mmd_after']}** · **{n['seconds']} s** in all")


def scrubbed(value):
    """A report as the page shows it: every string without the server's folders."""
    if isinstance(value, dict):
        return {k: scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrubbed(v) for v in value]
    return scrub(value) if isinstance(value, str) else value


def other_base(choices: list[str], base: str) -> str | None:
    return next((c for c in choices if base_name(c) != base_name(base)), None)


def build_transfer_tab(service: AppService) -> dict:
    jobs = TransferJobs(service)
    service.transfers = jobs
    choices = service.base_choices()
    gr.Markdown("Carry a style to another base with synthetic data (Trans-LoRA): the source base with the style "
                "draws images imitating a few real ones, a discriminator keeps those that look real, and a new "
                "adapter trains on them on the target base. Runs in the background; the page stays usable.")
    with gr.Row():
        adapter = gr.File(label="Adapter: SHiRA, diffusers/PEFT or kohya LoRA (.safetensors)", type="filepath",
                          file_types=[".safetensors"], height=120, elem_id="transfer-adapter")
        style = gr.Dropdown([r.name for r in service.styles(service.default_base)], value=None,
                            allow_custom_value=True, label="...or a style of the source base",
                            info=f"with no seeds uploaded, its first {SEED_IMAGES} training images are the seeds",
                            elem_id="transfer-style")
    with gr.Row():
        source = gr.Dropdown(choices, value=service.default_base, allow_custom_value=True, label="Source base",
                             elem_id="transfer-source")
        target = gr.Dropdown(choices, value=other_base(choices, service.default_base), allow_custom_value=True,
                             label="Target base", elem_id="transfer-target")
    seeds = gr.File(label="Seed images with same-name .txt captions, or a .zip (optional with a style)",
                    file_count="multiple", type="filepath", file_types=[*IMAGE_SUFFIXES, ".txt", ".zip"], height=120,
                    elem_id="transfer-seeds")
    with gr.Row():
        synthetic = finite(gr.Number(DEFAULT_SYNTHETIC, label="Synthetic samples kept", precision=0, minimum=1,
                                     maximum=MAX_SYNTHETIC))
        steps = finite(gr.Number(DEFAULT_STEPS, label="Student steps", precision=0, minimum=1, maximum=MAX_TRAIN_STEPS))
        sample_steps = finite(gr.Number(20, label="Sampling steps (teacher, report)", precision=0, minimum=1,
                                        maximum=MAX_STEPS))
        kind = gr.Radio(list(KINDS), value="shira", label="Output")
        name = gr.Textbox(label="New style name", elem_id="transfer-name")
    with gr.Row():
        start = gr.Button("Transfer", variant="primary", elem_id="transfer-start")
        stop = gr.Button("Stop", variant="stop", elem_id="transfer-stop")
    job_id = gr.Textbox(visible=False)
    status = gr.Markdown(elem_id="transfer-status")
    sheet = gr.Image(label="Source on the old base · student on the new base · new base alone", type="filepath",
                     interactive=False, elem_id="transfer-sheet")
    with gr.Accordion("The report (JSON)", open=False):
        report_json = gr.JSON(label="Transfer report")

    def styles_of(source_value):
        try:
            return gr.update(choices=[r.name for r in service.styles(source_value)], value=None)
        except ShiraError:
            return gr.update(choices=[], value=None)

    @user_errors
    def suggested(style_value, target_value):
        return student_name(checked_text(style_value, "the style", 64), service.check_base(target_value))

    @user_errors
    def suggested_for_upload(path, target_value):
        return student_name(Path(path).name.split(".")[0] if isinstance(path, str) else "",
                            service.check_base(target_value))

    source.input(styles_of, source, style, api_visibility="private")
    style.input(suggested, [style, target], name, api_visibility="private")
    adapter.upload(suggested_for_upload, [adapter, target], name, api_visibility="private")

    @user_errors
    def run(adapter_value, style_value, source_value, target_value, seeds_value, synthetic_value, steps_value,
            sample_steps_value, kind_value, name_value, request: gr.Request = None, progress=gr.Progress()):
        sweep_upload_cache()  # uploads stay under their size bound
        job = jobs.start(adapter_value, style_value, source_value, target_value, seeds_value, name=name_value,
                         kind=kind_value, synthetic=synthetic_value, steps=steps_value,
                         sample_steps=sample_steps_value, owner=session_of(request))
        shown = None
        while True:
            finished = job.finished
            if (job.done, job.stage) != shown or finished:
                shown = (job.done, job.stage)
                progress((job.done, job.total), desc=f"{job.name}: {job.stage}")
                text = (f"**{job.name}** ({job.source} -> {job.target}): {job.stage} ({job.done} of {job.total}). "
                        f"{job.message}")
                if job.status == "done":
                    text = f"**{job.name}**: {job.message}.\n\n{numbers_text(job.report)}"
                yield job.id, text, job.sheet, scrubbed(job.report) or None
            if finished:
                break
            time.sleep(POLL_SECONDS)
        if job.status == "failed":
            raise gr.Error(f"transfer of {job.name} failed: {job.message}", print_exception=False)

    event = start.click(run, [adapter, style, source, target, seeds, synthetic, steps, sample_steps, kind, name],
                        [job_id, status, sheet, report_json], api_name="transfer", concurrency_limit=1)

    @user_errors
    def cancel(job_value, request: gr.Request = None):
        job = jobs.cancel(job_value, session_of(request))  # only this visitor's own run
        if job is None:
            return "Nothing of yours is being transferred."
        return f"Stopping **{job.name}** at the next step..."

    stop.click(cancel, job_id, status, api_name="cancel_transfer")
    return {"finished": event, "jobs": jobs, "source": source, "style": style, "styles_of": styles_of}
