"""The simple-llm web app: `python webapp/app.py` from the repository root, or a Hugging Face Space
(`app_file: webapp/app.py`, which imports the module-level `demo`).

Serves on GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860), fully offline. Server
settings (artifact folder, caps, concurrency, threads) come from environment variables: see
`webapp/settings.py`. This module only builds the interface; the work is in `webapp.handlers`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `python webapp/app.py` puts webapp/, not the repository root, on sys.path
    sys.path.insert(0, str(_ROOT))

import gradio as gr  # noqa: E402

from webapp import backends, corpus, training  # noqa: E402
from webapp.handlers import Handlers  # noqa: E402
from webapp.i18n import I18N  # noqa: E402
from webapp.settings import Settings  # noqa: E402

CSS = """
#train-status, #gen-stats { min-height: 3.5em; }
#train-sample textarea, #gen-output textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
"""


def _disabled_choice_css(elem_id: str, values: list[str]) -> str:
    """Grey out radio choices that cannot run here (the handler refuses them too, with the reason)."""
    return "".join(
        f'#{elem_id} label:has(input[value="{v}"]) {{ opacity: .45; pointer-events: none; }}\n' for v in values
    )


def _setting(key: str, value: float) -> gr.Number:
    """One advanced training setting: label `train.<key>`, element id `train-<key>`.

    No `precision`: Gradio would round the value before the handler sees it (and fail on NaN or
    inf with a traceback); the handler checks every number itself (`webapp.validation`)."""
    return gr.Number(value, label=I18N(f"train.{key}"), elem_id=f"train-{key}")


def build_demo(settings: Settings | None = None) -> gr.Blocks:
    settings = settings or Settings.from_env()
    h = Handlers(settings)
    tiny = training.PRESETS["tiny"]
    samples = corpus.samples()
    gen_backends = backends.backends()
    train_devices = backends.devices()
    unavailable = [b for b in gen_backends.values() if not b.available]
    unavailable_devices = [d for d in train_devices.values() if not d.available]

    with gr.Blocks(title="simple-llm", delete_cache=(3600, 24 * 3600), analytics_enabled=False) as demo:
        demo.handlers = h  # for tests and embedding apps
        demo.simple_llm_css = (
            CSS
            + _disabled_choice_css("gen-backend", [b.name for b in unavailable])
            + _disabled_choice_css("train-device", [d.name for d in unavailable_devices])
        )
        gr.Markdown("# simple-llm")
        gr.Markdown(I18N("app.intro"))

        with gr.Tabs():
            # Train ------------------------------------------------------------------------
            with gr.Tab(I18N("tab.train"), id="train"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        source = gr.Radio(
                            [(I18N("train.source_sample"), "sample"), (I18N("train.source_upload"), "upload")],
                            value="sample",
                            label=I18N("train.source"),
                            elem_id="train-source",
                        )
                        sample = gr.Dropdown(
                            [(I18N(f"sample.{name}"), name) for name in samples],
                            value=corpus.STDLIB_SAMPLE,
                            label=I18N("train.sample"),
                            elem_id="train-sample-corpus",
                        )
                        files = gr.File(
                            label=I18N("train.files"),
                            file_count="multiple",
                            file_types=list(corpus.TEXT_SUFFIXES),
                            type="filepath",
                            visible=False,
                            elem_id="train-files",
                        )
                        preset = gr.Radio(
                            [(I18N(f"preset.{name}"), name) for name in training.PRESETS],
                            value="tiny",
                            label=I18N("train.preset"),
                            elem_id="train-preset",
                        )
                        with gr.Accordion(I18N("train.advanced"), open=False, elem_id="train-advanced"):
                            with gr.Row():
                                layers = _setting("layers", tiny.num_layers)
                                heads = _setting("heads", tiny.num_heads)
                            with gr.Row():
                                emb = _setting("emb", tiny.emb_size)
                                context = _setting("context", tiny.context)
                            with gr.Row():
                                vocab = _setting("vocab", tiny.vocab_size)
                                batch = _setting("batch", tiny.batch_size)
                            with gr.Row():
                                lr = _setting("lr", tiny.learning_rate)
                                steps = _setting("steps", min(tiny.steps, settings.max_steps))
                            with gr.Row():
                                dropout = _setting("dropout", tiny.dropout)
                                device = gr.Radio(
                                    [(d.label, d.name) for d in train_devices.values()],
                                    value="cpu",
                                    label=I18N("train.device"),
                                    info=backends.unavailable_text(unavailable_devices, "en"),
                                    elem_id="train-device",
                                )
                        with gr.Row():
                            train_btn = gr.Button(
                                I18N("train.start"), variant="primary", min_width=90, elem_id="train-start"
                            )
                            stop_btn = gr.Button(I18N("train.stop"), variant="stop", min_width=90, elem_id="train-stop")
                            resume_btn = gr.Button(I18N("train.resume"), min_width=90, elem_id="train-resume")
                    with gr.Column(scale=3, min_width=400):
                        status = gr.Markdown(I18N("train.idle"), label=I18N("train.status"), elem_id="train-status")
                        plot = gr.LinePlot(
                            x="step",
                            y="loss",
                            color="split",
                            label=I18N("train.plot"),
                            elem_id="train-plot",
                        )
                        sample_box = gr.Textbox(
                            label=I18N("train.sample_box"),
                            lines=8,
                            max_lines=16,
                            interactive=False,
                            elem_id="train-sample",
                        )

            # Generate ---------------------------------------------------------------------
            with gr.Tab(I18N("tab.generate"), id="generate"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        prompt = gr.Textbox(label=I18N("gen.prompt"), lines=3, value="def ", elem_id="gen-prompt")
                        backend = gr.Radio(
                            [(b.label, b.name) for b in gen_backends.values()],
                            value=backends.TORCH,
                            label=I18N("gen.backend"),
                            info=backends.unavailable_text(unavailable, "en"),
                            elem_id="gen-backend",
                        )
                        with gr.Row():
                            mode = gr.Radio(
                                [(I18N("gen.mode_greedy"), "greedy"), (I18N("gen.mode_sampling"), "sampling")],
                                value="greedy",
                                label=I18N("gen.mode"),
                                elem_id="gen-mode",
                            )
                            sampling_preset = gr.Dropdown(
                                [
                                    (I18N(f"gen.preset_{name}"), name)
                                    for name in ("custom", "precise", "creative", "code")
                                ],
                                value="custom",
                                label=I18N("gen.preset"),
                                elem_id="gen-preset",
                            )
                        max_new = gr.Slider(
                            1,
                            settings.max_new_tokens,
                            value=min(200, settings.max_new_tokens),
                            step=1,
                            label=I18N("gen.max_new_tokens"),
                            elem_id="gen-max-new",
                        )
                        with gr.Row():
                            temperature = gr.Slider(
                                0, 2, value=1.0, step=0.05, label=I18N("gen.temperature"), elem_id="gen-temperature"
                            )
                            top_k = gr.Slider(0, 200, value=0, step=1, label=I18N("gen.top_k"), elem_id="gen-top-k")
                        with gr.Row():
                            top_p = gr.Slider(
                                0.05, 1, value=1.0, step=0.01, label=I18N("gen.top_p"), elem_id="gen-top-p"
                            )
                            penalty = gr.Slider(
                                0.5,
                                2,
                                value=1.0,
                                step=0.05,
                                label=I18N("gen.repetition_penalty"),
                                elem_id="gen-penalty",
                            )
                        with gr.Row():
                            stops = gr.Textbox("", label=I18N("gen.stop_strings"), lines=2, elem_id="gen-stops")
                            seed = gr.Textbox("", label=I18N("gen.seed"), max_lines=1, elem_id="gen-seed")
                        with gr.Row():
                            gen_btn = gr.Button(
                                I18N("gen.generate"), variant="primary", min_width=90, elem_id="gen-start"
                            )
                            gen_stop = gr.Button(I18N("gen.stop"), variant="stop", min_width=90, elem_id="gen-stop")
                            compare_btn = gr.Button(I18N("gen.compare"), min_width=90, elem_id="gen-compare")
                    with gr.Column(scale=3, min_width=400):
                        output = gr.Textbox(
                            label=I18N("gen.output"), lines=14, max_lines=30, interactive=False, elem_id="gen-output"
                        )
                        stats = gr.Markdown(elem_id="gen-stats")
                        report = gr.Markdown(label=I18N("gen.compare_report"), elem_id="gen-compare-report")

            # Models -----------------------------------------------------------------------
            with gr.Tab(I18N("tab.models"), id="models"):
                current = gr.Markdown(elem_id="model-current")
                message = gr.Markdown(elem_id="model-message")
                with gr.Row():
                    with gr.Column(min_width=320):
                        with gr.Row():
                            saved = gr.Dropdown(
                                [],
                                label=I18N("model.saved_models"),
                                allow_custom_value=True,
                                scale=4,
                                elem_id="model-saved",
                            )
                            refresh = gr.Button(I18N("model.refresh"), scale=1, size="sm", elem_id="model-refresh")
                        with gr.Row():
                            load_btn = gr.Button(I18N("model.load"), elem_id="model-load")
                            download_btn = gr.Button(I18N("model.download"), elem_id="model-download")
                        model_zip = gr.File(
                            label=I18N("model.download_file"), interactive=False, visible=False, elem_id="model-zip"
                        )
                        with gr.Row():
                            save_name = gr.Textbox(
                                "", label=I18N("model.save_name"), max_lines=1, scale=4, elem_id="model-save-name"
                            )
                            save_btn = gr.Button(I18N("model.save"), scale=1, elem_id="model-save")
                        upload = gr.File(
                            label=I18N("model.upload"),
                            file_types=[".zip"],
                            type="filepath",
                            height=140,
                            elem_id="model-upload",
                        )
                        upload_btn = gr.Button(I18N("model.upload_button"), elem_id="model-upload-start")
                    with gr.Column(min_width=320):
                        gr.Markdown("### " + I18N("export.title"))
                        precision = gr.Radio(
                            ["fp32", "fp16", "int8"],
                            value="fp32",
                            label=I18N("export.precision"),
                            elem_id="export-precision",
                        )
                        export_btn = gr.Button(I18N("export.button"), variant="primary", elem_id="export-start")
                        export_zip = gr.File(
                            label=I18N("export.file"), interactive=False, visible=False, elem_id="export-zip"
                        )
                        export_report = gr.Markdown(elem_id="export-report")

        # wiring ---------------------------------------------------------------------------------
        heavy = dict(concurrency_limit=settings.train_concurrency)
        light = dict(concurrency_limit=settings.generate_concurrency, concurrency_id="generate")
        train_outputs = [status, plot, sample_box, current]

        source.change(
            lambda s: (gr.update(visible=s == "sample"), gr.update(visible=s == "upload")),
            source,
            [sample, files],
            api_visibility="private",
            queue=False,
        )
        # .input, not .change: a preset fills the settings only when the user picks one, never
        # because the page (re)rendered the radio, which would overwrite values already typed
        preset.input(
            h.preset,
            preset,
            [layers, heads, emb, context, vocab, lr, batch, steps, dropout],
            api_visibility="private",
            queue=False,
        )
        train_event = train_btn.click(
            h.train,
            [source, files, sample, layers, heads, emb, context, vocab, lr, batch, steps, dropout, device],
            train_outputs,
            api_name="train",
            concurrency_id="train",
            show_progress_on=[status],
            **heavy,
        )
        resume_event = resume_btn.click(
            h.resume,
            [steps],
            train_outputs,
            api_name="resume",
            concurrency_id="train",
            show_progress_on=[status],
            **heavy,
        )
        stop_btn.click(
            h.stop, None, train_outputs, api_name="stop_training", cancels=[train_event, resume_event], queue=False
        )

        sampling_preset.input(
            h.sampling_preset, sampling_preset, [mode, temperature, top_k, top_p], api_visibility="private", queue=False
        )
        gen_event = gen_btn.click(
            h.generate,
            [prompt, max_new, mode, temperature, top_k, top_p, penalty, stops, seed, backend],
            [output, stats],
            api_name="generate",
            show_progress="minimal",
            preprocess=False,  # raw values: the handler checks each (a slider would fail on text with a traceback)
            **light,
        )
        gen_stop.click(None, None, None, cancels=[gen_event], queue=False)
        compare_btn.click(h.compare, [prompt, max_new, backend], report, api_name="compare", preprocess=False, **light)

        refresh.click(h.model_choices, None, saved, api_name="list_models", queue=False)
        load_btn.click(h.load_model, saved, [current, message], api_name="load_model")
        show = dict(fn=lambda: gr.update(visible=True), inputs=None, api_visibility="private", queue=False)
        download_btn.click(h.download_model, saved, model_zip, api_name="download_model").success(
            outputs=model_zip, **show
        )
        save_btn.click(h.save_model, save_name, [saved, current, message], api_name="save_model")
        upload_btn.click(h.upload_checkpoint, upload, [saved, current, message], api_name="upload_checkpoint")
        export_btn.click(
            h.export,
            precision,
            [export_zip, export_report],
            api_name="export",
            concurrency_id="export",
            concurrency_limit=1,
        ).success(outputs=export_zip, **show)
        demo.load(h.model_choices, None, saved, api_visibility="private", queue=False)
        demo.load(h.model_info, None, current, api_name="model_info", queue=False)
        demo.load(h.availability, None, [backend, device], api_visibility="private", queue=False)
        demo.unload(h.unload)

    demo.queue(max_size=settings.max_queue, default_concurrency_limit=settings.generate_concurrency)
    return demo


def launch_kwargs(settings: Settings, demo: gr.Blocks) -> dict:
    """Everything `launch` needs besides host and port (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT decide those)."""
    return dict(
        i18n=I18N,
        theme=gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]),
        css=demo.simple_llm_css,
        max_file_size=f"{settings.max_upload_mb}mb",
        footer_links=["api", "settings"],
    )


demo = build_demo()

if __name__ == "__main__":
    demo.launch(**launch_kwargs(Settings.from_env(), demo))
