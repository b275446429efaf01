import importlib.util
from pathlib import Path

import pytest

from conftest import make_adapter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inspect_shows_a_valid_adapter(app, sd_unet, tmp_path):
    path = tmp_path / "ink.safetensors"
    make_adapter(sd_unet, "ink").save(path)
    text, rows, meta = app.inspect_adapter(str(path))
    assert "ink" in text and "**SD**-family" in text and "`ink-style`" in text
    assert len(rows) == len(make_adapter(sd_unet).shapes)
    assert meta["base_arch"] == "sd"


def test_inspect_explains_a_bad_file(app, tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not an adapter")
    text, rows, meta = app.inspect_adapter(str(path))
    assert text.startswith("**This file cannot be used:**") and rows == [] and meta == {}


def test_served_app_answers_through_the_api(app, sd_unet, tmp_path):
    from gradio_client import Client, handle_file

    path = tmp_path / "ink.safetensors"
    make_adapter(sd_unet, "ink").save(path)
    app.demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(app.demo.local_url, verbose=False)
        text, table, meta = client.predict(handle_file(str(path)), api_name="/inspect")
        assert "ink" in text
        assert meta["name"] == "ink"
    finally:
        app.demo.close()
