"""shira-diffusion app: ``python app.py`` serves the Gradio page (also the Hugging Face Space's app_file).

The page lives in ``shira_diffusion/app/``: Create (pick styles, mix them with sliders, generate,
compare), Train (a style from your images, in the background) and Styles (inspect, add, download,
delete adapters). ``SHIRA_BASE`` chooses the default base (``toy-sd``: offline, on a CPU).
"""

from shira_diffusion.app import build_demo, main, serving_environment
from shira_diffusion.app.styles_view import inspect_adapter  # noqa: F401  (the inspector, importable here)

if __name__ == "__main__":
    serving_environment()  # Gradio's upload cache under $SHIRA_HOME
demo = build_demo()

if __name__ == "__main__":
    main(demo)
