"""The app's one shared object: a pipeline and a ``StyleBank`` per loaded base, behind locks.

No visitor's state lives here. Every request names its base, styles, weights, prompt and seed; the
service fuses that request's mix into the shared UNet and generates while holding the bank's lock,
so two visitors with different mixes never see each other's styles. Generation goes through
``shira_diffusion.generate.generate``, the function ``shira generate`` calls: the same mix, seed,
steps and guidance give the same pixels as the command line.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from ..bases import list_bases, load_pipeline, pipeline_family
from ..catalog import StyleCatalog, StyleRecord, bank_key, base_label, default_catalog
from ..core.bank import StyleBank
from ..errors import ShiraError
from ..generate import DEFAULT_GUIDANCE, MAX_GUIDANCE, MAX_STYLE_WEIGHT, check_weight, generate
from . import gpu
from .checks import check_base, check_style, checked_text, number, style_files, whole
from .mix_panel import WeightSpaceCache
from .recipe_png import make_recipe, save_png
from .uploads import app_home, prune_oldest_pngs

logger = logging.getLogger(__name__)

MAX_STYLES = 4  # styles in one mix (slider rows in the page)
MAX_IMAGES = 4  # images per request
MAX_STEPS = 100
MAX_SEED = 2**31 - 1
MAX_PROMPT = 500  # characters
KEEP_OUTPUTS = 256  # generated PNGs kept on disk (the newest)


def base_name(spec: str) -> str:
    """The name the catalogue files a base's adapters under (``catalog.base_label``: a bundled name,
    a folder's name, a Hub id with ``--``)."""
    return base_label(spec)


@dataclass
class LoadedBase:
    spec: str
    name: str
    pipe: object
    bank: StyleBank
    family: str
    seconds: float
    # bank entry -> (mtime, size) of the file it was read from: a replaced file is read again
    files: dict[str, tuple[float, int]] = field(default_factory=dict)


@dataclass
class Generated:
    images: list  # [(png path, caption)]
    switch_ms: float
    seconds: float
    recipes: list[dict]


class AppService:
    """Pipelines and style banks of the loaded bases (at most ``max_bases``, least recently used
    dropped), shared by every visitor."""

    def __init__(self, default_base: str | None = None, max_bases: int = 2):
        self.default_base = default_base or os.environ.get("SHIRA_BASE") or "toy-sd"
        self.max_bases = max_bases
        self.device = gpu.device()
        self._bases: OrderedDict[str, LoadedBase] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.mix_cache = WeightSpaceCache()  # the mix panel's weight-space figures, per pair of files
        _SERVICES[id(self)] = self

    # ------------------------------------------------------------------ bases
    def base_choices(self) -> list[str]:
        """The bundled bases, the SD/SDXL pipelines in the local Hugging Face cache and the default
        base (``SHIRA_BASE``: the operator may offer a local folder): the only bases a visitor may name."""
        names = [source.name for source in list_bases()]
        if self.default_base not in names:
            names.insert(0, self.default_base)
        return names

    def check_base(self, spec) -> str:
        """``spec`` if it is an offered base (empty: the default); one message for anything else."""
        if isinstance(spec, str) and (spec in self._bases or spec == self.default_base):
            return spec  # loaded (so checked) or the default: no scan of the Hub cache
        return check_base(self.base_choices(), spec, self.default_base)

    def base(self, spec: str | None = None) -> LoadedBase:
        """The loaded base ``spec`` (loading it on first use; a clear ``ShiraError`` if it cannot be
        loaded offline). Only offered bases: a visitor's text never names a folder of the server."""
        spec = self.check_base(spec)
        with self._lock:
            if spec in self._bases:
                self._bases.move_to_end(spec)
                return self._bases[spec]
            loading = self._loading.setdefault(spec, threading.Lock())
        with loading:  # one load per base; other bases load (or serve) meanwhile
            with self._lock:
                if spec in self._bases:
                    return self._bases[spec]
            start = time.perf_counter()
            try:
                pipe = load_pipeline(spec)
            except ShiraError:
                raise
            except Exception as exc:  # diffusers/transformers errors on a broken folder
                raise ShiraError(f"base {spec!r} could not be loaded: {type(exc).__name__}: {exc}") from None
            family = pipeline_family(pipe)
            pipe = pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            loaded = LoadedBase(spec, base_name(spec), pipe, StyleBank(pipe.unet), family,
                                time.perf_counter() - start)
            logger.info("loaded base %s in %.1f s", spec, loaded.seconds)
            with self._lock:
                self._bases[spec] = loaded
                while len(self._bases) > self.max_bases:
                    self._bases.popitem(last=False)
        return loaded

    def preload(self) -> threading.Thread:
        """Load the default base in the background (the page serves meanwhile)."""
        def run():
            try:
                self.base()
            except ShiraError as exc:
                logger.warning("default base not loaded: %s", exc)

        thread = threading.Thread(target=run, name="shira-preload", daemon=True)
        thread.start()
        return thread

    def is_loaded(self, spec: str) -> bool:
        return spec in self._bases

    # ------------------------------------------------------------------ styles
    @staticmethod
    def catalog() -> StyleCatalog:
        return default_catalog()  # read now: user styles come and go

    def styles(self, spec: str | None = None) -> list[StyleRecord]:
        """The styles (bundled and the user's) with a SHiRA adapter for the base."""
        return self.catalog().list(base_name(self.check_base(spec)))

    def _mix(self, loaded: LoadedBase, catalog: StyleCatalog, styles) -> tuple[dict[str, float], list]:
        """Load the styles' adapters into the base's bank (again if a file changed): (the bank mix,
        [(adapter file, weight)]). Catalogue names only: a name never resolves to another file."""
        mix, resolved = {}, []
        files = style_files(catalog, [style for style, _ in styles], loaded.name)
        for (style, weight), path in zip(styles, files):
            key = bank_key(path)
            stat = os.stat(path)
            stamp = (stat.st_mtime, stat.st_size)
            if key in loaded.bank and loaded.files.get(key) != stamp:
                loaded.bank.remove(key)
            if key not in loaded.bank:
                loaded.bank.load(path, name=key)
                loaded.files[key] = stamp
            if key in mix:
                raise ShiraError(f"style {style!r} is chosen twice")
            mix[key] = check_weight(float(weight), style)
            resolved.append((str(path), float(weight)))
        return mix, resolved

    def remove_style(self, name: str) -> None:
        """Delete one of the user's styles, and drop its adapters from every loaded bank."""
        record = self.catalog().get(check_style(self.catalog(), name))
        keys = {bank_key(record.folder / entry.file) for entry in record.files.values()}
        self.catalog().remove(name)
        for loaded in list(self._bases.values()):
            with loaded.bank.lock:
                for key in keys & set(loaded.bank.names):
                    loaded.bank.remove(key)
                    loaded.files.pop(key, None)

    # ------------------------------------------------------------------ generating
    def generate(self, base: str | None, styles, prompt: str, seed: int = 0, steps: int = 20,
                 guidance: float = DEFAULT_GUIDANCE, count: int = 1) -> Generated:
        """``count`` images of ``prompt`` (image i with seed+i) with the mix ``styles`` [(name, weight)]."""
        styles, prompt, seed, steps, count = _checked(styles, prompt, seed, steps, count)
        guidance = number(guidance, "guidance", 0, MAX_GUIDANCE)
        loaded = self.base(base)
        start = time.perf_counter()
        images, switch_ms = self._run(loaded, styles, [prompt] * count, seed, steps, guidance)
        seconds = time.perf_counter() - start
        recipes = [make_recipe(loaded.spec, styles, prompt, seed + i, steps, guidance) for i in range(count)]
        mix = " + ".join(f"{n} {w:g}" for n, w in styles) or "base alone"
        out = [(self._save(image, recipe), f"{mix} · seed {recipe['seed']}") for image, recipe in zip(images, recipes)]
        return Generated(out, switch_ms, seconds, recipes)

    def compare(self, base: str | None, styles, prompt: str, seed: int = 0, steps: int = 20,
                guidance: float = DEFAULT_GUIDANCE) -> Generated:
        """With one seed: the base alone, each style alone (at its weight), and the mix, labelled."""
        styles, prompt, seed, steps, _ = _checked(styles, prompt, seed, steps, 1)
        guidance = number(guidance, "guidance", 0, MAX_GUIDANCE)
        loaded = self.base(base)
        variants = [("base alone", [])] + [(f"{n} {w:g} alone", [(n, w)]) for n, w in styles]
        if len(styles) > 1:
            variants.append(("mix: " + " + ".join(f"{n} {w:g}" for n, w in styles), styles))
        start = time.perf_counter()
        out, recipes, switches = [], [], []
        for label, mix in variants:
            images, switch_ms = self._run(loaded, mix, [prompt], seed, steps, guidance)
            recipe = make_recipe(loaded.spec, mix, prompt, seed, steps, guidance)
            out.append((self._save(images[0], recipe), label))
            recipes.append(recipe)
            switches.append(switch_ms)
        return Generated(out, max(switches), time.perf_counter() - start, recipes)

    def _run(self, loaded: LoadedBase, styles, prompts, seed, steps, guidance):
        return _on_device(id(self), loaded.spec, styles, prompts, seed, steps, guidance)

    def _fuse_and_generate(self, spec: str, styles, prompts, seed, steps, guidance):
        """Fuse the request's mix (timed) and generate, all under the bank's lock."""
        loaded = self.base(spec)
        catalog = self.catalog()
        with loaded.bank.lock:
            mix, files = self._mix(loaded, catalog, styles)
            start = time.perf_counter()
            loaded.bank.apply(mix)
            switch_ms = (time.perf_counter() - start) * 1000
            # the files just checked, not the names: generate() never looks a name up as a path
            images = generate(loaded.pipe, prompts, seed=seed, steps=steps, guidance_scale=guidance,
                              styles=files, base_name=loaded.name, bank=loaded.bank, catalog=catalog)
        return images, switch_ms

    @staticmethod
    def _save(image, recipe: dict) -> str:
        folder = app_home() / "outputs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{uuid.uuid4().hex[:16]}.png"
        save_png(image, path, recipe)
        prune_oldest_pngs(folder, KEEP_OUTPUTS)
        return str(path)


_SERVICES: dict[int, AppService] = {}  # by id: what the GPU function is given is small and picklable


@gpu.gpu(duration=60)
def _on_device(service: int, spec: str, styles, prompts, seed, steps, guidance):
    """The part of a request that needs the accelerator (``spaces.GPU`` on ZeroGPU)."""
    return _SERVICES[service]._fuse_and_generate(spec, styles, prompts, seed, steps, guidance)


def _checked(styles, prompt, seed, steps, count):
    """A request's styles, prompt and numbers, checked as ``shira generate`` checks them, before any work."""
    if styles is None or not isinstance(styles, (list, tuple)):
        raise ShiraError("styles must be a list of (name, weight)")
    if len(styles) > MAX_STYLES:
        raise ShiraError(f"{len(styles)} styles chosen: mix at most {MAX_STYLES}")
    styles = [(str(name), number(weight, f"weight of {name}", -MAX_STYLE_WEIGHT, MAX_STYLE_WEIGHT))
              for name, weight in styles]
    prompt = checked_text(prompt, "the prompt", 10 * MAX_PROMPT).strip()
    if not prompt:
        raise ShiraError("write a prompt, e.g. 'a red circle on a blue background'")
    if len(prompt) > MAX_PROMPT:
        raise ShiraError(f"the prompt is over {MAX_PROMPT} characters")
    seed = whole(seed, "seed", 0, MAX_SEED)
    steps = whole(steps, "steps", 1, MAX_STEPS)
    count = whole(count, "images per request", 1, MAX_IMAGES)
    return styles, prompt, seed, steps, count
