"""The app served on a local port and driven through ``gradio_client``, as a visitor's page or a
script would: generate with one style and with a mix (pixel-equal to ``shira generate``), switch,
two clients at once, recipe PNGs, a good and a bad upload, a short training run that then
generates, a base that cannot be loaded. One server for the module, on toy-sd, few steps."""

import os
import re
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from shira_diffusion.app import build_demo
from shira_diffusion.app.recipe_png import read_recipe
from shira_diffusion.app.service import MAX_STYLES
from shira_diffusion.app.ui import launch_options

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on a blue background"
STEPS = 4
GUIDANCE = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("shira-home")
    old = os.environ.get("SHIRA_HOME")
    os.environ["SHIRA_HOME"] = str(home)
    demo = build_demo()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                **launch_options())
    try:
        yield demo
    finally:
        demo.close()
        if old is None:
            os.environ.pop("SHIRA_HOME", None)
        else:
            os.environ["SHIRA_HOME"] = old


@pytest.fixture(scope="module")
def client(served):
    return Client(served.local_url, verbose=False)


def generate(client, styles, seed=3, count=1, compare=False, base="toy-sd"):
    """/generate with [(name, weight)]: (image paths, status text)."""
    weights = [w for _, w in styles] + [1.0] * (MAX_STYLES - len(styles))
    gallery, status = client.predict(base, [n for n, _ in styles], *weights, PROMPT, seed, STEPS, GUIDANCE, count,
                                     compare, api_name="/generate")
    return [item["image"] for item in gallery], status


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def reference(styles, seed=3):
    """What ``generate()`` (the function ``shira generate`` calls) makes on a fresh pipeline."""
    from shira_diffusion.bases import load_pipeline
    from shira_diffusion.generate import generate as library_generate

    if not hasattr(reference, "pipe"):
        reference.pipe = load_pipeline("toy-sd")
        reference.pipe.set_progress_bar_config(disable=True)
    image = library_generate(reference.pipe, [PROMPT], seed=seed, steps=STEPS, guidance_scale=GUIDANCE,
                             styles=styles, base_name="toy-sd")[0]
    return np.asarray(image.convert("RGB"))


def switched_ms(status: str) -> float:
    return float(re.search(r"switched in ([0-9.]+) ms", status).group(1))


def test_a_mix_is_pixel_equal_to_the_cli(client, tmp_path):
    from shira_diffusion.cli import main

    paths, status = generate(client, [("hatching", 0.8), ("pastel", 0.6)])
    out = tmp_path / "cli.png"
    main(["generate", "--base", "toy-sd", "--prompt", PROMPT, "--style", "hatching=0.8", "--style", "pastel=0.6",
          "--seed", "3", "--steps", str(STEPS), "--guidance", str(GUIDANCE), "--out", str(out)])
    assert np.array_equal(pixels(paths[0]), pixels(out))
    assert "switched in" in status
    recipe = read_recipe(paths[0])
    assert recipe == {"base": "toy-sd", "styles": [["hatching", 0.8], ["pastel", 0.6]], "prompt": PROMPT, "seed": 3,
                      "steps": STEPS, "guidance": GUIDANCE}


def test_one_style_then_a_switch(client):
    first, _ = generate(client, [("frame", 1.0)])
    second, status = generate(client, [("night", 1.0)])
    assert np.array_equal(pixels(second[0]), reference([("night", 1.0)]))
    assert not np.array_equal(pixels(first[0]), pixels(second[0]))
    assert switched_ms(status) < 1000  # the bench holds the real figure (toy UNet: a few ms)


def test_two_clients_at_once_each_get_their_own_mix(served):
    mixes = [[("outline", 1.0), ("halftone", 0.5)], [("pastel", 1.0), ("frame", 0.7)]]
    results = [None, None]

    def run(i):
        results[i] = generate(Client(served.local_url, verbose=False), mixes[i], seed=5 + i)[0][0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, mix in enumerate(mixes):
        assert np.array_equal(pixels(results[i]), reference(mix, seed=5 + i)), f"mix {i}"


def test_batch_and_compare(client):
    paths, _ = generate(client, [("hatching", 1.0)], seed=10, count=2)
    assert [read_recipe(p)["seed"] for p in paths] == [10, 11]
    paths, status = generate(client, [("hatching", 1.0), ("night", 0.5)], compare=True)
    labels = [read_recipe(p)["styles"] for p in paths]
    assert labels == [[], [["hatching", 1.0]], [["night", 0.5]], [["hatching", 1.0], ["night", 0.5]]]
    assert np.array_equal(pixels(paths[0]), reference([]))


def test_a_dropped_png_fills_the_controls(client):
    paths, _ = generate(client, [("pastel", 0.6)], seed=42)
    out = client.predict(handle_file(paths[0]), api_name="/load_recipe")
    assert out[0] == "toy-sd" and out[2]["value"] == ["pastel"] and out[3]["value"] == 0.6
    assert PROMPT in out and 42 in out and "Recipe loaded" in out[-1]


def test_good_and_bad_uploads(client, tmp_path):
    good = tmp_path / "my frame.safetensors"
    shutil.copy(ROOT / "styles" / "frame" / "frame.toy-sd.safetensors", good)
    text, _, meta = client.predict(handle_file(str(good)), "toy-sd", api_name="/inspect")[:3]
    assert "**SD**-family" in text and meta["base_arch"] == "sd"
    status = client.predict(handle_file(str(good)), "myframe", "", "", "toy-sd", [], api_name="/add_style")[0]
    assert "Added **myframe**" in status
    paths, _ = generate(client, [("myframe", 1.0)])
    assert np.array_equal(pixels(paths[0]), reference([("frame", 1.0)]))  # the same adapter file

    downloaded = client.predict("myframe", api_name="/download_style")
    assert [Path(f).read_bytes() for f in downloaded] == [good.read_bytes()]
    assert "Deleted **myframe**" in client.predict("myframe", "toy-sd", ["myframe"], api_name="/delete_style")[0]
    with pytest.raises(Exception, match="no style 'myframe'"):
        generate(client, [("myframe", 1.0)])

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not an adapter at all")
    text = client.predict(handle_file(str(junk)), "toy-sd", api_name="/inspect")[0]
    assert text.startswith("**This file cannot be used:**")
    with pytest.raises(Exception, match="not a valid safetensors|cannot be used|not a shira"):
        client.predict(handle_file(str(junk)), "junk", "", "", "toy-sd", [], api_name="/add_style")
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    assert "LoRA file" in client.predict(handle_file(str(lora)), "toy-sd", api_name="/inspect")[0]
    # the app keeps serving after bad files
    assert generate(client, [("frame", 1.0)])[0]


def test_a_local_diffusers_folder_is_a_base_when_the_operator_offers_it(client, toy_pipeline_folders):
    from shira_diffusion.app.service import AppService

    folder = toy_pipeline_folders["sd"]
    # a visitor's path is never loaded: one refusal, whether or not the folder exists
    status = client.predict(folder, [], *[1.0] * MAX_STYLES, api_name="/load_base")[0]
    assert "cannot be used" in status and "not offered here" in status and folder not in status
    with pytest.raises(Exception, match="not offered here"):
        generate(client, [], base=folder)
    service = AppService(default_base=folder)  # SHIRA_BASE=folder: the operator offers it
    assert folder in service.base_choices() and service.base(folder).family == "sd"
    assert service.generate(folder, [], PROMPT, seed=3, steps=STEPS).images


def test_a_base_that_is_not_offered_says_so(client):
    status = client.predict("nobody/no-such-model", [], *[1.0] * MAX_STYLES, api_name="/load_base")[0]
    assert "cannot be used" in status and "not offered here; choose one of: toy-sd, toy-sdxl" in status
    with pytest.raises(Exception, match="not offered here"):
        generate(client, [], base="nobody/no-such-model")
    assert generate(client, [])[0]


def test_a_short_training_run_adds_a_style_that_generates(client, served):
    images = sorted((ROOT / "styles" / "hatching" / "images").glob("000[0-3].*"))
    job = client.submit([handle_file(str(p)) for p in images], "", "quickink", "qzk", "toy-sd", "struct", 2,
                        api_name="/train")
    updates = [update[1] for update in job]
    assert "done" in job.result()[1], job.result()[1]
    assert any("step 1 of 2" in u for u in updates) or any("step 2 of 2" in u for u in updates)
    record = served.shira_service.catalog().get("quickink")
    assert record.source == "user" and record.trigger == "qzk" and record.thumbnail_path() is not None
    paths, status = generate(client, [("quickink", 1.0)])
    assert read_recipe(paths[0])["styles"] == [["quickink", 1.0]]
    # a run that cannot start says why, and the app keeps serving
    with pytest.raises(Exception, match="no training images|already have"):
        client.predict([], "", "quickink", "", "toy-sd", "struct", 2, api_name="/train")


def test_a_training_run_can_be_stopped(client, served):
    import time

    images = sorted((ROOT / "styles" / "night" / "images").glob("000[0-3].*"))
    job = client.submit([handle_file(str(p)) for p in images], "", "stopped-ink", "", "toy-sd", "struct", 500,
                        api_name="/train")
    deadline = time.time() + 240
    while time.time() < deadline:
        running = served.shira_service.training.running()
        if running is not None and running.name == "stopped-ink" and running.step >= 1:
            break
        time.sleep(0.2)
    assert "Stopping **stopped-ink**" in client.predict("", api_name="/cancel_training")
    assert "stopped at step" in job.result()[1]
    assert "stopped-ink" not in served.shira_service.catalog()


def test_the_mix_panel_through_the_api(client, served, tmp_path, monkeypatch):
    import json
    import time

    monkeypatch.setenv("SHIRA_FUSION_DIR", str(tmp_path))  # the served app reads it at each request
    pair = "hatching+pastel"
    stored = {"base": "toy-sd", "prompts": 40, "weight": 1.0, "conflicting": [["pastel", "night"]],
              "methods": {"shira-slots": {"pairs": {pair: {"retention": {"hatching": 0.94, "pastel": 0.88}}}},
                          "lora": {"pairs": {pair: {"retention": {"hatching": 0.61, "pastel": 0.9}}}}}}
    (tmp_path / "fusion-toy-sd.json").write_text(json.dumps(stored))
    weights = [1.0] * MAX_STYLES

    text, image, data = client.predict("toy-sd", ["hatching", "pastel"], *weights, api_name="/mix_report")
    assert "**hatching** keeps 94 % of its strength in this mix; as LoRAs 61 %" in text
    # A mix takes the bundled styles' slot adapters: disjoint entries, measured as "shira-slots".
    assert "**hatching** and **pastel** overlap on 0 % of their entries (they share no weight)" in text
    assert data["pairs"]["hatching+pastel"]["method"] == "shira-slots" and Image.open(image).size[0] > 300
    measured = served.shira_service.mix_cache.measured

    start = time.perf_counter()
    again = client.predict("toy-sd", ["pastel", "hatching"], *weights, api_name="/mix_report")
    assert time.perf_counter() - start < 5 and served.shira_service.mix_cache.measured == measured  # from the cache
    assert again[2]["pairs"]["pastel+hatching"]["weight_space"] == data["pairs"]["hatching+pastel"]["weight_space"]

    text = client.predict("toy-sd", ["pastel", "night"], *weights, api_name="/mix_report")[0]
    assert "their looks erase each other" in text
    text, image, _ = client.predict("toy-sd", ["hatching"], *weights, api_name="/mix_report")
    assert "Nothing to mix" in text and image is None
    (tmp_path / "fusion-toy-sd.json").unlink()
    text = client.predict("toy-sd", ["hatching", "pastel"], *weights, api_name="/mix_report")[0]
    assert "Not measured yet for this base; `shira eval fusion --base toy-sd --json` measures it" in text
    with pytest.raises(Exception, match="no style 'nope'"):
        client.predict("toy-sd", ["hatching", "nope"], *weights, api_name="/mix_report")
