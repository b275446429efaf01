"""The ``shira`` command. Every subcommand has ``--help``; mistakes end in one line, not a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import contextmanager

from .core.architecture import TARGET_PRESETS
from .errors import ShiraError
from .core.masks import DEFAULT_MASK, MASK_STRATEGIES


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one line (``shira: error: ...``) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _guidance(text: str) -> float | str:
    if text == "recommended":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'recommended', got {text!r}") from None


def _guidance_scale(text: str) -> float:
    from .generate import MAX_GUIDANCE

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= MAX_GUIDANCE:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be a number in [0, {MAX_GUIDANCE:g}], got {text}")
    return value


def _seed(text: str) -> int:
    from .generate import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^64 - 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def _density(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .bundled.specs import VARIANTS

    parser = _Parser(prog="shira", description="Sparse high-rank (SHiRA) style adapters for Stable Diffusion.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also SHIRA_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    bench = commands.add_parser("bench", help="benchmarks measured side by side in one run")
    bench_kinds = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bench_kinds.required = True
    switch = bench_kinds.add_parser(
        "switch",
        help="style switching: this project vs diffusers LoRA vs PEFT SHiRA",
        description="Build the full-size UNet with random weights (no download) and time warm and cold "
        "style switches against diffusers LoRA fuse/unfuse and PEFT SHiRA merge/unmerge at equal "
        "parameter count. The last line of output is one JSON object.",
    )
    switch.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15")
    switch.add_argument("--mask", choices=MASK_STRATEGIES, default=DEFAULT_MASK)
    size = switch.add_mutually_exclusive_group()
    size.add_argument("--r", "--rank", dest="rank", type=_positive_int, help="LoRA-equivalent rank (default 16)")
    size.add_argument("--density", type=_density, help="share of each weight's entries, e.g. 0.01")
    switch.add_argument("--targets", choices=list(TARGET_PRESETS), default="attn")
    switch.add_argument("--repeats", type=_positive_int, default=7, help="repetitions per median (>= 5)")
    switch.add_argument("--json", action="store_true", help="end the output with the JSON object")
    _add_device_arguments(switch)

    train_bench = bench_kinds.add_parser(
        "train",
        help="training step time and peak memory: this SHiRA vs PEFT LoRA vs PEFT SHiRA",
        description="Build the full-size UNet with random weights (no download), attach each adapter with "
        "the same targets and trainable parameter count, and time training steps on small latents; "
        "each variant runs in its own process so its peak memory is its own.",
    )
    train_bench.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15")
    train_bench.add_argument("--r", "--rank", dest="rank", type=_positive_int, default=16)
    train_bench.add_argument("--latent", type=_positive_int, default=32, help="latent size (32: 256 px images)")
    train_bench.add_argument("--steps", type=_positive_int, default=5, help="timed steps per variant")
    train_bench.add_argument("--json", action="store_true")
    _add_device_arguments(train_bench)

    gen_bench = bench_kinds.add_parser(
        "generate",
        help="content accuracy, speed and VAE quality of the toy bases",
        description="Generate from grammar prompts drawn with a fixed seed (image i with seed SEED+i), read "
        "object color, background color and shape back from each image, time each image, measure VAE "
        "reconstruction PSNR on held-out sets, and count the adapted layers whose shapes the two bases "
        "share. The last line of output is one JSON object with --json.",
    )
    gen_bench.add_argument("--base", action="append", dest="bases", metavar="BASE",
                           help="a base to measure (repeatable; default: toy-sd and toy-sdxl)")
    gen_bench.add_argument("--prompts", type=_positive_int, default=200, help="number of grammar prompts")
    gen_bench.add_argument("--steps", type=_positive_int, default=20)
    gen_bench.add_argument("--seed", type=int, default=0)
    gen_bench.add_argument("--out", help="folder for a grid of the first 64 images of each base")
    gen_bench.add_argument("--json", action="store_true", help="end the output with the JSON object")
    _add_device_arguments(gen_bench)
    all_bench = bench_kinds.add_parser(
        "all",
        help="switch (SD1.5 and SDXL), generate and train benchmarks in one run",
        description="Every benchmark on one device: switching on the full-size SD1.5 and SDXL UNets "
        "(Struct, r=16), generation on both toy bases, training steps on SD1.5. Minutes on a GPU "
        "(--device cuda); long on a CPU. The last line of output is one JSON object with --json.",
    )
    all_bench.add_argument("--prompts", type=_positive_int, default=50, help="grammar prompts per toy base")
    all_bench.add_argument("--latent", type=_positive_int, default=32, help="training latent size")
    all_bench.add_argument("--json", action="store_true", help="end the output with the JSON object")
    _add_device_arguments(all_bench)
    app_bench = bench_kinds.add_parser(
        "app",
        help="the Gradio app: start, one image through the API, switch, concurrent clients",
        description="Start `python app.py` (toy-sd), time until it serves, one 64x64 image with a two-style "
        "mix through the API, the switch part of a request, and concurrent clients with different mixes "
        "(each image checked against one client's). The last line of output is one JSON object with --json.",
    )
    app_bench.add_argument("--steps", type=_positive_int, default=20)
    app_bench.add_argument("--clients", type=_positive_int, default=8)
    app_bench.add_argument("--threads", type=_positive_int, help="torch threads in the app (OMP_NUM_THREADS; "
                           "default: one per core)")
    app_bench.add_argument("--json", action="store_true", help="end the output with the JSON object")

    ev = commands.add_parser("eval", help="measure style adapters on generated images")
    ev_kinds = ev.add_subparsers(dest="eval", metavar="EVAL", parser_class=_Parser)
    ev_kinds.required = True
    ev_styles = ev_kinds.add_parser(
        "styles",
        help="style strength and content accuracy of the bundled styles on a base",
        description="Generate held-out grammar prompts (image i with seed i) with each bundled style's "
        "adapters (SHiRA and LoRA) fused, and measure style strength and content accuracy against "
        "the base's own images. The last line of output is one JSON object with --json.",
    )
    ev_styles.add_argument("--base", default="toy-sd")
    ev_styles.add_argument("--style", action="append", dest="styles", help="default: every bundled style")
    ev_styles.add_argument("--adapter", action="append", dest="adapters", choices=VARIANTS,
                           help="default: every variant with a file (shira, shira-<mask>, lora)")
    ev_styles.add_argument("--prompts", type=_positive_int, default=100,
                           help="how many of the 100 reserved held-out prompts (default: all)")
    ev_styles.add_argument("--steps", type=_positive_int, default=20)
    ev_styles.add_argument("--guidance", type=_guidance, default=5.0, help="classifier-free guidance scale (default "
                           "5, weight 1), or 'recommended': each adapter's own guidance and weight, from its "
                           "style's style.json")
    ev_styles.add_argument("--sheet", help="write a PNG with the first 8 images of every row (plain, each adapter)")
    ev_styles.add_argument("--json", action="store_true")
    ev_new = ev_kinds.add_parser(
        "new-style",
        help="train styles as a user does (the defaults, the self-check) and measure them on reserved prompts",
        description="For each style, an unseen look rendered here (corner, vignette: no bundled style has them, the "
        "base was not trained on them) or a bundled style's training set (its trigger, none of its tuned settings): "
        "train with shira train's defaults, the self-check included, into OUT/NAME/, then measure strength and content "
        "with exact measures on reserved prompts, at the self-check's setting and at guidance 5, weight 1, and how "
        "often the stored style detector agrees with the exact measure. Writes OUT/new-style.json after each style.",
    )
    ev_new.add_argument("--base", default="toy-sd")
    ev_new.add_argument("--style", action="append", dest="styles", required=True,
                        help="corner, vignette, or a bundled style's name (repeatable)")
    ev_new.add_argument("--out", required=True, help="a folder for the training sets, adapters and the result")
    ev_new.add_argument("--images", type=_positive_int, default=30, help="training images per style (default 30)")
    ev_new.add_argument("--prompts", type=_positive_int, default=40, help="reserved prompts (default 40)")
    ev_new.add_argument("--json", action="store_true")
    ev_fusion = ev_kinds.add_parser(
        "fusion",
        help="how much of each bundled style survives a mix of two, by mixing method",
        description="For every compatible pair of bundled styles, on reserved prompts (image i with seed i), "
        "each member's strength in the mixed images over its strength alone, and the mix's content accuracy, "
        "for SHiRA on the shared mask, SHiRA on disjoint slots, a TIES merge, and LoRA with set_adapters. "
        "The last line of output is one JSON object with --json.",
    )
    ev_fusion.add_argument("--base", default="toy-sd")
    ev_fusion.add_argument("--style", action="append", dest="styles", help="default: every bundled style")
    ev_fusion.add_argument("--method", action="append", dest="methods",
                           choices=["shira-shared", "shira-slots", "ties", "lora"], help="default: all four")
    ev_fusion.add_argument("--prompts", type=_positive_int, default=40, help="reserved prompts per pair (default 40)")
    ev_fusion.add_argument("--steps", type=_positive_int, default=20)
    ev_fusion.add_argument("--guidance", type=float, default=5.0)
    ev_fusion.add_argument("--triples", type=_non_negative_int, default=0, metavar="N",
                           help="also every compatible triple, on the first N prompts (default 0: pairs only)")
    ev_fusion.add_argument("--measure", choices=["look", "features", "detector"], default="look",
                           help="style strength: the toy looks' own measures (default), or label-free: nearer the "
                           "style's training images than the base's plain images in the VAE's feature space "
                           "(features), or each style's detector, the one shira train stores (detector)")
    ev_fusion.add_argument("--out", help="save the result (JSON) after each method; a rerun with the same "
                           "settings skips the methods already in it")
    ev_fusion.add_argument("--plot", help="write a heatmap PNG of each method's pairwise retention")
    ev_fusion.add_argument("--json", action="store_true")

    metrics = commands.add_parser(
        "metrics",
        help="weight-space interference of adapters: AWOM, AWOR, overlap, cosine",
        description="For every pair of the given adapters (bundled style names or files; SHiRA or LoRA), the "
        "SHiRA paper's AWOM and AWOR on their delta matrices, the overlap of the entries they touch "
        "(Jaccard) and the cosine of their deltas, per layer (--json) and overall.",
    )
    metrics.add_argument("adapters", nargs="+", metavar="STYLE_OR_FILE")
    metrics.add_argument("--base", default="toy-sd", help="the base whose adapters a style name means")
    metrics.add_argument("--variant", default="shira", help="for style names: shira, shira-<mask>, shira-slot or lora")
    metrics.add_argument("--plot", help="write a heatmap PNG (AWOR, Jaccard, cosine)")
    metrics.add_argument("--json", action="store_true")

    _add_styles_parser(commands, VARIANTS)

    info = commands.add_parser("info", help="describe an adapter file", description="Validate an adapter "
                               "file and print its metadata and per-tensor statistics.")
    info.add_argument("adapter", help="a shira-diffusion .safetensors adapter")
    info.add_argument("--json", action="store_true")

    export = commands.add_parser(
        "export-peft",
        help="write an adapter as a PEFT SHiRA checkpoint folder",
        description="Write an adapter's nn.Linear tensors (sized r*(rows+cols) per layer, as PEFT's SHiRA "
        "requires) as adapter_config.json + adapter_model.safetensors, loadable with "
        "peft.PeftModel.from_pretrained(unet, DIR). PEFT's SHiRA holds nn.Linear layers only: Conv2d "
        "tensors are left out, and the command says how many.",
    )
    export.add_argument("adapter")
    export.add_argument("out_dir")
    export.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in OUT_DIR")

    imp = commands.add_parser(
        "import-peft",
        help="read a PEFT SHiRA checkpoint folder into an adapter file",
        description="Convert a PEFT SHiRA checkpoint made for a diffusers UNet into a shira-diffusion adapter.",
    )
    imp.add_argument("peft_dir")
    imp.add_argument("out", help="output .safetensors file")
    imp.add_argument("--arch", choices=["sd15", "sdxl"], help="architecture of the UNet it was made for")
    imp.add_argument("--unet-config", help="a UNet config.json instead of --arch (e.g. a bundled base's unet/)")
    imp.add_argument("--name", help="adapter name (default: the folder name)")
    imp.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    commands.add_parser("bases", help="list the bases available offline", description="List the bundled "
                        "toy bases (and whether they are built) and the SD/SDXL pipelines in the local "
                        "Hugging Face cache.")

    train = commands.add_parser(
        "train",
        help="train a style adapter (SHiRA or LoRA) from images and captions",
        description="The same flags as train_style.py (which `accelerate launch` runs on several GPUs).",
    )
    from .training.config import add_arguments

    add_arguments(train)  # one flag per TrainConfig field: defaults and help live on the fields

    gen = commands.add_parser(
        "generate",
        help="text to image on a base, with styles",
        description="Generate with a base (bundled name, diffusers folder, checkpoint file or cached Hub id). "
        "Image i of a batch uses seed SEED+i.",
    )
    gen.add_argument("--base", default="toy-sd")
    what = gen.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="one prompt; --out is the image file")
    what.add_argument("--prompts-file", help="one prompt a line; --out is a folder of 000.png, 001.png, ...")
    gen.add_argument("--out", required=True, help="an image file (.png, .jpg, ...), or with --prompts-file a folder")
    gen.add_argument("--overwrite", action="store_true", help="replace existing output images")
    gen.add_argument("--seed", type=_seed, default=0, help="0 to 2^64 - 1 (image i of a batch: SEED+i)")
    gen.add_argument("--steps", type=_positive_int, default=20)
    gen.add_argument("--guidance", type=_guidance_scale, help="classifier-free guidance scale, 0-100 (default: a "
                     "single bundled style's recommended one, from its style.json; else 5)")
    gen.add_argument(
        "--style", action="append", default=[], metavar="FILE_OR_NAME[=WEIGHT]",
        help="fuse a style adapter (repeatable: a mix); its trigger word is added to the prompt. WEIGHT "
             "defaults to 1, or for a single bundled style to its recommended weight (style.json)",
    )
    gen.add_argument("--config", help="for a single-file checkpoint: a local diffusers folder of its architecture")
    _add_transfer_parsers(commands, ev_kinds)
    return parser


def _add_styles_parser(commands, variants) -> None:
    from .bundled.specs import BUILT_BY_DEFAULT, STYLES

    styles = commands.add_parser("styles", help="the style catalogue: list, add, remove; build the bundled styles",
                                 description="Your styles live in $SHIRA_HOME/styles (default ~/.cache/shira-diffusion); "
                                 "the bundled ones in the repository's styles/.")
    kinds = styles.add_subparsers(dest="styles_command", metavar="ACTION", parser_class=_Parser)
    kinds.required = True
    listing = kinds.add_parser("list", help="every style (bundled and yours), with the bases it has adapters for")
    listing.add_argument("--base", help="only styles with an adapter for this base")
    listing.add_argument("--json", action="store_true")
    add = kinds.add_parser("add", help="add an adapter file to your styles")
    add.add_argument("name", help="the style's name (lowercase letters, digits, '-', '_')")
    add.add_argument("adapter", help="a shira-diffusion .safetensors adapter")
    add.add_argument("--base", required=True, help="the base it was trained for (e.g. toy-sd)")
    add.add_argument("--description", default="")
    add.add_argument("--trigger", help="default: the adapter's own trigger")
    add.add_argument("--overwrite", action="store_true", help="replace the style's adapter for this base")
    remove = kinds.add_parser("remove", help="delete one of your styles (and what an unfinished add of it left)")
    remove.add_argument("name")
    remove.add_argument("--force", action="store_true", help="also a style whose style.json is unreadable")

    names, bases = sorted(STYLES), ["toy-sd", "toy-sdxl"]
    defaults = " and ".join(BUILT_BY_DEFAULT)
    b = kinds.add_parser("build", help="write the bundled styles' training sets and train their adapters",
                         description="(Re)make styles/<name>/: 50 training images with captions, a thumbnail, "
                         "style.json, and for each base a SHiRA adapter and a LoRA at equal parameter count.")
    b.add_argument("--style", action="append", choices=names, help="default: all")
    b.add_argument("--base", action="append", choices=bases, help="default: toy-sd and toy-sdxl")
    b.add_argument("--adapter", action="append", dest="variants", choices=variants,
                   help=f"default: {defaults}; shira-<mask> trains SHiRA with another mask")
    b.add_argument("--steps", type=_positive_int, help="override the default number of training steps")
    r = kinds.add_parser("recommend", help="choose each bundled adapter's guidance and weight on validation prompts",
                         description="Measure each adapter at every candidate guidance on its style's validation "
                         "images (never the reserved evaluation prompts), choose the guidance and search the "
                         "weight, and write both into style.json.")
    r.add_argument("--style", action="append", choices=names, help="default: all")
    r.add_argument("--base", action="append", choices=bases, help="default: toy-sd and toy-sdxl")
    r.add_argument("--adapter", action="append", dest="variants", choices=variants, help=f"default: {defaults}")
    r.add_argument("--prompts", type=_positive_int, help="validation prompts per style (default: all, 80-87)")
    r.add_argument("--seeds-per-prompt", type=_positive_int, default=2, help="images per validation prompt (default 2)")
    r.add_argument("--json", action="store_true", help="end with one JSON line of every measurement")
    r.add_argument("--reuse-guidance", action="store_true", help="take the guidance measurements style.json holds "
                   "for the current validation images (and its weights at the chosen guidance), and measure only "
                   "the weights the search needs beyond them")
    r.add_argument("--measured", metavar="FILE", help="choose again from a saved run's output (its JSON line) and "
                   "write style.json, generating nothing")
    t = kinds.add_parser("retrain", help="train bundled adapters again (another seed, more steps); keep whichever "
                         "does better on validation")
    t.add_argument("--seed", type=int, required=True, help="the challenger's training seed")
    t.add_argument("--steps", type=_positive_int, help="the challenger's training steps (default: the recipe's)")
    t.add_argument("--style", action="append", choices=names, help="default: all")
    t.add_argument("--base", action="append", choices=bases, help="default: toy-sd and toy-sdxl")
    t.add_argument("--adapter", action="append", dest="variants", choices=variants, help=f"default: {defaults}")
    t.add_argument("--misses", action="store_true", help="only the adapters that miss the targets on their "
                   "validation images at their recommended guidance and weight")
    t.add_argument("--json", action="store_true", help="end with one JSON line of every measurement")


def _cmd_styles(args) -> None:
    from .bundled.specs import BUILT_BY_DEFAULT, STYLES
    from .catalog import default_catalog

    catalog = default_catalog()
    action = args.styles_command
    if action == "list":
        records = catalog.list(args.base)
        if args.json:
            print(json.dumps([{"name": r.name, "source": r.source, "trigger": r.trigger, "description": r.description,
                               "bases": r.bases(), "folder": str(r.folder)} for r in records]))
            return
        for r in records:
            print(f"{r.name:16} {r.source:8} {','.join(r.bases()) or '-':18} {r.trigger or '-':10} {r.description}")
        return
    if action == "add":
        from .base_check import check_adapter_for_base
        from .core.adapter import SparseAdapter

        adapter = SparseAdapter.load(args.adapter)  # validated before anything is copied
        check_adapter_for_base(adapter, args.base)  # the base exists here, and is the adapter's family
        record = catalog.add(args.name, args.adapter, args.base, description=args.description or adapter.description,
                             trigger=adapter.trigger if args.trigger is None else args.trigger,
                             overwrite=args.overwrite)
        print(f"added {record.name} ({args.base}) in {record.folder}")
        return
    if action == "remove":
        removed = catalog.remove(args.name, force=args.force)
        print(f"removed {args.name}: {', '.join(str(p) for p in removed)}")
        return
    names, bases, variants = args.style or list(STYLES), args.base or ["toy-sd", "toy-sdxl"], \
        args.variants or BUILT_BY_DEFAULT
    if action == "build":
        from .bundled.build import build

        build(names, bases, variants, args.steps)
        return
    if action == "retrain":
        from .bundled.retrain import format_retrain, retrain

        for base in bases:
            result = retrain(base, names, variants, args.seed, args.steps, misses_only=args.misses)
            print(format_retrain(result))
            if args.json:
                print(json.dumps(result))
        return
    from pathlib import Path

    from .bundled.recommend import format_recommendations, recommend, rechoose

    if args.measured:
        try:
            saved = json.loads(Path(args.measured).read_text().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError) as exc:
            raise ShiraError(f"--measured {args.measured}: not a saved recommend run ({exc})") from None
        result = rechoose(saved)
        print(format_recommendations(result))
        if args.json:
            print(json.dumps(result))
        return
    for base in bases:
        result = recommend(base, names, variants, count=args.prompts, seeds_per_prompt=args.seeds_per_prompt,
                           reuse_guidance=args.reuse_guidance)
        print(format_recommendations(result))
        if args.json:
            print(json.dumps(result))


def _cmd_bases(args) -> None:
    from .bases import list_bases

    for source in list_bases():
        state = "available" if source.available else "missing"
        print(f"{source.name:24} {source.kind:11} {state:9} {source.description}")


def _cmd_generate(args) -> None:
    import os

    from .bases import load_pipeline
    from .generate import (base_scheduler, check_outputs, check_seed, check_steps, generate, parse_style,
                           resolve_styles, save_images)

    # Everything that can be checked is checked before the pipeline loads: styles and weights,
    # prompts, seeds, the output (writable, an image format, nothing replaced without --overwrite).
    styles = [parse_style(s) for s in args.style]
    prompts = [args.prompt] if args.prompt is not None else _read_prompts(args.prompts_file)
    check_seed(args.seed, len(prompts))
    single = args.prompt is not None
    check_outputs(args.out, None if single else len(prompts), args.overwrite)
    from .bundled.recommend import DEFAULT_GUIDANCE, default_guidance, default_weight

    base_name = os.path.basename(os.path.normpath(args.base))
    guidance = args.guidance if args.guidance is not None else default_guidance(styles, base_name)
    weight = default_weight(styles, base_name) if len(styles) == 1 and "=" not in args.style[0] else 1.0
    if weight != 1.0:
        styles = [(styles[0][0], weight)]
    resolve_styles(styles, base_name, read=True)  # every adapter file read and validated now
    source = "its self-check" if styles and styles[0][0].endswith(".safetensors") else "style.json"
    scheduler = base_scheduler(args.base)
    if scheduler is not None:  # else generate checks the steps once the base is loaded, before any image
        check_steps(scheduler, args.steps)
    if args.guidance is None and guidance != DEFAULT_GUIDANCE:
        print(f"guidance {guidance:g}: recommended for {styles[0][0]} on {base_name} ({source}; --guidance sets it)",
              file=sys.stderr)
    if weight != 1.0:
        print(f"weight {styles[0][1]:g}: recommended for {styles[0][0]} on {base_name} ({source}; "
              f"{styles[0][0]}=WEIGHT sets it)", file=sys.stderr)
    pipe = load_pipeline(args.base, single_file_config=args.config)
    pipe.set_progress_bar_config(disable=True)
    images = generate(pipe, prompts, seed=args.seed, steps=args.steps, guidance_scale=guidance, styles=styles,
                      base_name=base_name)
    save_images(images, args.out, single, args.overwrite)
    print(f"wrote {args.out}" if single else f"wrote {len(images)} images to {args.out}")


def _read_prompts(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            prompts = [line.strip() for line in handle if line.strip()]
    except OSError as exc:
        raise ShiraError(f"--prompts-file {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ShiraError(f"--prompts-file {path}: not UTF-8 text (byte {exc.start}); give one prompt a line") from None
    if not prompts:
        raise ShiraError(f"--prompts-file {path}: no prompts (one prompt a line)")
    return prompts


def _add_device_arguments(parser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32",
                        help="the weights' dtype (training: the autocast dtype; default fp32)")


def _cmd_bench(args) -> None:
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if args.bench == "app":
        from .bench.app import bench_app, format_app_table

        result = bench_app(steps=args.steps, clients=args.clients, threads=args.threads, log=log)
        print(format_app_table(result))
        if args.json:
            print(json.dumps(result))
        return
    if args.bench == "all":
        from .bench.all import bench_all, format_all

        result = bench_all(args.device, args.dtype, prompts=args.prompts, train_latent=args.latent, log=log)
        print(format_all(result))
        if args.json:
            print(json.dumps(result))
        return
    if args.bench == "train":
        from .bench.train import bench_train, format_train_table

        result = bench_train(args.arch, args.rank, args.latent, args.steps, log=log, device=args.device,
                             dtype=args.dtype)
        print(format_train_table(result))
        if args.json:
            print(json.dumps(result))
        return
    if args.bench == "generate":
        from .bench.generate import bench_generate, format_generate_table

        result = bench_generate(args.bases or ["toy-sd", "toy-sdxl"], count=args.prompts, steps=args.steps,
                                seed=args.seed, out_dir=args.out, device=args.device, dtype=args.dtype)
        print(format_generate_table(result))
        if args.json:
            print(json.dumps(result))
        return
    from .bench.switch import bench_switch, format_switch_table

    rank = args.rank if args.rank is not None or args.density is not None else 16
    result = bench_switch(
        arch=args.arch,
        mask=args.mask,
        rank=rank,
        density=args.density,
        targets=args.targets,
        repeats=args.repeats,
        log=log,
        device=args.device,
        dtype=args.dtype,
    )
    print(format_switch_table(result))
    if args.json:
        print(json.dumps(result))


def _cmd_eval(args) -> None:
    if args.eval == "transfer":
        return _cmd_eval_transfer(args)
    if args.eval == "new-style":
        from .quality.evaluate import check_style_names, eval_new_styles, format_new_style_table

        check_style_names(args.styles)
        result = eval_new_styles(args.base, args.styles, args.out, images=args.images, prompts=args.prompts,
                                 log=lambda t: print(t, file=sys.stderr, flush=True))
        print(format_new_style_table(result))
        if args.json:
            print(json.dumps(result, default=float))
        return
    if args.eval == "fusion":
        from .fusion.evaluate import METHODS, eval_fusion, format_fusion_table

        result = eval_fusion(args.base, args.styles, args.methods or METHODS, count=args.prompts, steps=args.steps,
                             guidance_scale=args.guidance, triples=args.triples, out=args.out,
                             measure=args.measure, progress=lambda t: print(t, file=sys.stderr, flush=True))
        print(format_fusion_table(result))
        if args.plot:
            from .fusion.heatmap import retention_panels, save_heatmaps

            names, panels = retention_panels(result)
            save_heatmaps(names, panels, args.plot, title=f"{args.base}: retention in mixes of two "
                          "(row style's strength in the mix / alone)")
            print(f"wrote {args.plot}")
        if args.json:
            print(json.dumps(result))
        return
    from .evaluate import eval_styles, format_styles_table

    result = eval_styles(args.base, args.styles, args.adapters, args.prompts, args.steps, sheet=args.sheet,
                         guidance_scale=args.guidance)
    print(format_styles_table(result))
    if args.json:
        print(json.dumps(result))


def _cmd_metrics(args) -> None:
    from .catalog import default_catalog
    from .fusion import load_deltas, pairwise_metrics

    if len(args.adapters) < 2:
        raise ShiraError("give at least two adapters to compare")
    catalog = default_catalog()
    loaded = []
    for item in args.adapters:
        path = catalog.resolve_adapter(item, args.base, args.variant)
        name = item if item in catalog else path.name.split(".")[0]
        if any(d.name == name for d in loaded):
            name = str(path)
        loaded.append(load_deltas(path, name=name))
    pairs = pairwise_metrics(loaded)
    if args.json:
        print(json.dumps(pairs))
    else:
        print("| pair | AWOM | AWOR | overlap (Jaccard) | cosine | tensors |")
        print("| --- | --- | --- | --- | --- | --- |")
        for key, r in pairs.items():
            o = r["overall"]
            print(f"| {key.replace('|', ' + ')} | {o['awom']:.3g} | {o['awor']:.3f} | {o['jaccard']:.1%} | "
                  f"{o['cosine']:+.3f} | {o['shared_tensors']} |")
    if args.plot:
        from .fusion.heatmap import pairwise_matrix, save_heatmaps

        names = [d.name for d in loaded]
        panels = {"AWOR (1: no interference)": pairwise_matrix(names, pairs, "awor", 1.0),
                  "entries shared (Jaccard)": pairwise_matrix(names, pairs, "jaccard", 1.0),
                  "cosine of the deltas": pairwise_matrix(names, pairs, "cosine", 1.0)}
        save_heatmaps(names, panels, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)


def _cmd_info(args) -> None:
    from .core.adapter import SparseAdapter
    from .core.summary import describe

    summary = describe(SparseAdapter.load(args.adapter))
    if args.json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        if key != "tensors":
            print(f"{key:>12}: {value}")
    print(f"{'tensors':>12}:")
    for row in summary["tensors"]:
        print(f"  {row['name']}  {row['shape']}  {row['entries']} entries ({row['density']:.2%})  |v| max {row['abs_max']:.3g}")


def _cmd_export(args) -> None:
    from .core.adapter import SparseAdapter
    from .core.peft_shira import CONFIG_NAME, WEIGHTS_NAME, check_output_folder, export_peft_shira, peft_split

    check_output_folder(args.out_dir, [CONFIG_NAME, WEIGHTS_NAME], args.overwrite)
    adapter = SparseAdapter.load(args.adapter)
    linear, skipped = peft_split(adapter)
    directory = export_peft_shira(adapter, args.out_dir, overwrite=args.overwrite)
    print(f"wrote PEFT SHiRA checkpoint to {directory} ({len(linear)} nn.Linear tensors)")
    if skipped:
        entries = sum(int(adapter.indices[n].numel()) for n in skipped)
        print(f"left out {len(skipped)} Conv2d tensors ({entries:,} of {adapter.num_params:,} entries): PEFT's "
              "SHiRA holds nn.Linear layers only", file=sys.stderr)


def _cmd_import(args) -> None:
    from .files import check_output_file
    from .core.architecture import FULL_SIZE_CONFIGS
    from .core.peft_shira import import_peft_shira

    if (args.arch is None) == (args.unet_config is None):
        raise ShiraError("give exactly one of --arch or --unet-config")
    if not args.out.endswith(".safetensors"):
        raise ShiraError(f"{args.out}: an adapter file name ends in .safetensors")
    check_output_file(args.out, args.overwrite)
    if args.unet_config:
        try:
            with open(args.unet_config, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ShiraError(f"cannot read UNet config {args.unet_config}: {exc}") from None
        if not isinstance(config, dict):
            raise ShiraError(f"UNet config {args.unet_config}: expected a JSON object, got {type(config).__name__}")
        try:
            unet = shape_only_unet(config)
        except Exception as exc:  # diffusers raises many kinds for a config of another model
            raise ShiraError(f"UNet config {args.unet_config}: not a UNet2DConditionModel config ({exc})") from None
    else:
        unet = shape_only_unet(FULL_SIZE_CONFIGS[args.arch])
    adapter = import_peft_shira(args.peft_dir, unet, name=args.name)
    adapter.save(args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {adapter}")


def shape_only_unet(config: dict):
    """A UNet with every parameter on the meta device: names and shapes, no memory, no download."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel.from_config(config)


def _cmd_train(args) -> None:
    from .quality.self_check import summary_line
    from .training import TrainingInterrupted, config_from_args, train

    try:
        record = train(config_from_args(args))
    except TrainingInterrupted as exc:
        print(f"shira: interrupted at step {exc.record['steps']} of {exc.record['total_steps']}; checkpoint "
              f"{exc.record['checkpoint']}: run the same command with --resume_from_checkpoint latest to finish",
              file=sys.stderr)
        raise SystemExit(130) from None
    trigger = f"; trigger {record['trigger']!r} (inferred from the captions)" if record["trigger_inferred"] else ""
    print(f"wrote {record['files']['adapter']} ({record['trainable_params']:,} parameters, {record['seconds']} s"
          f"{trigger})")
    if "self_check" in record:
        print(summary_line(record["self_check"]))


def _add_transfer_parsers(commands, ev_kinds) -> None:
    """``shira transfer``, ``shira convert`` and ``shira eval transfer`` (shira_diffusion/transfer/)."""
    transfer = commands.add_parser(
        "transfer",
        help="carry an adapter to a new base with synthetic data only (Trans-LoRA)",
        description="The source base with the adapter (SHiRA, diffusers/PEFT LoRA or kohya LoRA) draws images for "
        "synthetic prompts that imitate the seed captions; a real-vs-synthetic classifier trained on the seed "
        "images keeps the ones it takes for real; a new adapter on the target base learns from them. Writes the "
        "adapter, OUT.transfer.json (acceptance, MMD, timings) and OUT.transfer.png (source on the old base, "
        "student on the new one, the new base alone). With --adapters DIR: every DIR/NAME.safetensors with its "
        "seed images in DIR/NAME/, into the folder --out (resumable; under accelerate launch, process i takes "
        "adapters i, i + N, ...).",
    )
    source = transfer.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="the adapter file to transfer")
    source.add_argument("--adapters", help="a folder: NAME.safetensors + NAME/ seed images for each adapter")
    transfer.add_argument("--from", dest="source_base", required=True, help="the adapter's base")
    transfer.add_argument("--to", dest="target_base", required=True, help="the new base")
    transfer.add_argument("--seed-data", help="the style's few real images with same-name .txt captions")
    transfer.add_argument("--out", required=True, help="the new adapter (.safetensors); with --adapters a folder")
    transfer.add_argument("--as", dest="kind", choices=["shira", "lora"], help="the new adapter's kind (default: "
                          "the source's)")
    transfer.add_argument("--synthetic", type=_positive_int, default=50, help="synthetic samples kept (default 50)")
    transfer.add_argument("--generator", help="a causal LM (local folder or cached Hub id) writing the prompts "
                          "(default: offline word substitution in the target's token-embedding space)")
    transfer.add_argument("--no-filter", dest="filter", action="store_false", help="keep every drawn sample")
    transfer.add_argument("--synthetic-only", dest="with_seeds", action="store_false",
                          help="train the student on the kept synthetic samples alone (default: the seed images too)")
    transfer.add_argument("--max-draws", type=_positive_int, help="cap on samples drawn (default 4 x --synthetic)")
    transfer.add_argument("--calibration", type=_positive_int, help="synthetic samples the discriminator learns "
                          "against (default 2 x the seed images, at least 10)")
    transfer.add_argument("--ignore-discriminator", dest="stored_discriminator", action="store_false",
                          help="fit the discriminator on the seed images even where one is stored beside the adapter "
                          "(ADAPTER.discriminator.json, from shira train --discriminator)")
    transfer.add_argument("--steps", type=_positive_int, default=500, help="student training steps (default 500)")
    transfer.add_argument("--rank", type=_positive_int, help="student rank (default: the source LoRA's, else 2)")
    transfer.add_argument("--slot", type=int, help="the student's Struct slot, 0-7 (masks disjoint from other slots)")
    transfer.add_argument("--guidance", type=_guidance_scale, default=5.0)
    transfer.add_argument("--sample-steps", type=_positive_int, default=20, help="teacher denoising steps")
    transfer.add_argument("--report-images", type=int, default=4, help="columns of OUT.transfer.png (0: none)")
    transfer.add_argument("--seed", type=int, default=0)
    transfer.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    convert = commands.add_parser(
        "convert",
        help="a LoRA file as a SHiRA adapter on the same base, without training",
        description="Keep the largest entries of each layer's LoRA delta (the mask keeping the most energy) and "
        "report the relative reconstruction error ||delta - S|| / ||delta||; for a bundled style's LoRA also "
        "the style strength before (LoRA) and after (SHiRA) on reserved prompts. Reads diffusers/PEFT and "
        "kohya/A1111 LoRA files.",
    )
    convert.add_argument("lora", metavar="LORA_FILE")
    convert.add_argument("--base", required=True)
    convert.add_argument("--out", required=True, help="the SHiRA adapter (.safetensors)")
    size = convert.add_mutually_exclusive_group()
    size.add_argument("--density", type=_density, help="share of each weight's entries")
    size.add_argument("--rank", type=_positive_int, help="r*(rows+cols) entries per layer (default: the LoRA's "
                      "rank, equal parameters)")
    convert.add_argument("--prompts", type=int, default=8, help="reserved prompts for the strength check of a "
                         "bundled style's LoRA (0: skip; default 8)")
    convert.add_argument("--overwrite", action="store_true")
    convert.add_argument("--json", action="store_true")

    ev_transfer = ev_kinds.add_parser(
        "transfer",
        help="bundled styles carried from toy-sd to toy-sdxl: transfer vs no filter vs the 5 seeds alone",
        description="Per bundled style: 5 seed images (the first of styles/NAME/images/), the transfer, the same "
        "without the filter, and an adapter trained on the 5 seeds alone, all on toy-sdxl with the same student "
        "recipe; style strength vs the source adapter's on toy-sd and content vs toy-sdxl's own, on reserved "
        "prompts (image i with seed i). Results in OUT/eval-transfer.json (styles done are skipped).",
    )
    ev_transfer.add_argument("--style", action="append", dest="styles", help="default: every bundled style")
    ev_transfer.add_argument("--out", default="transfer-eval", help="folder for adapters and results")
    ev_transfer.add_argument("--from", dest="source", default="toy-sd", choices=["toy-sd", "toy-sdxl"],
                             help="the base the bundled source adapters are on (default toy-sd)")
    ev_transfer.add_argument("--to", dest="target", default="toy-sdxl", choices=["toy-sd", "toy-sdxl"],
                             help="the base the students are trained on (default toy-sdxl)")
    ev_transfer.add_argument("--variant", choices=["shira", "lora"], default="shira", help="the source adapter")
    ev_transfer.add_argument("--as", dest="kind", choices=["shira", "lora"],
                             help="the students' kind (default: the source's)")
    ev_transfer.add_argument("--synthetic-only", dest="with_seeds", action="store_false",
                             help="students learn from the kept synthetic samples alone (default: the seeds too)")
    ev_transfer.add_argument("--row", action="append", dest="rows", choices=["transfer", "no-filter", "seeds-only"],
                             help="which adapters per style (default: all three)")
    ev_transfer.add_argument("--steps", type=_positive_int, default=300, help="student training steps")
    ev_transfer.add_argument("--synthetic", type=_positive_int, default=20)
    ev_transfer.add_argument("--prompts", type=_positive_int, default=20, help="reserved prompts measured")
    ev_transfer.add_argument("--sample-steps", type=_positive_int, default=20)
    ev_transfer.add_argument("--guidance", type=_guidance_scale, default=5.0)
    ev_transfer.add_argument("--generator", help="a causal LM for the prompts (default: offline)")
    ev_transfer.add_argument("--json", action="store_true")


def _cmd_transfer(args) -> None:
    from .training import TrainingInterrupted
    from .transfer import TransferConfig, transfer
    from .transfer.batch import transfer_folder

    if args.adapter and not args.seed_data:
        raise ShiraError("--seed-data is required with --adapter (a few of the style's images with .txt captions)")
    config = TransferConfig(adapter=args.adapter or "", source_base=args.source_base, target_base=args.target_base,
                            seed_data=args.seed_data, out=args.out, kind=args.kind, synthetic=args.synthetic,
                            generator=args.generator, filter=args.filter, with_seeds=args.with_seeds,
                            max_draws=args.max_draws,
                            calibration=args.calibration, report_images=args.report_images,
                            stored_discriminator=args.stored_discriminator,
                            steps=args.steps, rank=args.rank, slot=args.slot, guidance=args.guidance,
                            sample_steps=args.sample_steps, seed=args.seed, overwrite=args.overwrite)
    if args.adapters and args.out.endswith(".safetensors"):
        raise ShiraError("with --adapters, --out is a folder for the new adapters")
    try:
        if args.adapters:
            for name, state in transfer_folder(args.adapters, args.out, config).items():
                print(f"{name}: {state}")
            return
        report = transfer(config)
    except TrainingInterrupted as exc:  # Ctrl-C in the student's training: it wrote a checkpoint
        print(f"shira: interrupted at the student's step {exc.record['steps']} of {exc.record['total_steps']}; "
              "the kept samples and the student's checkpoint are saved: run the same command to resume",
              file=sys.stderr)
        raise SystemExit(130) from None
    f = report["filter"]
    print(f"wrote {args.out} ({report['target']['kind']} on {args.target_base}); kept {f['kept']} of {f['drawn']} "
          f"drawn (acceptance {f['acceptance_rate']:.0%}), MMD to the seeds {f['mmd_before']:.3f} -> "
          f"{f['mmd_after']:.3f}; report {report['files']['report']}")


def _cmd_convert(args) -> None:
    from .transfer.convert import convert_command

    result = convert_command(args.lora, args.base, args.out, rank=args.rank, density=args.density,
                             prompts=args.prompts, overwrite=args.overwrite)
    line = (f"wrote {args.out}: {result['params']:,} entries ({result['lora_params']:,} LoRA parameters), relative "
            f"error {result['relative_error']:.3f}")
    if "strength" in result:
        s = result["strength"]
        line += f"; {s['look']} strength LoRA {s['lora']:.2f} -> SHiRA {s['shira']:.2f} on {s['prompts']} prompts"
    print(line)
    if args.json:
        print(json.dumps(result))


def _cmd_eval_transfer(args) -> None:
    from .bundled.specs import STYLES
    from .transfer.evaluate import eval_transfer, format_transfer_table

    if args.source == args.target:
        raise ShiraError("--from and --to name the same base")
    rows = tuple(r.replace("-", " ") for r in args.rows) if args.rows else None
    result = eval_transfer(args.styles or list(STYLES), args.out, source=args.source, target=args.target,
                           variant=args.variant, kind=args.kind, with_seeds=args.with_seeds,
                           **({"rows": rows} if rows else {}), steps=args.steps,
                           synthetic=args.synthetic, prompts=args.prompts, guidance=args.guidance,
                           sample_steps=args.sample_steps, generator=args.generator,
                           log=lambda t: print(t, file=sys.stderr, flush=True))
    print(format_transfer_table(result))
    if args.json:
        print(json.dumps(result))


COMMANDS = {
    "train": _cmd_train,
    "bases": _cmd_bases,
    "bench": _cmd_bench,
    "eval": _cmd_eval,
    "metrics": _cmd_metrics,
    "export-peft": _cmd_export,
    "generate": _cmd_generate,
    "import-peft": _cmd_import,
    "info": _cmd_info,
    "styles": _cmd_styles,
    "transfer": _cmd_transfer,
    "convert": _cmd_convert,
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``shira`` command; the exit status. A user's mistake (``ShiraError``, a file that
    cannot be read or written) is one line ``shira: error: ...`` and status 1; a bad argument one
    line and status 2; Ctrl-C one line and 130; anything else is a bug: one line ``shira: internal
    error: ...`` and status 1, with the traceback under ``--debug`` or ``SHIRA_DEBUG=1``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SHIRA_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    try:
        args = build_parser().parse_args(argv)
        with _library_log_on_stderr():
            COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _report(debug, "interrupted")
        return 130
    except ShiraError as exc:
        _report(debug, f"error: {exc}")
        return 1
    except OSError as exc:  # reading or writing a user's file: permission, missing folder, full disk
        where = f"{exc.filename}: " if exc.filename else ""
        _report(debug, f"error: {where}{exc.strerror or exc}")
        return 1
    except Exception as exc:
        _report(debug, f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1
    return 0


@contextmanager
def _library_log_on_stderr():
    """The library logs (``logging``, as diffusers does); a command shows its INFO messages as plain
    lines on stderr, so stdout keeps only the command's own output (tables, JSON)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("shira_diffusion")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _report(debug: bool, message: str) -> None:
    """One line on stderr (after the traceback, with ``debug``)."""
    if debug:
        import traceback

        traceback.print_exc()
    print("shira: " + " ".join(message.split()), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
