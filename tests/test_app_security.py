"""The served app as a hostile visitor would try it, through ``gradio_client`` and raw HTTP: a style
or base is a name, never a server path (and no existence oracle); jobs belong to the session that
started them; every number and recipe is checked; only thumbnails and outputs are served; uploads
are removed; an unwritable home stops ``python app.py`` in one line; and every public endpoint
answers junk with a message. Each refusal leaves every file as it was."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from shira_diffusion.app import build_demo
from shira_diffusion.app.recipe_png import RECIPE_KEY
from shira_diffusion.app.service import MAX_STYLES
from shira_diffusion.app.ui import DELETE_CACHE, launch_options
from shira_diffusion.catalog import BUNDLED_ROOT
from shira_diffusion.errors import ShiraError

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
import httpx  # noqa: E402

from test_app_served import PROMPT, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAME = BUNDLED_ROOT / "frame" / "frame.toy-sd.safetensors"
WEIGHTS = [1.0] * MAX_STYLES
QUIET = "has not enabled verbose error reporting"  # gradio_client's text for an empty error


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("shira-home")
    saved = {k: os.environ.get(k) for k in ("SHIRA_HOME", "GRADIO_TEMP_DIR")}
    os.environ["SHIRA_HOME"] = str(home)
    os.environ["GRADIO_TEMP_DIR"] = str(home / "app" / "gradio")  # as serving_environment() sets it
    demo = build_demo()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                **launch_options())
    demo.home = home
    try:
        yield demo
    finally:
        demo.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def visitor(served):
    return Client(served.local_url, verbose=False)


@pytest.fixture(scope="module")
def stranger(served):
    return Client(served.local_url, verbose=False)


def files_under(*roots) -> dict:
    """Every file under ``roots`` with its size and modification time: what a refusal must not touch."""
    found = {}
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                info = path.stat()
                found[str(path)] = (info.st_size, info.st_mtime_ns)
    return found


def styles_state(served) -> dict:
    return files_under(BUNDLED_ROOT, served.home / "styles")


def refusal(call) -> str:
    """The message of a call that must be refused: non-empty, one visitor-facing line."""
    with pytest.raises(Exception) as info:
        call()
    message = str(info.value)
    assert message and QUIET not in message and "Traceback" not in message, message
    return message


def raw(served, api: str, data: list) -> tuple[str, object]:
    """One call through Gradio's HTTP API, values sent as given (NaN and all): (event, payload)."""
    body = json.dumps({"data": data})  # allow_nan: what a raw client can send
    url = f"{served.local_url}gradio_api/call/{api.strip('/')}"
    response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
    response.raise_for_status()
    stream = httpx.get(f"{url}/{response.json()['event_id']}", timeout=120).text
    events = [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("event: ")]
    payloads = [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("data: ")]
    return events[-1], json.loads(payloads[-1])


def raw_error(served, api: str, data: list) -> str:
    event, payload = raw(served, api, data)
    assert event == "error", (event, payload)
    assert isinstance(payload, dict) and payload.get("error"), payload  # never an empty error
    return payload["error"]


def generate_args(base="toy-sd", styles=(), steps=4, seed=0, guidance=5.0, count=1, prompt=PROMPT):
    return [base, list(styles), *WEIGHTS, prompt, seed, steps, guidance, count, False]


def no_server_folder(message: str, served) -> None:
    for folder in (served.home, ROOT, BUNDLED_ROOT, Path.home()):
        assert str(folder) not in message, message


# ---------------------------------------------------------------------------- item 2: names, never paths
PATHS = ["/etc/passwd", "/no/such/folder/passwd", str(FRAME), "../styles/frame/frame.toy-sd.safetensors",
         str(ROOT / "assets"), "frame.toy-sd.safetensors"]


def test_a_style_or_base_is_a_name_never_a_server_path(served, visitor):
    before = styles_state(served)
    for path in PATHS:
        for args, api in [(generate_args(base=path), "/generate"), (generate_args(styles=[path]), "/generate"),
                          ([path, ["frame", "pastel"], *WEIGHTS], "/mix_report"),
                          (["toy-sd", [path, "pastel"], *WEIGHTS], "/mix_report"), ([path], "/download_style"),
                          ([path, "toy-sd", []], "/delete_style"),
                          ([handle_file(str(FRAME)), "framed", "", "", path, []], "/add_style")]:
            message = refusal(lambda: visitor.predict(*args, api_name=api))
            assert "not offered here" in message or "no style" in message, (api, path, message)
            assert "__metadata__" not in message and "shira_format" not in message  # no header echoed
            no_server_folder(message, served)
        status = visitor.predict(path, [], *WEIGHTS, api_name="/load_base")[0]
        assert "not offered here" in status
        no_server_folder(status, served)
    # no existence oracle: a file that exists and one that does not get the same words
    exists = refusal(lambda: visitor.predict(*generate_args(base="/etc/passwd"), api_name="/generate"))
    missing = refusal(lambda: visitor.predict(*generate_args(base="/no/such/folder/passwd"), api_name="/generate"))
    assert exists == missing
    exists = refusal(lambda: visitor.predict(*generate_args(styles=[str(FRAME)]), api_name="/generate"))
    missing = refusal(lambda: visitor.predict(*generate_args(styles=[str(FRAME) + "x"]), api_name="/generate"))
    assert exists.replace("safetensorsx", "safetensors") == missing.replace("safetensorsx", "safetensors")
    assert styles_state(served) == before
    assert visitor.predict(*generate_args(styles=["frame"]), api_name="/generate")[0]  # names still work


def test_a_file_field_takes_uploads_only(served):
    before = styles_state(served)
    for api, tail in [("/inspect", ["toy-sd"]), ("/add_style", ["x", "", "", "toy-sd", []]), ("/load_recipe", []),
                      ("/transfer", [None, "toy-sd", "toy-sdxl", None, 1, 1, 1, "shira", "moved"])]:
        for path in ["/etc/passwd", str(FRAME), "../x.safetensors", "/proc/self/cwd/app.py"]:
            for value in (path, {"path": path, "meta": {"_type": "gradio.FileData"}}):
                message = raw_error(served, api, [value, *tail])
                assert "uploaded" in message, (api, value, message)
                no_server_folder(message, served)
    assert styles_state(served) == before


def test_a_recipe_names_an_offered_base(served, visitor, tmp_path):
    png = recipe_png(tmp_path / "base.png", base="/etc/passwd")
    message = refusal(lambda: visitor.predict(handle_file(str(png)), api_name="/load_recipe"))
    assert "not offered here" in message and "/etc" not in message


# ---------------------------------------------------------------------------- item 3: jobs by session
def test_a_training_run_belongs_to_its_visitor(served, visitor, stranger):
    images = sorted((BUNDLED_ROOT / "night" / "images").glob("000[0-3].*"))
    before = styles_state(served)
    job = visitor.submit([handle_file(str(p)) for p in images], "", "mine-only", "", "toy-sd", "struct", 500,
                         api_name="/train")
    deadline = time.time() + 240
    while time.time() < deadline:
        running = served.shira_service.training.running()
        if running is not None and running.name == "mine-only" and running.step >= 1:
            break
        time.sleep(0.2)
    running = served.shira_service.training.running()
    assert running is not None and running.name == "mine-only"
    # a stranger's Stop stops nothing: an empty id is "your run", a known id is refused
    assert stranger.predict("", api_name="/cancel_training") == "Nothing of yours is training."
    message = refusal(lambda: stranger.predict(running.id, api_name="/cancel_training"))
    assert "another visitor" in message
    # (the page queues a second Train behind the first; a direct start is refused without the name)
    with pytest.raises(ShiraError, match="another visitor's training is running") as refused:
        served.shira_service.training.start([str(images[0])], "theirs", "toy-sd", caption="c", owner="other")
    assert "mine-only" not in str(refused.value)
    assert not running.stop.is_set() and not running.finished
    assert "Stopping **mine-only**" in visitor.predict("", api_name="/cancel_training")
    assert "stopped at step" in job.result()[1]
    assert styles_state(served) == before  # nothing saved, nothing removed


def test_a_transfer_belongs_to_its_visitor(served, visitor, stranger):
    from shira_diffusion.app.transfer_jobs import TransferJob

    jobs = served.shira_service.transfers
    folder = served.home / "app" / "transfers" / "fake"
    job = TransferJob("fakejob12345", "someones", "toy-sd", "toy-sdxl", "shira", folder, owner="another-session",
                      status="running")
    jobs.jobs[job.id] = job
    try:
        assert stranger.predict("", api_name="/cancel_transfer") == "Nothing of yours is being transferred."
        assert "another visitor" in refusal(lambda: stranger.predict(job.id, api_name="/cancel_transfer"))
        assert "no transfer" in refusal(lambda: visitor.predict("nosuchjob", api_name="/cancel_transfer"))
        message = refusal(lambda: visitor.predict(None, "hatching", "toy-sd", "toy-sdxl", None, 1, 1, 1, "shira",
                                                  "mine", api_name="/transfer"))
        assert "another visitor's transfer is running" in message and "someones" not in message
        assert not job.stop.is_set()
    finally:
        job.status = "stopped"
        del jobs.jobs[job.id]


# ---------------------------------------------------------------------------- item 14: numbers and recipes
def recipe_png(path: Path, **changes) -> Path:
    recipe = {"base": "toy-sd", "styles": [["pastel", 0.6]], "prompt": PROMPT, "seed": 1, "steps": 4,
              "guidance": 5.0, **changes}
    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_KEY, json.dumps(recipe))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("changes, needle", [
    ({"seed": 2**70}, "seed"), ({"seed": -1}, "seed"), ({"steps": 10**6}, "steps"), ({"steps": 0}, "steps"),
    ({"guidance": 1e300}, "guidance"), ({"styles": [["pastel", 9.0]]}, "weight"), ({"prompt": "x" * 5000}, "prompt"),
    ({"styles": [["/etc/passwd", 1.0]]}, "no style"),
])
def test_a_recipe_beyond_the_page_is_refused(served, visitor, tmp_path, changes, needle):
    png = recipe_png(tmp_path / "r.png", **changes)
    assert needle in refusal(lambda: visitor.predict(handle_file(str(png)), api_name="/load_recipe"))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, None, 10**30, -5, "20", [4], {"x": 1}])
def test_raw_numbers_are_checked(served, value):
    before = styles_state(served)
    for index in (7, 8, 9, 10):  # seed, steps, guidance, images
        args = generate_args()
        args[index] = value
        message = raw_error(served, "/generate", args)
        assert len(message) < 300 and "\n" not in message, message
    message = raw_error(served, "/train", [None, "", "x", "", "toy-sd", "struct", value])
    assert message
    assert styles_state(served) == before


# ---------------------------------------------------------------------------- item 15: what is served
def fetch(served, path) -> int:
    return httpx.get(f"{served.local_url}gradio_api/file={path}", timeout=30).status_code


def test_only_thumbnails_and_outputs_are_served(served, visitor):
    status = visitor.predict(handle_file(str(FRAME)), "served-frame", "", "", "toy-sd", [], api_name="/add_style")[0]
    assert "Added **served-frame**" in status
    record = served.shira_service.catalog().get("served-frame")
    images = record.folder / "images"
    images.mkdir()
    shutil.copy(BUNDLED_ROOT / "night" / "images" / "0000.png", images / "0000.png")
    (images / "0000.txt").write_text("a secret caption")
    report = record.folder / "served-frame.toy-sd.transfer.json"
    report.write_text("{}")
    for private in (record.folder / "style.json", images / "0000.png", images / "0000.txt", report,
                    record.thumbnail_path(), record.folder / "served-frame.toy-sd.safetensors",
                    BUNDLED_ROOT / "night" / "images" / "0000.png"):
        assert private.is_file() and fetch(served, private) == 403, private
    event, payload = raw(served, "/load_base", ["toy-sd", [], *WEIGHTS])
    gallery = payload[1]
    thumbs = [item["image"]["path"] for item in (gallery["value"] if isinstance(gallery, dict) else gallery)]
    event, payload = raw(served, "/generate", generate_args(seed=5))
    outputs = [item["image"]["path"] for item in payload[0]]
    copies = list((served.home / "app" / "static" / "thumbnails").glob("served-frame-*.png"))
    assert copies and outputs and thumbs
    for public in [*thumbs, *outputs, *copies]:
        assert fetch(served, public) == 200, public
    served.shira_service.remove_style("served-frame")


# ---------------------------------------------------------------------------- item 16: uploads removed
def test_a_crafted_adapter_upload_is_refused_quickly_without_growing_the_app(served, visitor, tmp_path):
    """Item 1 through the page: 330 bytes whose header describes a mask of 1e8 entries, at /inspect
    and /add_style: one message within a second or two, nothing built or kept, nothing added."""
    import json as json_module

    import torch
    from safetensors.torch import save_file

    from shira_diffusion.core.adapter import FORMAT_NAME, SPEC_FORMAT_VERSION
    from shira_diffusion.core.masks import DESCRIBED_MASK_CACHE

    crafted = tmp_path / "crafted.safetensors"
    save_file({"w.shira_values": torch.zeros(1, dtype=torch.float16)}, str(crafted), metadata={
        "format": FORMAT_NAME, "format_version": str(SPEC_FORMAT_VERSION), "base_arch": "sd",
        "shapes": json_module.dumps({"w": [10000, 10000]}),
        "mask_spec": json_module.dumps({"strategy": "struct", "slot": None, "sizes": {"w": 100_000_000}})})
    before, cached = styles_state(served), DESCRIBED_MASK_CACHE.nbytes
    started = time.perf_counter()
    shown = visitor.predict(handle_file(str(crafted)), "toy-sd", api_name="/inspect")[0]
    assert "cannot be used" in shown and "mask_spec" in shown
    message = refusal(lambda: visitor.predict(handle_file(str(crafted)), "crafted", "", "", "toy-sd", [],
                                              api_name="/add_style"))
    assert "mask_spec" in message
    assert time.perf_counter() - started < 10  # both round trips; loading it takes milliseconds
    assert DESCRIBED_MASK_CACHE.nbytes == cached and styles_state(served) == before


def test_uploads_refused_or_not_are_removed(served, visitor, tmp_path):
    from gradio.route_utils import delete_files_created_by_app

    from shira_diffusion.app.uploads import sweep_upload_cache

    assert served.delete_cache == DELETE_CACHE and DELETE_CACHE[1] <= 24 * 3600
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not an adapter")
    assert "cannot be used" in visitor.predict(handle_file(str(junk)), "toy-sd", api_name="/inspect")[0]
    cache = Path(os.environ["GRADIO_TEMP_DIR"])
    assert cache.is_relative_to(served.home)  # under $SHIRA_HOME/app/gradio
    uploaded = [p for p in cache.rglob("junk.safetensors")]
    assert uploaded
    delete_files_created_by_app(served, age=0)  # what delete_cache runs on its schedule
    assert not any(p.exists() for p in uploaded)
    # the size bound: the oldest files go first once the cache is over it
    old, new = cache / "old" / "a.bin", cache / "new" / "b.bin"
    for path, age in ((old, 7200), (new, 0)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (time.time() - age, time.time() - age))
    assert sweep_upload_cache(cache, limit=1500, min_age=600, every=0) >= 1000
    assert not old.exists() and new.exists()


# ---------------------------------------------------------------------------- item 13: unwritable homes
@pytest.mark.parametrize("variable", ["SHIRA_HOME", "GRADIO_TEMP_DIR"])
def test_app_py_with_an_unwritable_folder_says_so_in_one_line(tmp_path, variable):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    env.update({"SHIRA_HOME": str(tmp_path / "home"), variable: str(blocker / "inside")})
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("shira-app: error: ") and variable in lines[-1], result.stderr
    assert not (tmp_path / "home").exists()


# ---------------------------------------------------------------------------- the class: every endpoint
JUNK = [None, math.nan, 10**30, -1, "/etc/passwd", "x" * 100_000, ["/etc/passwd"], {"path": "/etc/passwd"}]


@pytest.mark.slow
def test_every_endpoint_answers_junk_with_a_message(served):
    """Each public endpoint (as /info lists them), each input in turn set to each junk value (the
    others None), and all inputs junk at once: a reply or a one-line message, never an empty error,
    a traceback or a server folder; no file of the styles changes."""
    info = httpx.get(f"{served.local_url}gradio_api/info", timeout=30).json()["named_endpoints"]
    assert {"/generate", "/load_base", "/train", "/cancel_training", "/transfer", "/cancel_transfer",
            "/inspect", "/add_style", "/download_style", "/delete_style", "/load_recipe", "/mix_report",
            "/convert_lora"} <= set(info)
    before = styles_state(served)
    for api, endpoint in info.items():
        count = len(endpoint["parameters"])
        calls = [[junk] * count for junk in JUNK]
        calls += [[junk if i == j else None for i in range(count)] for j in range(count) for junk in JUNK]
        for data in calls:
            event, payload = raw(served, api, data)
            if event == "error":
                assert isinstance(payload, dict) and payload.get("error"), (api, data[:3], payload)
                message = payload["error"]
                assert "Traceback" not in message and len(message) < 2000, (api, message)
                assert "internal error" not in message, (api, data[:3], message)  # checked, not crashed
                no_server_folder(message, served)
            else:
                assert event == "complete", (api, event, payload)
    assert styles_state(served) == before
    assert served.shira_service.training.running() is None and served.shira_service.transfers.running() is None
