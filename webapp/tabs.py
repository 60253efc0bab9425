"""The three tabs of the app, each built by its own function into a small dataclass of its
components, and wired to `webapp.handlers` by its own function.

Every API endpoint keeps its name and its input order (API clients depend on them); the order of
the advanced training settings is `webapp.training.SETTING_FIELDS`, shared with the handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from export import BrowserRuntime
from gpt import PRESETS
from webapp import backends, browser, corpus, evaluation, generation, models, training
from webapp.handlers import Handlers
from webapp.i18n import I18N
from webapp.settings import Settings

SETTING_KEYS = {  # training field -> its UI key (label `train.<key>`, element id `train-<key>`)
    "num_layers": "layers",
    "num_heads": "heads",
    "emb_size": "emb",
    "context": "context",
    "vocab_size": "vocab",
    "learning_rate": "lr",
    "batch_size": "batch",
    "steps": "steps",
    "dropout": "dropout",
}
SETTING_ROWS = (("layers", "heads"), ("emb", "context"), ("vocab", "batch"), ("lr", "steps"), ("dropout",))
SAMPLING_PRESETS = (generation.CUSTOM, *PRESETS)  # "custom" keeps the values as they are


def _setting(key: str, value: float) -> gr.Number:
    """One advanced training setting: label `train.<key>`, element id `train-<key>`.

    No `precision`: Gradio would round the value before the handler sees it (and fail on NaN or
    inf with a traceback); the handler checks every number itself (`webapp.validation`)."""
    return gr.Number(value, label=I18N(f"train.{key}"), elem_id=f"train-{key}")


# Train ---------------------------------------------------------------------------------------
@dataclass
class TrainTab:
    source: gr.Radio
    sample: gr.Dropdown
    files: gr.File
    start: gr.Radio
    start_model: gr.Dropdown
    preset: gr.Radio
    settings: dict[str, gr.Number]  # by training field (`SETTING_KEYS`)
    device: gr.Radio
    train_btn: gr.Button
    stop_btn: gr.Button
    resume_btn: gr.Button
    status: gr.Markdown
    plot: gr.LinePlot
    sample_box: gr.Textbox

    def setting_components(self) -> list[gr.Number]:
        """The advanced settings in `training.SETTING_FIELDS` order (the /train API order)."""
        return [self.settings[name] for name in training.SETTING_FIELDS]


def _train_inputs() -> dict[str, Any]:
    """The left column's choices: data source, sample, files, the model to start from, model preset."""
    return {
        "source": gr.Radio(
            [(I18N("train.source_sample"), "sample"), (I18N("train.source_upload"), "upload")],
            value="sample",
            label=I18N("train.source"),
            elem_id="train-source",
        ),
        "sample": gr.Dropdown(
            [(I18N(f"sample.{name}"), name) for name in corpus.samples()],
            value=corpus.STDLIB_SAMPLE,
            label=I18N("train.sample"),
            elem_id="train-sample-corpus",
        ),
        "files": gr.File(
            label=I18N("train.files"),
            file_count="multiple",
            file_types=list(corpus.TEXT_SUFFIXES),
            type="filepath",
            visible=False,
            elem_id="train-files",
        ),
        "start": gr.Radio(
            [(I18N(f"train.start_{name}"), name) for name in models.START_FROM],
            value="new",
            label=I18N("train.start_from"),
            info=I18N("train.start_info"),
            elem_id="train-start-from",
        ),
        "start_model": gr.Dropdown(  # any name: the server checks it against the caller's models
            [], label=I18N("train.start_model"), allow_custom_value=True, visible=False, elem_id="train-start-model"
        ),
        "preset": gr.Radio(
            [(I18N(f"preset.{name}"), name) for name in training.MODEL_PRESETS],
            value="tiny",
            label=I18N("train.preset"),
            elem_id="train-preset",
        ),
    }


def _advanced_settings(settings: Settings) -> tuple[dict[str, gr.Number], gr.Radio]:
    """The "advanced" accordion: one number per training field (the tiny preset's values), and the device."""
    tiny = training.MODEL_PRESETS["tiny"]
    values = {name: getattr(tiny, name) for name in SETTING_KEYS}
    values["steps"] = min(tiny.steps, settings.max_steps)
    by_key = {key: name for name, key in SETTING_KEYS.items()}
    numbers: dict[str, gr.Number] = {}
    devices = backends.devices()
    unavailable = [d for d in devices.values() if not d.available]
    with gr.Accordion(I18N("train.advanced"), open=False, elem_id="train-advanced"):
        for row in SETTING_ROWS:
            with gr.Row():
                for key in row:
                    numbers[by_key[key]] = _setting(key, values[by_key[key]])
                if row == SETTING_ROWS[-1]:
                    device = gr.Radio(
                        [(d.label, d.name) for d in devices.values()],
                        value="cpu",
                        label=I18N("train.device"),
                        info=backends.unavailable_text(unavailable, "en"),
                        elem_id="train-device",
                    )
    return numbers, device


def build_train_tab(settings: Settings) -> TrainTab:
    """The Train tab: data and model settings on the left, status, loss plot and sample on the right."""
    with gr.Tab(I18N("tab.train"), id="train"), gr.Row():
        with gr.Column(scale=2, min_width=320):
            inputs = _train_inputs()
            numbers, device = _advanced_settings(settings)
            with gr.Row():
                train_btn = gr.Button(I18N("train.start"), variant="primary", min_width=90, elem_id="train-start")
                stop_btn = gr.Button(I18N("train.stop"), variant="stop", min_width=90, elem_id="train-stop")
                resume_btn = gr.Button(I18N("train.resume"), min_width=90, elem_id="train-resume")
        with gr.Column(scale=3, min_width=400):
            status = gr.Markdown(I18N("train.idle"), label=I18N("train.status"), elem_id="train-status")
            plot = gr.LinePlot(  # axis and legend titles in the reader's language: `Handlers.page_labels`
                x="step", y="loss", color="split", label=I18N("train.plot"), elem_id="train-plot"
            )
            sample_box = gr.Textbox(
                label=I18N("train.sample_box"), lines=8, max_lines=16, interactive=False, elem_id="train-sample"
            )
    return TrainTab(
        **inputs,
        settings=numbers,
        device=device,
        train_btn=train_btn,
        stop_btn=stop_btn,
        resume_btn=resume_btn,
        status=status,
        plot=plot,
        sample_box=sample_box,
    )


def wire_train_tab(
    tab: TrainTab, h: Handlers, settings: Settings, current: gr.Markdown, owner: gr.BrowserState
) -> None:
    """Source switch, model presets, and the train / resume / stop_training endpoints (`owner`: the
    browser's owner key, the last input of every endpoint that touches saved models)."""
    heavy = {"concurrency_limit": settings.train_concurrency, "concurrency_id": "train"}
    outputs = [tab.status, tab.plot, tab.sample_box, current]  # the order `Handlers.train` yields
    tab.source.change(
        lambda s: (gr.update(visible=s == "sample"), gr.update(visible=s == "upload")),
        tab.source,
        [tab.sample, tab.files],
        api_visibility="private",
        queue=False,
    )
    # .input, not .change: a preset fills the settings only when the user picks one, never
    # because the page (re)rendered the radio, which would overwrite values already typed
    tab.preset.input(h.preset, tab.preset, tab.setting_components(), api_visibility="private", queue=False)
    tab.start.change(  # going on from a model: pick the saved one; its shape replaces the presets
        h.start_view,
        [tab.start, owner],
        [tab.start_model, tab.preset],
        api_visibility="private",
        queue=False,
    )
    train_event = tab.train_btn.click(
        h.train,
        [tab.source, tab.files, tab.sample, *tab.setting_components(), tab.device, tab.start, tab.start_model, owner],
        outputs,
        api_name="train",
        show_progress_on=[tab.plot],
        **heavy,
    )
    resume_event = tab.resume_btn.click(
        h.resume, [tab.settings["steps"]], outputs, api_name="resume", show_progress_on=[tab.plot], **heavy
    )
    tab.stop_btn.click(
        h.stop, None, outputs, api_name="stop_training", cancels=[train_event, resume_event], queue=False
    )


# Generate ------------------------------------------------------------------------------------
@dataclass
class GenerateTab:
    prompt: gr.Textbox
    backend: gr.Radio
    mode: gr.Radio
    sampling_preset: gr.Dropdown
    max_new: gr.Slider
    temperature: gr.Slider
    top_k: gr.Slider
    top_p: gr.Slider
    min_p: gr.Slider
    penalty: gr.Slider
    stops: gr.Textbox
    seed: gr.Textbox
    gen_btn: gr.Button
    browser_btn: gr.Button
    browser_precision: gr.Radio
    browser_files: gr.File
    browser_reference: gr.JSON
    gen_stop: gr.Button
    compare_btn: gr.Button
    output: gr.Textbox
    stats: gr.Markdown
    report: gr.Markdown
    tokens: gr.HighlightedText
    token_details: gr.Markdown


def _generation_settings(settings: Settings) -> dict[str, Any]:
    """Backend, mode, sampling preset and the sampling numbers."""
    gen_backends = backends.backends()
    unavailable = [b for b in gen_backends.values() if not b.available]
    found: dict[str, Any] = {}
    found["backend"] = gr.Radio(
        [(backends.choice_label(b), b.name) for b in gen_backends.values()],
        value=backends.TORCH,
        label=I18N("gen.backend"),
        info=backends.unavailable_text(unavailable, "en"),
        elem_id="gen-backend",
    )
    with gr.Row():
        found["mode"] = gr.Radio(
            [(I18N("gen.mode_greedy"), "greedy"), (I18N("gen.mode_sampling"), "sampling")],
            value=generation.DEFAULTS["mode"],
            label=I18N("gen.mode"),
            elem_id="gen-mode",
        )
        found["sampling_preset"] = gr.Dropdown(
            [(I18N(f"gen.preset_{name}"), name) for name in SAMPLING_PRESETS],
            value=generation.DEFAULT_PRESET,
            label=I18N("gen.preset"),
            elem_id="gen-preset",
        )
    found["max_new"] = gr.Slider(
        1,
        settings.max_new_tokens,
        value=min(200, settings.max_new_tokens),
        step=1,
        label=I18N("gen.max_new_tokens"),
        elem_id="gen-max-new",
    )
    with gr.Row():
        found["temperature"] = gr.Slider(
            0,
            2,
            value=generation.DEFAULTS["temperature"],
            step=0.05,
            label=I18N("gen.temperature"),
            elem_id="gen-temperature",
        )
        found["top_k"] = gr.Slider(
            0, 200, value=generation.DEFAULTS["top_k"], step=1, label=I18N("gen.top_k"), elem_id="gen-top-k"
        )
    with gr.Row():
        found["top_p"] = gr.Slider(
            0.05, 1, value=generation.DEFAULTS["top_p"], step=0.01, label=I18N("gen.top_p"), elem_id="gen-top-p"
        )
        found["min_p"] = gr.Slider(
            0, 1, value=generation.DEFAULTS["min_p"], step=0.01, label=I18N("gen.min_p"), elem_id="gen-min-p"
        )
    found["penalty"] = gr.Slider(
        0.5,
        2,
        value=generation.DEFAULTS["repetition_penalty"],
        step=0.05,
        label=I18N("gen.repetition_penalty"),
        elem_id="gen-penalty",
    )
    return found


def build_generate_tab(settings: Settings) -> GenerateTab:
    """The Generate tab: prompt and sampling settings on the left, output and statistics on the right."""
    with gr.Tab(I18N("tab.generate"), id="generate"), gr.Row():
        with gr.Column(scale=2, min_width=320):
            prompt = gr.Textbox(  # a trained or loaded model's own text start replaces it (`suggested_prompt`)
                label=I18N("gen.prompt"), lines=3, value=generation.default_prompt(), elem_id="gen-prompt"
            )
            found = _generation_settings(settings)
            with gr.Row():
                stops = gr.Textbox("", label=I18N("gen.stop_strings"), lines=2, elem_id="gen-stops")
                seed = gr.Textbox("", label=I18N("gen.seed"), max_lines=1, elem_id="gen-seed")
            browser_precision = gr.Radio(
                list(browser.PRECISIONS), value=browser.PRECISIONS[0], label=I18N("gen.browser_precision"),
                info=I18N("gen.browser_precision_info"), visible=False, elem_id="gen-browser-precision",
            )  # fmt: skip
            browser_files = gr.File(file_count="multiple", visible=False, elem_id="gen-browser-files")
            browser_reference = gr.JSON(visible=False)  # PyTorch's greedy ids, for Compare in the browser
            with gr.Row():
                gen_btn = gr.Button(I18N("gen.generate"), variant="primary", min_width=90, elem_id="gen-start")
                browser_btn = gr.Button(
                    I18N("gen.browser_generate"), variant="primary", min_width=90, visible=False, elem_id="gen-browser"
                )
                gen_stop = gr.Button(I18N("gen.stop"), variant="stop", min_width=90, elem_id="gen-stop")
                compare_btn = gr.Button(I18N("gen.compare"), min_width=90, elem_id="gen-compare")
        with gr.Column(scale=3, min_width=400):
            output = gr.Textbox(
                label=I18N("gen.output"), lines=14, max_lines=30, interactive=False, elem_id="gen-output"
            )
            stats = gr.Markdown(elem_id="gen-stats")
            with gr.Accordion(I18N("look.title"), open=False, elem_id="gen-look"):
                tokens = gr.HighlightedText(
                    label=I18N("look.view"), show_legend=False, show_inline_category=False, elem_id="gen-tokens"
                )
                token_details = gr.Markdown(I18N("look.none"), elem_id="gen-token-details")
            report = gr.Markdown(label=I18N("gen.compare_report"), elem_id="gen-compare-report")
    return GenerateTab(
        prompt=prompt,
        **found,
        stops=stops,
        seed=seed,
        gen_btn=gen_btn,
        browser_btn=browser_btn,
        browser_precision=browser_precision,
        browser_files=browser_files,
        browser_reference=browser_reference,
        gen_stop=gen_stop,
        compare_btn=compare_btn,
        output=output,
        stats=stats,
        report=report,
        tokens=tokens,
        token_details=token_details,
    )


def wire_generate_tab(tab: GenerateTab, h: Handlers, settings: Settings, runtime: BrowserRuntime) -> None:
    """Sampling presets, and the generate / compare endpoints (raw values: `preprocess=False`)."""
    light = {"concurrency_limit": settings.generate_concurrency, "concurrency_id": "generate"}
    tab.sampling_preset.input(
        h.sampling_preset,
        tab.sampling_preset,
        [tab.mode, tab.temperature, tab.top_k, tab.top_p],  # the order `Handlers.sampling_preset` returns
        api_visibility="private",
        queue=False,
    )
    gen_event = tab.gen_btn.click(
        h.generate,
        [
            tab.prompt,
            tab.max_new,
            tab.mode,
            tab.temperature,
            tab.top_k,
            tab.top_p,
            tab.min_p,
            tab.penalty,
            tab.stops,
            tab.seed,
            tab.backend,
        ],
        [tab.output, tab.stats],
        api_name="generate",
        show_progress="minimal",
        preprocess=False,  # raw values: the handler checks each (a slider would fail on text with a traceback)
        **light,
    )
    tab.backend.change(  # the browser backend has its own button: its generation never reaches the server
        lambda backend: [gr.update(visible=(backend == browser.BROWSER) != server) for server in (True, False, False)],
        tab.backend,
        [tab.gen_btn, tab.browser_btn, tab.browser_precision],
        api_visibility="private",
        queue=False,
    )
    tab.backend.change(None, [tab.backend, tab.stats], tab.stats, js=browser.probe_js(runtime))  # the runtime, at once
    settings_inputs = [tab.prompt, tab.max_new, tab.mode, tab.temperature, tab.top_k, tab.top_p, tab.min_p]
    fetch_model = tab.browser_btn.click(
        h.browser_model, tab.browser_precision, tab.browser_files, api_name="browser_model", show_progress="minimal"
    )
    fetch_model.success(  # client-side only: no server function
        None,
        [tab.browser_files, *settings_inputs, tab.penalty, tab.stops, tab.seed],
        [tab.output, tab.stats],
        js=browser.run_js(runtime),
    )
    tab.gen_stop.click(None, None, None, cancels=[gen_event, fetch_model], js=browser.STOP_JS, queue=False)
    gen_event.then(h.token_view, None, [tab.tokens, tab.token_details], api_name="token_view", queue=False)
    tab.backend.change(  # in-browser runs never reach the server: the view says what it covers
        h.look_view, tab.backend, [tab.tokens, tab.token_details], api_visibility="private", queue=False
    )
    tab.tokens.select(h.token_details, None, tab.token_details, api_visibility="private", queue=False)
    tab.compare_btn.click(
        h.compare, [tab.prompt, tab.max_new, tab.backend], tab.report, api_name="compare", preprocess=False, **light
    ).success(  # the browser backend: the browser's greedy ids against PyTorch's, above the server's report
        h.browser_reference,
        [tab.prompt, tab.max_new, tab.backend, tab.browser_precision],
        [tab.browser_files, tab.browser_reference],
        api_visibility="private",
        **light,
    ).success(
        None,
        [tab.backend, tab.browser_files, tab.browser_reference, tab.report],
        tab.report,
        js=browser.compare_js(runtime),
    )


# Models --------------------------------------------------------------------------------------
@dataclass
class ModelsTab:
    current: gr.Markdown
    message: gr.Markdown
    saved: gr.Dropdown
    refresh: gr.Button
    load_btn: gr.Button
    download_btn: gr.Button
    model_zip: gr.File
    delete_btn: gr.Button
    publish_btn: gr.Button
    unpublish_btn: gr.Button
    owner_note: gr.Markdown
    save_name: gr.Textbox
    save_btn: gr.Button
    upload: gr.File
    upload_btn: gr.Button
    precision: gr.Radio
    export_btn: gr.Button
    export_zip: gr.File
    export_report: gr.Markdown
    eval_model: gr.Radio
    eval_text: gr.Textbox
    eval_file: gr.File
    eval_btn: gr.Button
    eval_message: gr.Markdown
    eval_table: gr.Dataframe
    eval_view: gr.HighlightedText


def _saved_models_column() -> dict[str, Any]:
    """Saved models: pick, refresh, load, download, delete, publish, save, upload."""
    found: dict[str, Any] = {}
    with gr.Column(min_width=320):
        with gr.Row():
            found["saved"] = gr.Dropdown(
                [], label=I18N("model.saved_models"), allow_custom_value=True, scale=4, elem_id="model-saved"
            )
            found["refresh"] = gr.Button(I18N("model.refresh"), scale=1, size="sm", elem_id="model-refresh")
        with gr.Row():
            found["load_btn"] = gr.Button(I18N("model.load"), elem_id="model-load")
            found["download_btn"] = gr.Button(I18N("model.download"), elem_id="model-download")
        found["model_zip"] = gr.File(
            label=I18N("model.download_file"), interactive=False, visible=False, elem_id="model-zip"
        )
        with gr.Row():
            found["delete_btn"] = gr.Button(I18N("library.delete"), size="sm", variant="stop", elem_id="model-delete")
            found["publish_btn"] = gr.Button(I18N("library.publish"), size="sm", elem_id="model-publish")
            found["unpublish_btn"] = gr.Button(I18N("library.unpublish"), size="sm", elem_id="model-unpublish")
        found["owner_note"] = gr.Markdown(elem_id="model-owner-note")
        with gr.Row():
            found["save_name"] = gr.Textbox(
                "", label=I18N("model.save_name"), max_lines=1, scale=4, elem_id="model-save-name"
            )
            found["save_btn"] = gr.Button(I18N("model.save"), scale=1, elem_id="model-save")
        found["upload"] = gr.File(
            label=I18N("model.upload"), file_types=[".zip"], type="filepath", height=140, elem_id="model-upload"
        )
        found["upload_btn"] = gr.Button(I18N("model.upload_button"), elem_id="model-upload-start")
    return found


def _export_column() -> dict[str, Any]:
    """ONNX export: precision, button, zip and report."""
    found: dict[str, Any] = {}
    with gr.Column(min_width=320):
        gr.Markdown("### " + I18N("export.title"))
        found["precision"] = gr.Radio(
            ["fp32", "fp16", "int8"], value="fp32", label=I18N("export.precision"), elem_id="export-precision"
        )
        found["export_btn"] = gr.Button(I18N("export.button"), variant="primary", elem_id="export-start")
        found["export_zip"] = gr.File(label=I18N("export.file"), interactive=False, visible=False, elem_id="export-zip")
        found["export_report"] = gr.Markdown(elem_id="export-report")
    return found


def _evaluation_row() -> dict[str, Any]:
    """Evaluation: which model, a pasted text or a file, the button; then the session's results."""
    found: dict[str, Any] = {}
    gr.Markdown("### " + I18N("eval.title"))
    with gr.Row():
        with gr.Column(min_width=320):
            found["eval_model"] = gr.Radio(
                [(I18N(f"eval.{name}"), name) for name in evaluation.MODELS],
                value="current",
                label=I18N("eval.model"),
                elem_id="eval-model",
            )
            found["eval_text"] = gr.Textbox("", label=I18N("eval.text"), lines=4, elem_id="eval-text")
        with gr.Column(min_width=320):
            found["eval_file"] = gr.File(
                label=I18N("eval.file"), file_types=list(corpus.TEXT_SUFFIXES), type="filepath", height=120,
                elem_id="eval-file",
            )  # fmt: skip
            found["eval_btn"] = gr.Button(I18N("eval.button"), variant="primary", elem_id="eval-start")
    found["eval_message"] = gr.Markdown(elem_id="eval-message")
    found["eval_table"] = gr.Dataframe(
        label=I18N("eval.results"),
        interactive=False,
        wrap=True,
        column_widths=["28%", "18%", "9%", "12%", "11%", "11%", "11%"],
        elem_id="eval-table",
    )
    found["eval_view"] = gr.HighlightedText(
        label=I18N("eval.surprise"), show_legend=False, show_inline_category=False, elem_id="eval-view"
    )
    return found


def build_models_tab() -> ModelsTab:
    """The Models tab: the current model, saved models on the left, ONNX export on the right."""
    with gr.Tab(I18N("tab.models"), id="models"):
        current = gr.Markdown(elem_id="model-current")
        message = gr.Markdown(elem_id="model-message")
        with gr.Row():
            saved = _saved_models_column()
            exports = _export_column()
        evaluations = _evaluation_row()
    return ModelsTab(current=current, message=message, **saved, **exports, **evaluations)


def wire_models_tab(tab: ModelsTab, h: Handlers, settings: Settings, owner: gr.BrowserState) -> None:
    """The list / load / download / save / upload / delete / publish / export / evaluate endpoints;
    those that touch saved models take the browser's owner key (`owner`) as their last input."""
    tab.eval_btn.click(
        h.evaluate,
        [tab.eval_model, tab.saved, tab.eval_text, tab.eval_file, owner],
        [tab.eval_table, tab.eval_message, tab.eval_view],
        api_name="evaluate",
        concurrency_limit=settings.eval_concurrency,  # its own pool: a long evaluation never delays generation
        concurrency_id="evaluate",
    )
    show = {"fn": lambda: gr.update(visible=True), "inputs": None, "api_visibility": "private", "queue": False}
    tab.refresh.click(h.model_choices, owner, tab.saved, api_name="list_models", queue=False)
    tab.load_btn.click(h.load_model, [tab.saved, owner], [tab.current, tab.message], api_name="load_model")
    tab.download_btn.click(h.download_model, [tab.saved, owner], tab.model_zip, api_name="download_model").success(
        outputs=tab.model_zip, **show
    )
    changed = [tab.saved, tab.current, tab.message]  # the order save_model / upload_checkpoint return
    tab.save_btn.click(h.save_model, [tab.save_name, owner], changed, api_name="save_model")
    tab.upload_btn.click(h.upload_checkpoint, [tab.upload, owner], changed, api_name="upload_checkpoint")
    listed = [tab.saved, tab.message]  # the order delete_model / publish_model / unpublish_model return
    tab.delete_btn.click(h.delete_model, [tab.saved, owner], listed, api_name="delete_model")
    tab.publish_btn.click(h.publish_model, [tab.saved, owner], listed, api_name="publish_model")
    tab.unpublish_btn.click(h.unpublish_model, [tab.saved, owner], listed, api_name="unpublish_model")
    tab.export_btn.click(
        h.export,
        tab.precision,
        [tab.export_zip, tab.export_report],
        api_name="export",
        concurrency_id="export",
        concurrency_limit=settings.export_concurrency,  # every entry point shares the server's export gate
    ).success(outputs=tab.export_zip, **show)
