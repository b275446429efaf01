"""A generated image's recipe, carried in its PNG file: write it, read it back.

The recipe (base, styles and weights, prompt, seed, steps, guidance) is one JSON object in a PNG
text chunk named ``shira-recipe``; a human-readable line goes in ``parameters`` (where other image
tools look). Dropping such a PNG on the app fills its controls with the recipe.
"""

from __future__ import annotations

import json
import math
import os

from PIL import Image, PngImagePlugin

from ..errors import ShiraError

RECIPE_KEY = "shira-recipe"
MAX_RECIPE_PNG_BYTES = 20 * 2**20


def make_recipe(base: str, styles, prompt: str, seed: int, steps: int, guidance: float) -> dict:
    """The recipe of one image: ``styles`` is [(name, weight)] (empty: the base alone)."""
    return {"base": base, "styles": [[name, float(weight)] for name, weight in styles], "prompt": prompt,
            "seed": int(seed), "steps": int(steps), "guidance": float(guidance)}


def describe_recipe(recipe: dict) -> str:
    mix = ", ".join(f"{name}={weight:g}" for name, weight in recipe["styles"]) or "no style"
    return (f"{recipe['prompt']} | base {recipe['base']} | {mix} | seed {recipe['seed']} | "
            f"steps {recipe['steps']} | guidance {recipe['guidance']:g}")


def save_png(image: Image.Image, path: str | os.PathLike, recipe: dict) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_KEY, json.dumps(recipe))
    info.add_text("parameters", describe_recipe(recipe))
    image.save(path, format="PNG", pnginfo=info)


def read_recipe(path: str | os.PathLike) -> dict:
    """The recipe a PNG made by this app carries, checked; a clear ``ShiraError`` otherwise."""
    path = str(path)
    label = os.path.basename(path)
    if os.path.getsize(path) > MAX_RECIPE_PNG_BYTES:
        raise ShiraError(f"{label}: larger than {MAX_RECIPE_PNG_BYTES // 2**20} MB; not an image made here")
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ShiraError(f"{label}: a {image.format} image; only PNGs made here carry a recipe")
            text = image.text.get(RECIPE_KEY)
    except ShiraError:
        raise
    except Exception as exc:  # PIL raises many kinds for a damaged file
        raise ShiraError(f"{label}: not a readable image ({exc})") from None
    if text is None:
        raise ShiraError(f"{label}: this PNG carries no shira-diffusion recipe (only images made here do)")
    try:
        recipe = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ShiraError(f"{label}: its recipe is not valid JSON ({exc})") from None
    return _checked(recipe, label)


def _checked(recipe, label: str) -> dict:
    if not isinstance(recipe, dict):
        raise ShiraError(f"{label}: its recipe must be a JSON object")
    try:
        styles = [(str(name), float(weight)) for name, weight in recipe.get("styles", [])]
        out = make_recipe(str(recipe["base"]), styles, str(recipe["prompt"]), int(recipe["seed"]),
                          int(recipe["steps"]), float(recipe["guidance"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ShiraError(f"{label}: its recipe lacks or garbles a field ({exc!r})") from None
    if not all(math.isfinite(w) for _, w in styles) or not math.isfinite(out["guidance"]):
        raise ShiraError(f"{label}: its recipe holds a weight or guidance that is not a finite number")
    return out
