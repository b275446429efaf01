"""The app's Transfer tab and the Styles tab's LoRA conversion, driven through the page's own event
functions (``demo.fns`` by API name) on the bundled toy bases with tiny settings: a catalogue style
and an uploaded LoRA carried to toy-sdxl land in the user's catalogue with their report, a stop
saves nothing, bad input comes back as one clear ``gr.Error``, a converted LoRA becomes a style."""

import os
import shutil

import gradio as gr
import pytest
from PIL import Image

from shira_diffusion.bundled.specs import adapter_path
from shira_diffusion.catalog import BUNDLED_ROOT, user_root
from shira_diffusion.app import build_demo
from shira_diffusion.app.service import AppService
from shira_diffusion.app.uploads import app_home

HATCHING_IMAGES = adapter_path("hatching", "toy-sd").parent / "images"
TINY = {"calibration": 2, "max_draws": 1, "report_images": 1}  # TransferConfig fields the page leaves at defaults


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("shira-home")
    old = os.environ.get("SHIRA_HOME")
    os.environ["SHIRA_HOME"] = str(home)
    try:
        yield build_demo(AppService("toy-sd"))
    finally:
        if old is None:
            os.environ.pop("SHIRA_HOME", None)
        else:
            os.environ["SHIRA_HOME"] = old


def event(demo, api_name):
    return next(f.fn for f in demo.fns.values() if f.api_name == api_name)


def transfer_inputs(adapter=None, style=None, source="toy-sd", target="toy-sdxl", seeds=None, synthetic=1, steps=2,
                    sample_steps=1, kind="shira", name="moved"):
    return adapter, style, source, target, seeds, synthetic, steps, sample_steps, kind, name


@pytest.fixture(scope="module")
def moved(demo):
    """hatching (bundled, toy-sd) carried to toy-sdxl through the Transfer tab: its updates."""
    return list(event(demo, "transfer")(*transfer_inputs(style="hatching", name="hatching-moved")))


def test_a_catalogue_style_lands_in_the_target_bases_catalogue_with_its_report(demo, moved):
    service = demo.shira_service
    job_id, text, sheet, report = moved[-1]
    job = service.transfers.jobs[job_id]
    assert job.stages[:3] == ["prompts", "teacher and filter", "student"]  # progress by stage
    shown = [u[1].split(": ")[1].split(" (")[0] for u in moved[:-1]]  # the page polls: it shows some of them
    assert shown[1] == "prompts" and set(shown[1:]) <= {*job.stages, "saving the style"}
    assert job.status == "done", job.message
    assert "acceptance" in text and "kept / drawn" in text and "MMD" in text
    record = service.catalog().get("hatching-moved")
    assert record.source == "user" and "hatching-moved" in [r.name for r in service.styles("toy-sdxl")]
    assert record.trigger == "vrt" and record.thumbnail_path() is not None
    assert len(list((record.folder / "images").glob("*.png"))) == 5  # hatching's first 5 training images
    assert record.entry("toy-sdxl").measurements["transfer"]["kept"] == 1
    # the page shows a copy beside the thumbnails: the styles folder itself is never served
    assert sheet.startswith(str(app_home() / "static")) and Image.open(sheet).size[1] == 3 * 64  # source, student, base
    assert (record.folder / "hatching-moved.toy-sdxl.transfer.png").read_bytes() == open(sheet, "rb").read()
    assert report["filter"]["kept"] == 1 and (record.folder / "hatching-moved.toy-sdxl.transfer.json").is_file()
    assert not (BUNDLED_ROOT / "hatching-moved").exists()
    assert not any((app_home() / "transfers").iterdir())  # the work folder goes once the style is saved


def test_an_uploaded_lora_with_uploaded_seeds_becomes_a_lora_style(demo, tmp_path):
    service = demo.shira_service
    seeds = []
    for stem in ("0000", "0001"):
        for ext in (".png", ".txt"):
            shutil.copy(HATCHING_IMAGES / f"{stem}{ext}", tmp_path / f"{stem}{ext}")
            seeds.append(str(tmp_path / f"{stem}{ext}"))
    job = service.transfers.start(str(adapter_path("hatching", "toy-sd", "lora")), None, "toy-sd", "toy-sdxl", seeds,
                                  name="inked", kind="lora", synthetic=1, steps=1, sample_steps=1,
                                  options=TINY)
    job.thread.join()
    assert job.status == "done", job.message
    record = service.catalog().get("inked")
    assert record.has_adapter("toy-sdxl", "lora") and not record.has_adapter("toy-sdxl")
    assert len(list((record.folder / "images").glob("*.png"))) == 2
    assert job.report["source"]["kind"] == "lora" and job.report["target"]["kind"] == "lora"


def test_one_of_your_styles_gains_an_adapter_for_another_base(demo, moved):
    """A user style carried back under its own name: the same style, now for both bases, its own
    images (the seeds) and thumbnail kept."""
    service = demo.shira_service
    before = service.catalog().get("hatching-moved")
    thumbnail = before.thumbnail_path().read_bytes()
    job = service.transfers.start(None, "hatching-moved", "toy-sdxl", "toy-sd", name="hatching-moved", synthetic=1,
                                  steps=1, sample_steps=1, options=TINY)
    job.thread.join()
    assert job.status == "done", job.message
    after = service.catalog().get("hatching-moved")
    assert after.bases() == ["toy-sd", "toy-sdxl"] and after.description == before.description
    assert len(list((after.folder / "images").glob("*.png"))) == 5 and after.thumbnail_path().read_bytes() == thumbnail


def test_stop_ends_a_run_and_saves_nothing(demo):
    service = demo.shira_service
    job = service.transfers.start(None, "pastel", "toy-sd", "toy-sdxl", name="stopped", synthetic=50, steps=500)
    job.stop.set()
    job.thread.join()
    assert job.status == "stopped" and "nothing saved" in job.message
    assert "stopped" not in service.catalog()


@pytest.mark.parametrize("inputs, needle", [
    (transfer_inputs(adapter=str(adapter_path("hatching", "toy-sd"))), "no seed images"),
    (transfer_inputs(), "upload an adapter"),
    (transfer_inputs(style="hatching", target="toy-sd"), "both toy-sd"),
    (transfer_inputs(adapter=str(adapter_path("hatching", "toy-sdxl")), style="hatching"), "SDXL-family"),
    (transfer_inputs(style="hatching", name="pastel"), "bundled style's name"),
    (transfer_inputs(style="hatching", synthetic=0), "synthetic samples"),
    (transfer_inputs(style="no-such-style"), "no style 'no-such-style'"),
])
def test_bad_input_is_a_clear_error(demo, inputs, needle):
    with pytest.raises(gr.Error, match=needle):
        next(event(demo, "transfer")(*inputs))


def test_a_corrupt_file_is_a_clear_error(demo, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(gr.Error, match=r"^'bad\.safetensors: not a readable safetensors file"):
        next(event(demo, "transfer")(*transfer_inputs(adapter=str(bad), style="hatching")))
    assert event(demo, "cancel_transfer")("") == "Nothing of yours is being transferred."


def test_the_styles_tab_converts_an_uploaded_lora(demo, tmp_path):
    service = demo.shira_service
    lora = str(adapter_path("hatching", "toy-sd", "lora"))
    shown = event(demo, "inspect")(lora, "toy-sd")
    assert "LoRA file" in shown[0] and "Convert to SHiRA" in shown[0] and shown[3] == "hatching-shira"
    assert shown[-2]["visible"] and shown[-1]["visible"]  # the button and its rank field
    text, *_ = event(demo, "convert_lora")(lora, "hatching-sparse", "", "", None, "toy-sd", [])
    assert "relative error" in text and "hatching-sparse" in text
    record = service.catalog().get("hatching-sparse")
    assert "hatching-sparse" in [r.name for r in service.styles("toy-sd")] and record.thumbnail_path() is not None
    assert 0 < record.entry("toy-sd").measurements["converted"]["relative_error"] < 1
    with pytest.raises(gr.Error, match="not a LoRA file"):
        event(demo, "convert_lora")(str(adapter_path("hatching", "toy-sd")), "again", "", "", None, "toy-sd", [])
