"""The page: a ``gr.Blocks`` with a base chooser and four tabs (Create, Train, Transfer, Styles), wired to the
shared ``AppService``. Event functions take every setting as an input (no visitor state in globals);
errors a visitor can fix come back as ``gr.Error`` messages and the app keeps serving."""

from __future__ import annotations

import functools
import random

import gradio as gr

from ..catalog import BUNDLED_ROOT, user_root
from ..errors import ShiraError
from ..generate import DEFAULT_GUIDANCE
from .mix_panel import NOTHING_TO_MIX, PRESS_MEASURE, mix_report
from .recipe_png import read_recipe
from .service import MAX_IMAGES, MAX_SEED, MAX_STEPS, MAX_STYLES, AppService, base_name
from .styles_view import (TENSOR_COLUMNS, add_user_style, card, convert_user_lora, default_guidance, default_weight,
                          inspect_adapter, suggested_name, user_style_files)
from .uploads import MAX_UPLOAD_BYTES, app_home, foreign_adapter_kind

EXAMPLE_PROMPTS = [
    "a red circle on a blue background",
    "a yellow triangle on a purple background",
    "a white square on a black background",
    "a green ring on an orange background",
]
GENERATE_CONCURRENCY = 1  # one pipeline per base: requests take turns on it (the bank lock would serialise them anyway)
QUEUE_SIZE = 32
CSS = "#images img, #style-gallery img { image-rendering: pixelated; }"  # 64x64 images, shown large
HEADER = (
    "# shira-diffusion\n"
    "Sparse high-rank (SHiRA) style adapters: 1-2 % of the base weights, fused in place, several at once, "
    "switched in milliseconds. The bundled toy bases draw 64x64 shapes (`a {color} {shape} on a {color} "
    "background`) on a CPU."
)


def _user_errors(function):
    """``ShiraError`` (anything the visitor can fix) -> a message in the page, not a crash."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ShiraError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    return wrapper


def launch_options() -> dict:
    """What ``demo.launch`` needs: the upload size limit and the folders the page may show files from."""
    shown = [BUNDLED_ROOT, user_root(), app_home() / "outputs", app_home() / "static"]  # not uploads or jobs
    return {"max_file_size": MAX_UPLOAD_BYTES, "allowed_paths": [str(p) for p in shown], "css": CSS}


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

    with gr.Blocks(title="shira-diffusion", analytics_enabled=False) as demo:  # offline: no telemetry
        gr.Markdown(HEADER)
        with gr.Row():
            base = gr.Dropdown(service.base_choices(), value=service.default_base, allow_custom_value=True,
                               label="Base", scale=2, elem_id="base",
                               info="a bundled toy base, a local diffusers folder, or a Hub id in the local cache")
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
                    sliders = [gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="weight", visible=False,
                                         elem_id=f"weight-{i}") for i in range(MAX_STYLES)]
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(EXAMPLE_PROMPTS[0], label="Prompt", elem_id="prompt")
                        gr.Examples([[p] for p in EXAMPLE_PROMPTS], inputs=prompt, label="Example prompts")
                    with gr.Column(scale=2):
                        with gr.Row():
                            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed")
                            dice = gr.Button("Random seed", scale=0, min_width=90, elem_id="dice")
                        steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Steps", elem_id="steps")
                        guidance = gr.Slider(0.0, 10.0, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance",
                                             info="a single style's recommended guidance; 5 for a mix",
                                             elem_id="guidance")
                        count = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images", elem_id="count")
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
                    convert_rank = gr.Number(None, label="SHiRA size as a LoRA rank (empty: the LoRA's own rank, "
                                             "the same parameter count)", precision=0, minimum=1, visible=False)
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
            kept = [n for n in (current or []) if n in names]
            return cards(base_value), gr.update(choices=names, value=kept), gr.update(choices=user_names(), value=None)

        def on_load(base_value):
            loaded = service.is_loaded(base_value)
            text = f"Base **{base_value}** ready." if loaded else \
                f"Base **{base_value}** is loading (the first image waits for it)."
            return (*refresh(base_value, []), text)

        demo.load(on_load, base, [gallery, chosen, mine, base_status], api_visibility="private")

        def load_base(base_value, current, old_names, *weights):
            try:
                loaded = service.base(base_value)
            except ShiraError as exc:  # the message in the page; the controls keep what they show
                gr.Warning(str(exc))
                return (f"**Base {base_value} cannot be used:** {exc}", *[gr.skip()] * (5 + MAX_STYLES))
            gallery_value, chosen_update, mine_update = refresh(base_value, current)
            kept = chosen_update["value"]
            return (f"Base **{loaded.spec}** ({loaded.family.upper()} family) ready, loaded in {loaded.seconds:.1f} s.",
                    gallery_value, chosen_update, mine_update, *slider_updates(base_value, kept, old_names, weights),
                    guidance_for(base_value, kept), kept)

        base.input(lambda: "Loading the base...", None, base_status, api_visibility="private").then(
            load_base, [base, chosen, chosen_state, *sliders],
            [base_status, gallery, chosen, mine, *sliders, guidance, chosen_state], api_name="load_base")

        def toggle(current, event: gr.SelectData):
            name = event.value["caption"].split(" ")[0] if isinstance(event.value, dict) else None
            current = list(current or [])
            if name:
                current = [n for n in current if n != name] if name in current else current + [name]
            return current

        def mix_hint(current):
            return NOTHING_TO_MIX if len(current) < 2 else PRESS_MEASURE.format(names=" + ".join(current))

        def on_chosen(base_value, current, old_names, *weights):
            current = list(current or [])
            return (*slider_updates(base_value, current, old_names, weights), guidance_for(base_value, current),
                    current, mix_hint(current), None)

        chosen_outputs = [*sliders, guidance, chosen_state, mix_text, mix_figure]
        gallery.select(toggle, chosen, chosen, api_visibility="private").then(
            on_chosen, [base, chosen, chosen_state, *sliders], chosen_outputs, api_visibility="private")
        chosen.input(on_chosen, [base, chosen, chosen_state, *sliders], chosen_outputs, api_visibility="private")
        dice.click(lambda: random.randint(0, 2**31 - 1), None, seed, api_visibility="private")

        @_user_errors
        def run_generate(base_value, current, *rest):
            weights, (prompt_value, seed_value, steps_value, guidance_value, count_value, compare_value) = (
                rest[:MAX_STYLES], rest[MAX_STYLES:])
            current = list(current or [])
            if len(current) > MAX_STYLES:
                raise ShiraError(f"{len(current)} styles chosen: mix at most {MAX_STYLES}")
            styles = [(name, float(weights[i])) for i, name in enumerate(current)]
            if compare_value:
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

        @_user_errors
        def on_measure(base_value, current, *weights, progress=gr.Progress()):
            current = list(current or [])
            report = mix_report(base_value, current, weights[:len(current)], catalog=service.catalog(),
                                cache=service.mix_cache, progress=lambda fraction, text: progress(fraction, desc=text))
            return report.text, report.image, report.data

        # its own event, never in generation's: measuring a new pair takes seconds
        measure.click(on_measure, [base, chosen, *sliders], [mix_text, mix_figure, mix_data], api_name="mix_report",
                      concurrency_limit=1)

        @_user_errors
        def load_recipe(path):
            if not path:
                return (gr.skip(),) * (9 + MAX_STYLES)
            recipe = read_recipe(path)
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
        def on_upload(path, base_value):
            text, rows, meta = inspect_adapter(path)
            lora = bool(path) and foreign_adapter_kind(path) == "lora"  # offered conversion instead of adding
            name = suggested_name(path, meta.get("name", "")) if meta else \
                f"{suggested_name(path)}-shira"[:64] if lora else ""
            return text, rows, meta, name, (meta.get("trigger") or "") if meta else "", \
                (meta.get("description") or "") if meta else "", gr.update(visible=lora), gr.update(visible=lora)

        upload.upload(on_upload, [upload, base], [summary, tensors, metadata, new_name, new_trigger, new_description,
                                                  convert, convert_rank], api_name="inspect")

        @_user_errors
        def on_add(path, name, trigger, description, base_value, current):
            record = add_user_style(service, path, name, base_value, trigger, description)
            return (f"Added **{record.name}** to your styles for {base_name(base_value)}; it is in the gallery.",
                    *refresh(base_value, current))

        add.click(on_add, [upload, new_name, new_trigger, new_description, base, chosen],
                  [add_status, gallery, chosen, mine], api_name="add_style", concurrency_limit=GENERATE_CONCURRENCY)

        @_user_errors
        def on_download(name):
            if not name:
                raise ShiraError("choose one of your styles")
            return user_style_files(service, name)

        download.click(on_download, mine, files, api_name="download_style")

        @_user_errors
        def on_convert(path, name, trigger, description, rank, base_value, current):
            record, conversion = convert_user_lora(service, path, name, base_value, trigger, description, rank)
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

        @_user_errors
        def on_delete(name, base_value, current):
            if not name:
                raise ShiraError("choose one of your styles")
            service.remove_style(name)
            return (f"Deleted **{name}**.", *refresh(base_value, [n for n in (current or []) if n != name]))

        delete.click(on_delete, [mine, base, chosen], [mine_status, gallery, chosen, mine], api_name="delete_style")

        # a finished training run adds a style: refresh the gallery and lists
        train_outputs["finished"].then(refresh, [base, chosen], [gallery, chosen, mine], api_visibility="private")
        transfer_outputs["finished"].then(refresh, [base, chosen], [gallery, chosen, mine], api_visibility="private")
        # the Transfer tab's style list: read at page load (styles added since the page was built)
        demo.load(transfer_outputs["styles_of"], transfer_outputs["source"], transfer_outputs["style"],
                  api_visibility="private")

    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=2)
    demo.shira_service = service  # for tests and the benchmark
    return demo
