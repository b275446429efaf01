"""The Train tab: upload images (files or a zip) with captions, start a run in the background,
watch its progress and loss, stop it; the finished style appears in the gallery."""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from ..core.masks import DEFAULT_MASK, MASK_STRATEGIES
from .checks import finite, session_of, user_errors
from .service import AppService
from .training_jobs import MAX_TRAIN_STEPS, TrainingJobs
from .uploads import IMAGE_SUFFIXES, sweep_upload_cache

POLL_SECONDS = 0.5
DEFAULT_STEPS = 1000  # the trainer's default (TrainConfig.max_train_steps)


def loss_frame(losses) -> pd.DataFrame:
    return pd.DataFrame({"step": list(range(1, len(losses) + 1)), "loss": [float(x) for x in losses]})


def build_train_tab(service: AppService, base: gr.Dropdown) -> dict:
    jobs = TrainingJobs(service)
    service.training = jobs
    gr.Markdown("Train a style from 5-50 images. Captions: a same-name `.txt` beside each image (also inside a "
                "zip), or one caption for all. Training runs in the background; the page stays usable.")
    files = gr.File(label="Images, captions (.txt) or a .zip", file_count="multiple", type="filepath",
                    file_types=[*IMAGE_SUFFIXES, ".txt", ".zip"], height=180, elem_id="train-files")
    with gr.Row():
        caption = gr.Textbox(label="One caption for all (used where an image has no .txt)", scale=2)
        name = gr.Textbox(label="Style name", elem_id="train-name")
        trigger = gr.Textbox(label="Trigger word (optional)")
    with gr.Row():
        mask = gr.Dropdown(list(MASK_STRATEGIES), value=DEFAULT_MASK, label="Mask")
        steps = finite(gr.Number(DEFAULT_STEPS, label="Steps", precision=0, minimum=1, maximum=MAX_TRAIN_STEPS))
    with gr.Row():
        start = gr.Button("Train", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
    job_id = gr.Textbox(visible=False)
    status = gr.Markdown(elem_id="train-status")
    plot = gr.LinePlot(loss_frame([]), x="step", y="loss", title="Training loss", height=260)

    @user_errors
    def run(files_value, caption_value, name_value, trigger_value, base_value, mask_value, steps_value,
            request: gr.Request = None, progress=gr.Progress()):
        sweep_upload_cache()  # uploads stay under their size bound
        job = jobs.start(files_value, name_value, base_value, caption=caption_value, trigger=trigger_value,
                         mask=mask_value, steps=DEFAULT_STEPS if steps_value is None else steps_value,
                         owner=session_of(request))
        shown = -1
        while True:
            finished = job.finished
            if job.step != shown or finished:
                shown = job.step
                progress((job.step, job.total), desc=f"training {job.name}")
                loss = f", loss {job.losses[-1]:.4f}" if job.losses else ""
                text = f"**{job.name}**: {job.status}, step {job.step} of {job.total}{loss}. {job.message}"
                yield job.id, text, loss_frame(job.losses)
            if finished:
                break
            time.sleep(POLL_SECONDS)
        if job.status == "failed":
            raise gr.Error(f"training {job.name} failed: {job.message}", print_exception=False)

    event = start.click(run, [files, caption, name, trigger, base, mask, steps], [job_id, status, plot],
                        api_name="train", concurrency_limit=1)

    @user_errors
    def cancel(job_value, request: gr.Request = None):
        job = jobs.cancel(job_value, session_of(request))  # only this visitor's own run
        if job is None:
            return "Nothing of yours is training."
        return f"Stopping **{job.name}** after this step..."

    stop.click(cancel, job_id, status, api_name="cancel_training")
    return {"finished": event, "jobs": jobs}
