"""The Gradio app: ``build_demo()`` makes the page, ``main()`` serves it (``python app.py``).

Modules: ``service`` (one pipeline and one StyleBank per loaded base, shared by every visitor),
``ui`` (the ``gr.Blocks``: Create, Train, Transfer, Styles), ``train_tab`` and ``training_jobs``
(background training), ``transfer_tab`` and ``transfer_jobs`` (a style carried to another base in the
background), ``styles_view`` (gallery cards, inspector, LoRA conversion, the user's styles), ``uploads`` (limits,
sanitised names, safe zips), ``recipe_png`` (a PNG's recipe), ``mix_panel`` (what a mix does to each
style: weight-space overlap measured on demand, stored retention), ``gpu`` (``spaces.GPU`` on ZeroGPU).
"""

from __future__ import annotations

import os
import sys


def serving_environment() -> None:
    """Before the page is built for serving: Gradio's upload cache goes under ``$SHIRA_HOME/app``
    too (unless ``GRADIO_TEMP_DIR`` places it elsewhere), so the app writes nowhere else. A folder
    the app cannot write in stops it here, in one line and exit status 1 (as the CLI's errors),
    not in a traceback or in every visitor's first click."""
    from pathlib import Path

    from ..errors import ShiraError
    from .uploads import app_home, check_writable

    os.environ.setdefault("GRADIO_TEMP_DIR", str(app_home() / "gradio"))
    try:
        check_writable(app_home(), "SHIRA_HOME (the app's styles, jobs and images)")
        check_writable(Path(os.environ["GRADIO_TEMP_DIR"]), "GRADIO_TEMP_DIR (the app's uploads)")
    except ShiraError as exc:
        print(f"shira-app: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def build_demo(service=None):
    from .ui import build_demo as build

    return build(service)


def main(demo=None) -> None:
    """Serve the app: ``SHIRA_BASE`` chooses the default base (toy-sd), ``PORT``/``GRADIO_SERVER_PORT``
    and ``GRADIO_SERVER_NAME`` where it listens (Gradio's own variables)."""
    from .ui import launch_options

    if demo is None:
        serving_environment()
        demo = build_demo()
    demo.shira_service.preload()
    demo.launch(**launch_options())


__all__ = ["build_demo", "main", "serving_environment"]
