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


def serving_environment() -> None:
    """Before the page is built for serving: Gradio's upload cache goes under ``$SHIRA_HOME/app``
    too (unless ``GRADIO_TEMP_DIR`` places it elsewhere), so the app writes nowhere else."""
    from .uploads import app_home

    os.environ.setdefault("GRADIO_TEMP_DIR", str(app_home() / "gradio"))


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
