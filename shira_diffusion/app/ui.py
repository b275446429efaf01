"""The page: a ``gr.Blocks`` with a base chooser and four tabs (Create, Train, Transfer, Styles), wired to the
shared ``AppService``. Event functions take every setting as an input (no visitor state in globals);
errors a visitor can fix come back as ``gr.Error`` messages and the app keeps serving."""

from __future__ import annotations

import random

import gradio as gr

from ..errors import ShiraError
from ..generate import DEFAULT_GUIDANCE
from .checks import (checked_text, finite, flag, guard_processing, number, scrub, style_list, user_errors,
                     whole)
from .mix_panel import NOTHING_TO_MIX, PRESS_MEASURE, mix_report
from .recipe_png import read_recipe
from .service import MAX_IMAGES, MAX_SEED, MAX_STEPS, MAX_STYLES, AppService, base_name
from .styles_view import (TENSOR_COLUMNS, add_user_style, card, convert_user_lora, default_guidance, default_weight,
                          inspect_adapter, suggested_name, user_style_files)
from .uploads import KEEP_UPLOADS_SECONDS, MAX_UPLOAD_BYTES, app_home, foreign_adapter_kind, sweep_upload_cache

EXAMPLE_PROMPTS = [
    "a red circle on a blue background",
    "a yellow triangle on a purple background",
    "a white square on a black background",
    "a green ring on an orange background",
]
GENERATE_CONCURRENCY = 1  # one pipeline per base: requests take turns on it (the bank lock would serialise them anyway)
QUEUE_SIZE = 32
MAX_WEIGHT = 2.0  # the weight sliders' top (the CLI takes up to 10)
MAX_GUIDANCE_SLIDER = 10.0
MAX_CONVERT_RANK = 4096  # far above any LoRA's; bounds the work a visitor can ask for
DELETE_CACHE = (600, KEEP_UPLOADS_SECONDS)  # Gradio's delete_cache: every 10 minutes, files over an hour old
CSS = "#images img, #style-gallery img { image-rendering: pixelated; }"  # 64x64 images, shown large
HEADER = (
    "# shira-diffusion\n"
    "Sparse high-rank (SHiRA) style adapters: 1-2 % of the base weights, fused in place, several at once, "
    "switched in milliseconds. The bundled toy bases draw 64x64 shapes (`a {color} {shape} on a {color} "
    "background`) on a CPU."
)


def launch_options() -> dict:
    """What ``demo.launch`` needs: the upload size limit and the folders the page may show files from:
    generated images and the thumbnails' copies only. Never the styles folders (training images,
    captions, style.json, reports), jobs or uploads (Gradio serves its own cache by random names)."""
    shown = [app_home() / "outputs", app_home() / "static"]
    return {"max_file_size": MAX_UPLOAD_BYTES, "allowed_paths": [str(p) for p in shown], "css": CSS}


def checked_weights(weights, count: int) -> list[float]:
    """The first ``count`` slider values, each a finite weight in the sliders' range."""
    return [number(w, f"weight {i + 1}", 0.0, MAX_WEIGHT) for i, w in enumerate(list(weights)[:count])]


def checked_recipe(recipe: dict, service: AppService) -> dict:
    """A dropped PNG's recipe within what this page can show and run (the CLI's PNGs may go beyond:
    seeds up to 2^64, 100 steps of guidance 100)."""
    recipe["base"] = service.check_base(recipe["base"])
    if len(recipe["styles"]) > MAX_STYLES:
        raise ShiraError(f"this image mixed {len(recipe['styles'])} styles; the page mixes at most {MAX_STYLES}")
    for name, weight in recipe["styles"]:
        number(weight, f"its weight of {name}", 0.0, MAX_WEIGHT)
    whole(recipe["seed"], "its seed", 0, MAX_SEED)
    whole(recipe["steps"], "its steps", 1, MAX_STEPS)
    number(recipe["guidance"], "its guidance", 0.0, MAX_GUIDANCE_SLIDER)
    checked_text(recipe["prompt"], "its prompt")
    return recipe


def build_demo(service: AppService | None = None) -> gr.Blocks:
    service = service or AppService()

    def records(base):
        return {r.name: r for r in service.styles(base)}

    def cards(base):
        return [card(r) for r in service.styles(base)]

    def slider_updates(base, chosen, old_names, old_weights):
        """Slider rows for ``chosen``: a style keeps the weight it had, a new one gets its default."""
        by_name = records(base)
        kept = dict(zip(old_names or [], old_weights))
        updates = []
        for i in range(MAX_STYLES):
            if i < len(chosen):
                name = chosen[i]
                value = kept.get(name, default_weight(by_name.get(name), base_name(base)))
                updates.append(gr.update(visible=True, label=f"{name} weight", value=value))
            else:
                updates.append(gr.update(visible=False, label="weight", value=1.0))
        return updates

    def guidance_for(base, chosen):
        by_name = records(base)
        return default_guidance([by_name.get(n) for n in chosen], base_name(base)) if chosen else DEFAULT_GUIDANCE

    # offline: no telemetry; uploads (refused ones too) and Gradio's copies of outputs are deleted
    # after KEEP_UPLOADS_SECONDS, and the upload cache is kept under its size bound (sweep_upload_cache)
    with gr.Blocks(title="shira-diffusion", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(HEADER)
        with gr.Row():
            base = gr.Dropdown(service.base_choices(), value=service.default_base, allow_custom_value=True,
                               label="Base", scale=2, elem_id="base",
                               info="a bundled toy base, or a pipeline this server offers")
            base_status = gr.Markdown(elem_id="base-status")
        chosen_state = gr.State([])  # the names the weight sliders belong to, in order (this page only)

        with gr.Tabs():
            # ---------------------------------------------------------------- Create
            with gr.Tab("Create", id="create"):
                gallery = gr.Gallery(label="Styles for this base (click to choose; click again to drop)",
                                     columns=6, height=230, allow_preview=False, elem_id="style-gallery")
                # a Dropdown, not a CheckboxGroup: its choices change with the base and the user's
                # styles, and API clients name styles the page has not listed yet
                chosen = gr.Dropdown([r.name for r in service.styles()], value=[], multiselect=True,
                                     allow_custom_value=True, label="Chosen styles", elem_id="chosen")
                with gr.Row():
                    sliders = [finite(gr.Slider(0.0, MAX_WEIGHT, value=1.0, step=0.05, label="weight", visible=False,
                                                elem_id=f"weight-{i}")) for i in range(MAX_STYLES)]
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(EXAMPLE_PROMPTS[0], label="Prompt", elem_id="prompt")
                        gr.Examples([[p] for p in EXAMPLE_PROMPTS], inputs=prompt, label="Example prompts")
                    with gr.Column(scale=2):
                        with gr.Row():
                            seed = finite(gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED,
                                                    elem_id="seed"))
                            dice = gr.Button("Random seed", scale=0, min_width=90, elem_id="dice")
                        steps = finite(gr.Slider(1, MAX_STEPS, value=20, step=1, label="Steps", elem_id="steps"))
                        guidance = finite(gr.Slider(0.0, MAX_GUIDANCE_SLIDER, value=DEFAULT_GUIDANCE, step=0.5,
                                                    label="Guidance", elem_id="guidance",
                                                    info="a single style's recommended guidance; 5 for a mix"))
                        count = finite(gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images", elem_id="count"))
                        compare = gr.Checkbox(False, label="Compare: the base alone, each style alone and the "
                                              "mix, one seed, side by side", elem_id="compare")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown(elem_id="status")
                images = gr.Gallery(label="Images (each PNG carries its recipe)", columns=5, fit_columns=False,
                                    height=260, preview=False, object_fit="contain", elem_id="images", format="png")
                recipe_file = gr.File(label="Drop a PNG made here: its recipe fills the controls",
                                      file_types=[".png"], type="filepath", height=90, elem_id="recipe-drop")
                with gr.Accordion("What this mix does", open=True, elem_id="mix-panel"):
                    measure = gr.Button("Measure this mix", elem_id="measure-mix")
                    mix_text = gr.Markdown(NOTHING_TO_MIX, elem_id="mix-text")
                    mix_figure = gr.Image(label="Entry overlap, AWOR and stored retention", type="filepath",
                                          interactive=False, height=300, elem_id="mix-figure")
                    with gr.Accordion("The figures (JSON)", open=False):
                        mix_data = gr.JSON(label="Mix figures")

            # ---------------------------------------------------------------- Train
            with gr.Tab("Train", id="train"):
                from .train_tab import build_train_tab

                train_outputs = build_train_tab(service, base)

            # ---------------------------------------------------------------- Transfer
            with gr.Tab("Transfer", id="transfer"):
                from .transfer_tab import build_transfer_tab

                transfer_outputs = build_transfer_tab(service)

            # ---------------------------------------------------------------- Styles
            with gr.Tab("Styles", id="styles"):
                gr.Markdown("Upload a SHiRA adapter (`.safetensors` made by shira-diffusion) to inspect it and add "
                            "it to your styles. A diffusers or kohya LoRA file can be converted to SHiRA on the "
                            "chosen base (its largest delta entries, no training; `shira convert`).")
                upload = gr.File(label="Adapter (.safetensors)", file_types=[".safetensors"], type="filepath",
                                 elem_id="adapter-upload")
                summary = gr.Markdown("Upload a `.safetensors` adapter to inspect it.")
                tensors = gr.Dataframe(headers=TENSOR_COLUMNS, label="Adapted tensors", interactive=False)
                metadata = gr.JSON(label="Metadata")
                with gr.Row():
                    new_name = gr.Textbox(label="Style name", elem_id="new-name")
                    new_trigger = gr.Textbox(label="Trigger word (optional)")
                    new_description = gr.Textbox(label="Description (optional)")
                add = gr.Button("Add to my styles (for the chosen base)", elem_id="add-style")
                with gr.Row():
                    convert_rank = finite(gr.Number(None, label="SHiRA size as a LoRA rank (empty: the LoRA's own "
                                                    "rank, the same parameter count)", precision=0, minimum=1,
                                                    maximum=MAX_CONVERT_RANK, visible=False))
                    convert = gr.Button("Convert to SHiRA and add (for the chosen base)", visible=False,
                                        elem_id="convert-lora")
                add_status = gr.Markdown()
                gr.Markdown("### Your styles")
                with gr.Row():
                    mine = gr.Dropdown([], label="Your styles", scale=2, allow_custom_value=True, elem_id="my-styles")
                    download = gr.Button("Download")
                    delete = gr.Button("Delete", variant="stop")
                files = gr.File(label="Files", file_count="multiple", interactive=False)
                mine_status = gr.Markdown()

        # ------------------------------------------------------------------ handlers
        def user_names():
            return [r.name for r in service.catalog().list() if r.source == "user"]

        def refresh(base_value, current):
            names = [r.name for r in service.styles(base_value)]
            kept = [n for n in style_list(current, MAX_STYLES) if n in names]
            return cards(base_value), gr.update(choices=names, value=kept), gr.update(choices=user_names(), value=None)

        @user_errors
        def on_load(base_value):
            loaded = service.is_loaded(base_value)
            text = f"Base **{base_value}** ready." if loaded else \
                f"Base **{base_value}** is loading (the first image waits for it)."
            return (*refresh(base_value, []), text)

        demo.load(on_load, base, [gallery, chosen, mine, base_status], api_visibility="private")

        @user_errors
        def load_base(base_value, current, old_names, *weights):
            try:
                base_value = service.check_base(base_value)  # a path is refused: never loaded, never looked up
                loaded = service.base(base_value)
            except ShiraError as exc:  # the message in the page; the controls keep what they show
                message = scrub(str(exc))
                gr.Warning(message)
                return (f"**This base cannot be used:** {message}", *[gr.skip()] * (5 + MAX_STYLES))
            gallery_value, chosen_update, mine_update = refresh(base_value, current)
            kept = chosen_update["value"]
            return (f"Base **{loaded.spec}** ({loaded.family.upper()} family) ready, loaded in {loaded.seconds:.1f} s.",
                    gallery_value, chosen_update, mine_update, *slider_updates(base_value, kept, old_names, weights),
                    guidance_for(base_value, kept), kept)

        base.input(lambda: "Loading the base...", None, base_status, api_visibility="private").then(
            load_base, [base, chosen, chosen_state, *sliders],
            [base_status, gallery, chosen, mine, *sliders, guidance, chosen_state], api_name="load_base")

        @user_errors
        def toggle(current, event: gr.SelectData):
            name = event.value["caption"].split(" ")[0] if isinstance(event.value, dict) else None
            current = list(current or [])
            if name:
                current = [n for n in current if n != name] if name in current else current + [name]
            return current

        def mix_hint(current):
            return NOTHING_TO_MIX if len(current) < 2 else PRESS_MEASURE.format(names=" + ".join(current))

        @user_errors
        def on_chosen(base_value, current, old_names, *weights):
            current = style_list(current, MAX_STYLES)
            return (*slider_updates(base_value, current, old_names, weights), guidance_for(base_value, current),
                    current, mix_hint(current), None)

        chosen_outputs = [*sliders, guidance, chosen_state, mix_text, mix_figure]
        gallery.select(toggle, chosen, chosen, api_visibility="private").then(
            on_chosen, [base, chosen, chosen_state, *sliders], chosen_outputs, api_visibility="private")
        chosen.input(on_chosen, [base, chosen, chosen_state, *sliders], chosen_outputs, api_visibility="private")
        dice.click(lambda: random.randint(0, MAX_SEED), None, seed, api_visibility="private")

        @user_errors
        def run_generate(base_value, current, *rest):
            weights, (prompt_value, seed_value, steps_value, guidance_value, count_value, compare_value) = (
                rest[:MAX_STYLES], rest[MAX_STYLES:])
            current = style_list(current, MAX_STYLES)
            styles = list(zip(current, checked_weights(weights, len(current))))
            if flag(compare_value, "compare"):
                result = service.compare(base_value, styles, prompt_value, seed_value, steps_value, guidance_value)
                what = f"{len(result.images)} images compared"
            else:
                result = service.generate(base_value, styles, prompt_value, seed_value, steps_value, guidance_value,
                                          count_value)
                what = f"{len(result.images)} image{'s' * (len(result.images) > 1)}"
            text = (f"**switched in {result.switch_ms:.1f} ms** · {what} in {result.seconds:.2f} s · "
                    f"base {base_value} · seed {int(seed_value)}")
            return result.images, text

        run.click(run_generate, [base, chosen, *sliders, prompt, seed, steps, guidance, count, compare],
                  [images, status], api_name="generate", concurrency_limit=GENERATE_CONCURRENCY)
        prompt.submit(run_generate, [base, chosen, *sliders, prompt, seed, steps, guidance, count, compare],
                      [images, status], api_visibility="private", concurrency_limit=GENERATE_CONCURRENCY)

        @user_errors
        def on_measure(base_value, current, *weights, progress=gr.Progress()):
            current = style_list(current, MAX_STYLES)
            base_value = service.check_base(base_value)
            report = mix_report(base_value, current, checked_weights(weights, len(current)), catalog=service.catalog(),
                                cache=service.mix_cache, progress=lambda fraction, text: progress(fraction, desc=text))
            return report.text, report.image, report.data

        # its own event, never in generation's: measuring a new pair takes seconds
        measure.click(on_measure, [base, chosen, *sliders], [mix_text, mix_figure, mix_data], api_name="mix_report",
                      concurrency_limit=1)

        @user_errors
        def load_recipe(path):
            if not path:
                return (gr.skip(),) * (9 + MAX_STYLES)
            sweep_upload_cache()  # uploads stay under their size bound
            recipe = checked_recipe(read_recipe(path), service)
            base_value = recipe["base"]
            names = [r.name for r in service.styles(base_value)]
            missing = [n for n, _ in recipe["styles"] if n not in names]
            if missing:
                raise ShiraError(f"this image used {', '.join(missing)}, which base {base_value} has no style for here")
            current = [n for n, _ in recipe["styles"]]
            weights = [w for _, w in recipe["styles"]]
            sliders_now = [gr.update(visible=i < len(current), label=f"{current[i]} weight" if i < len(current) else "weight",
                                     value=weights[i] if i < len(current) else 1.0) for i in range(MAX_STYLES)]
            return (base_value, cards(base_value), gr.update(choices=names, value=current), *sliders_now,
                    recipe["prompt"], recipe["seed"], recipe["steps"], recipe["guidance"], current,
                    f"Recipe loaded: {len(current)} style(s), seed {recipe['seed']}. Press Generate to make it again.")

        recipe_file.upload(load_recipe, recipe_file,
                           [base, gallery, chosen, *sliders, prompt, seed, steps, guidance, chosen_state, status],
                           api_name="load_recipe")

        # Styles tab
        @user_errors
        def on_upload(path, base_value):
            sweep_upload_cache()  # uploads stay under their size bound
            summary_text, rows, meta = inspect_adapter(path)
            lora = bool(path) and foreign_adapter_kind(path) == "lora"  # offered conversion instead of adding
            name = suggested_name(path, meta.get("name", "")) if meta else \
                f"{suggested_name(path)}-shira"[:64] if lora else ""
            return summary_text, rows, meta, name, (meta.get("trigger") or "") if meta else "", \
                (meta.get("description") or "") if meta else "", gr.update(visible=lora), gr.update(visible=lora)

        upload.upload(on_upload, [upload, base], [summary, tensors, metadata, new_name, new_trigger, new_description,
                                                  convert, convert_rank], api_name="inspect")

        @user_errors
        def on_add(path, name, trigger, description, base_value, current):
            sweep_upload_cache()  # uploads stay under their size bound
            record = add_user_style(service, path, name, service.check_base(base_value),
                                    checked_text(trigger, "the trigger word", 64),
                                    checked_text(description, "the description"))
            return (f"Added **{record.name}** to your styles for {base_name(base_value)}; it is in the gallery.",
                    *refresh(base_value, current))

        add.click(on_add, [upload, new_name, new_trigger, new_description, base, chosen],
                  [add_status, gallery, chosen, mine], api_name="add_style", concurrency_limit=GENERATE_CONCURRENCY)

        @user_errors
        def on_download(name):
            if not name:
                raise ShiraError("choose one of your styles")
            return user_style_files(service, name)

        download.click(on_download, mine, files, api_name="download_style")

        @user_errors
        def on_convert(path, name, trigger, description, rank, base_value, current):
            sweep_upload_cache()  # uploads stay under their size bound
            rank = None if rank is None else whole(rank, "rank", 1, MAX_CONVERT_RANK)
            record, conversion = convert_user_lora(service, path, name, service.check_base(base_value),
                                                   checked_text(trigger, "the trigger word", 64),
                                                   checked_text(description, "the description"), rank)
            worst, error = conversion.worst_layer
            text = (f"Converted to **{record.name}** for {base_name(base_value)}: {conversion.params:,} entries "
                    f"(the LoRA: {conversion.lora_params:,} parameters), relative error "
                    f"**{conversion.relative_error:.3f}** (energy kept {conversion.energy_kept:.0%}; worst layer "
                    f"`{worst}` {error:.3f}). It is in the gallery. A quick start, not a faithful copy: a LoRA's "
                    "delta is dense, and its largest entries hold only part of it (docs/transfer.md).")
            return (text, *refresh(base_value, current))

        convert.click(on_convert, [upload, new_name, new_trigger, new_description, convert_rank, base, chosen],
                      [add_status, gallery, chosen, mine], api_name="convert_lora",
                      concurrency_limit=GENERATE_CONCURRENCY)

        @user_errors
        def on_delete(name, base_value, current):
            if not name:
                raise ShiraError("choose one of your styles")
            service.remove_style(name)
            return (f"Deleted **{name}**.", *refresh(base_value, [n for n in style_list(current, MAX_STYLES)
                                                                  if n != name]))

        delete.click(on_delete, [mine, base, chosen], [mine_status, gallery, chosen, mine], api_name="delete_style")

        # a finished training run adds a style: refresh the gallery and lists
        train_outputs["finished"].then(user_errors(refresh), [base, chosen], [gallery, chosen, mine],
                                        api_visibility="private")
        transfer_outputs["finished"].then(user_errors(refresh), [base, chosen], [gallery, chosen, mine],
                                           api_visibility="private")
        # the Transfer tab's style list: read at page load (styles added since the page was built)
        demo.load(transfer_outputs["styles_of"], transfer_outputs["source"], transfer_outputs["style"],
                  api_visibility="private")

    guard_processing(demo)  # Gradio's own refusals (file fields, types): one line too
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=2)
    demo.shira_service = service  # for tests and the benchmark
    return demo
