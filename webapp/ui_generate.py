"""The Generate tab: its layout (`build`), its events (`wire`) and its handlers (`GenerateHandlers`).

A prompt and the sampling settings on the left; the streamed output, its statistics, the "why it
wrote this" view and Compare's report on the right. Generation runs on PyTorch, onnxruntime (the
model exported on first use) or in the visitor's browser (`webapp.browser`: the server only hands
over the model's files). The /generate and /compare endpoints take raw values (`preprocess=False`)
and check each themselves.

No `from __future__ import annotations` here: Gradio reads the `gr.Request` annotations at runtime
to inject them.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch

from export import BrowserRuntime, weight_bytes
from gpt import PRESETS
from webapp import backends, browser, exports, generation, insight, models, validation
from webapp.i18n import I18N, UserError, t
from webapp.services import POLL_S, TabHandlers, disabled_choice_css, friendly, friendly_stream, lang_of
from webapp.sessions import Session
from webapp.settings import Settings

STREAM_EVERY_S = 0.05  # at most 20 text updates a second while generating

SAMPLING_PRESETS = (generation.CUSTOM, *PRESETS)  # "custom" keeps the values as they are


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


def build(settings: Settings) -> GenerateTab:
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


class GenerateHandlers(TabHandlers):
    """The Generate tab's handlers, over the app's shared `Services`."""

    def sampling_preset(self, name: str) -> tuple:
        """(mode, temperature, top-k, top-p) of a sampling preset; "custom" leaves them as they are."""
        values = generation.preset_values(name)
        if values is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return "sampling", values["temperature"], values["top_k"], values["top_p"]

    def _backend_model(self, session: Session, backend: str, cancel: Any = None) -> tuple[Any, str, str]:
        """(model, backend label, provider really used) for `backend`; an onnxruntime backend exports
        the model on first use (cancelled when `cancel`, a `threading.Event`, is set)."""
        if backend not in backends.BACKENDS:
            raise UserError("error.bad_value", name="backend", value=backend, rule=" / ".join(backends.BACKENDS))
        if backend == backends.BROWSER:
            raise UserError("error.browser_backend")
        if backend == backends.TORCH:
            model = models.require_model(session)
            return model, backends.BACKENDS[backend], f"torch {model.device}"
        onnx, precision = models.onnx_model(session, backend, self.settings, cancel.is_set if cancel else None)
        return onnx, f"{backends.BACKENDS[backend]} ({precision})", onnx.provider

    @friendly_stream
    def generate(
        self,
        prompt: str,
        max_new_tokens: float,
        mode: str,
        temperature: float,
        top_k: float,
        top_p: float,
        min_p: float,
        repetition_penalty: float,
        stop_strings: str,
        seed: float | None,
        backend: str,
        request: gr.Request,
    ) -> Iterator[tuple[str, str]]:
        """Stream the continuation of `prompt` (the output shows prompt + continuation) and its speed."""
        lang = lang_of(request)
        session = self.services.session(request)
        prompt, options = self._checked(
            prompt, max_new_tokens, mode, temperature, top_k, top_p, min_p, repetition_penalty, stop_strings, seed
        )
        models.require_model(session)
        if backend != backends.TORCH and not session.exports:
            yield prompt, t(lang, "gen.exporting")
        torch.set_num_threads(self.settings.generate_threads)
        if backend in backends.ORT_PROVIDERS:  # may export first: a cancel kills the export
            model, label, provider = yield from exports.in_worker(
                lambda cancel: self._backend_model(session, backend, cancel),
                lambda _: (prompt, t(lang, "gen.exporting")),
                POLL_S,
            )
        else:
            model, label, provider = self._backend_model(session, backend)
        last = 0.0
        text, stats, scores = "", generation.Stats(), []
        for text, stats in generation.stream(model, prompt, options, scores):
            now = time.perf_counter()
            if now - last >= STREAM_EVERY_S:
                last = now
                yield (
                    prompt + text,
                    generation.stats_text(stats, label, provider, options, lang) + t(lang, "gen.streaming"),
                )
        session.pieces = insight.generated_pieces(scores, model.tokenizer, text)
        yield prompt + text, generation.stats_text(stats, label, provider, options, lang)

    @friendly
    def browser_settings(
        self,
        prompt: Any,
        max_new_tokens: Any,
        mode: Any,
        temperature: Any,
        top_k: Any,
        top_p: Any,
        min_p: Any,
        repetition_penalty: Any,
        stop_strings: Any,
        seed: Any,
        request: gr.Request,
    ) -> None:
        """The browser backend's settings, checked on the server before its files are fetched: the
        server backends' rules and messages, in the visitor's language (the page's own checks, in
        English, then never fire)."""
        self._checked(
            prompt, max_new_tokens, mode, temperature, top_k, top_p, min_p, repetition_penalty, stop_strings, seed
        )

    def _checked(self, prompt: Any, *settings: Any) -> tuple[str, generation.GenerationOptions]:
        """The prompt and the generation options from raw UI values (`generation.make_options`'s, in
        its order, up to the seed), each checked."""
        options = generation.make_options(*settings, self.settings.max_new_tokens)
        return generation.prompt_text(prompt), options

    @friendly_stream
    def browser_model(self, precision: str, request: gr.Request) -> Iterator[Any]:
        """The current model's files for the in-browser backend (exported in `precision` on first use;
        Stop kills that export)."""
        files = yield from self._browser_files(precision, request, gr.skip())
        yield files

    def _browser_files(self, precision: str, request: gr.Request, waiting: Any) -> Iterator[Any]:
        """`yield from` it: yields `waiting` while the export runs, returns the files' paths."""
        if precision not in browser.PRECISIONS:
            raise UserError("error.bad_value", name="precision", value=precision, rule=" / ".join(browser.PRECISIONS))
        session = self.services.session(request)
        models.require_model(session)
        files = yield from exports.in_worker(
            lambda cancel: models.browser_files(session, precision, self.settings, cancel.is_set),
            lambda _: waiting,
            POLL_S,
        )
        return [str(path) for path in files]

    @friendly
    def token_view(self, request: gr.Request) -> tuple[Any, str]:
        """The last generation coloured by surprise (1 - the token's probability), and a hint."""
        pieces = self.services.session(request).pieces
        return insight.highlighted(pieces), t(lang_of(request), "look.hint" if pieces else "look.none")

    def look_view(self, backend: str, request: gr.Request) -> tuple[Any, str]:
        """The "Why it wrote this" view for the chosen backend: the browser's runs never reach the server, so
        it says that it covers the server's backends; theirs shows the session's last generation."""
        if backend == backends.BROWSER:
            return [], t(lang_of(request), "look.browser")
        return self.token_view(request)

    def browser_precisions(self, request: gr.Request) -> Any:
        """The browser backend's precision choices, each with its download for the session's model
        (`export.precision.weight_bytes`: within a few percent of the graph's file)."""
        model = self.services.session(request).model
        if model is None:
            return gr.update(choices=list(browser.PRECISIONS))
        lang = lang_of(request)
        return gr.update(
            choices=[
                (t(lang, "gen.browser_precision_choice", precision=p, mb=_megabytes(weight_bytes(model, p))), p)
                for p in browser.PRECISIONS
            ]
        )

    def suggested_prompt(self, prompt: Any, request: gr.Request) -> Any:
        """The start of the current model's training text as the prompt, when the model changed and the
        prompt is still a suggestion (the page's default, empty, or the one suggested before)."""
        session = self.services.session(request)
        model = session.model
        suggestion = generation.suggested_prompt(model.training_record.get("prompt")) if model is not None else None
        if not suggestion or prompt not in ("", generation.default_prompt(), session.suggested_prompt):
            return gr.skip()
        session.suggested_prompt = suggestion
        return suggestion

    @friendly
    def token_details(self, evt: gr.EventData, request: gr.Request) -> str:
        """The probability and the alternatives of the token the user selected in the view.

        `gr.EventData`, not `gr.SelectData`: Gradio builds a SelectData before the handler runs and
        fails (HTTP 500) when a caller's event data lacks its keys; this reads what is there."""
        pieces = self.services.session(request).pieces
        data = evt._data if isinstance(getattr(evt, "_data", None), dict) else {}
        index = data.get("index")
        index = index[0] if isinstance(index, (list, tuple)) and index else index
        if not isinstance(index, int) or not 0 <= index < len(pieces):
            return t(lang_of(request), "look.none")
        return insight.describe(pieces[index], lang_of(request))

    @friendly_stream
    def compare(self, prompt: str, max_new_tokens: float, backend: str, request: gr.Request) -> Iterator[str]:
        """Run the prompt through torch and onnxruntime: max logit difference and greedy agreement
        (the model is exported on first use; a cancel kills that export)."""
        from export import TOLERANCES, compare

        lang = lang_of(request)
        session = self.services.session(request)
        prompt = generation.prompt_text(prompt)
        new_tokens = validation.integer("max_new_tokens", max_new_tokens, 1, self.settings.max_new_tokens)
        if backend not in backends.BACKENDS:
            raise UserError("error.bad_value", name="backend", value=backend, rule=" / ".join(backends.BACKENDS))
        model = models.require_model(session)
        onnx_backend = backend if backend in backends.ORT_PROVIDERS else backends.ORT_CPU
        torch.set_num_threads(self.settings.generate_threads)
        waiting = t(lang, "gen.exporting") if not session.exports else gr.skip()
        onnx, precision = yield from exports.in_worker(
            lambda cancel: models.onnx_model(session, onnx_backend, self.settings, cancel.is_set),
            lambda _: waiting,
            POLL_S,
        )
        ids, steps = generation.compare_prompt_ids(model, prompt, new_tokens)
        report = compare(model, onnx, torch.tensor([ids]), decode_steps=steps, tolerance=TOLERANCES[precision])
        torch_text = model.tokenizer.decode(model.generate([ids], steps)[0, len(ids) :])
        onnx_text = onnx.tokenizer.decode(onnx.generate([ids], steps)[0, len(ids) :])
        yield generation.compare_text(report, precision, torch_text, onnx_text, lang)

    @friendly_stream
    def browser_reference(
        self, prompt: str, max_new_tokens: float, backend: str, precision: str, request: gr.Request
    ) -> Iterator[tuple[Any, Any]]:
        """Compare on the browser backend: the model's files, and PyTorch's greedy ids for the prompt
        (cropped as Compare crops it) that the browser's must equal; nothing for other backends."""
        if backend != backends.BROWSER:
            yield gr.skip(), gr.skip()
            return
        files = yield from self._browser_files(precision, request, (gr.skip(), gr.skip()))
        model = models.require_model(self.services.session(request))
        new_tokens = validation.integer("max_new_tokens", max_new_tokens, 1, self.settings.max_new_tokens)
        ids, steps = generation.compare_prompt_ids(model, generation.prompt_text(prompt), new_tokens)
        torch.set_num_threads(self.settings.generate_threads)
        expected = model.generate([ids], steps)[0, len(ids) :].tolist()
        yield files, {"ids": ids, "expected": expected}

    def page_labels(self, request: gr.Request) -> Any:
        """The "unavailable here" note of the backend choice, in the reader's language."""
        unavailable = [b for b in backends.backends().values() if not b.available]
        return gr.update(info=backends.unavailable_text(unavailable, lang_of(request)))


def wire(
    demo: gr.Blocks, tab: GenerateTab, h: GenerateHandlers, runtime: BrowserRuntime, *, current: gr.Markdown
) -> None:
    """Sampling presets, the page's labels, and the generate / compare endpoints (raw values:
    `preprocess=False`); `runtime` serves the browser backend. From another part of the page:
    `current`, the Models tab's summary of the session's model (a new model suggests a new prompt)."""
    light = {"concurrency_limit": h.settings.generate_concurrency, "concurrency_id": "generate"}
    demo.load(h.page_labels, None, tab.backend, api_visibility="private", queue=False)
    current.change(  # a new model (trained, loaded): its training text's start as the prompt
        h.suggested_prompt, tab.prompt, tab.prompt, api_visibility="private", queue=False
    )
    for changed in (current, tab.backend):  # what the browser's model costs to download
        changed.change(h.browser_precisions, None, tab.browser_precision, api_visibility="private", queue=False)
    tab.sampling_preset.input(
        h.sampling_preset,
        tab.sampling_preset,
        [tab.mode, tab.temperature, tab.top_k, tab.top_p],  # the order `GenerateHandlers.sampling_preset` returns
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
    browser_settings = [*settings_inputs, tab.penalty, tab.stops, tab.seed]
    fetch_model = tab.browser_btn.click(
        h.browser_settings, browser_settings, None, api_visibility="private", preprocess=False, show_progress="hidden"
    ).success(
        h.browser_model, tab.browser_precision, tab.browser_files, api_name="browser_model", show_progress="minimal"
    )
    fetch_model.success(  # client-side only: no server function
        None,
        [tab.browser_files, *browser_settings],
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


def css() -> str:
    """The tab's styles: room for the statistics line, a monospace output, backends unavailable here greyed out."""
    unavailable = [b.name for b in backends.backends().values() if not b.available]
    return (
        "#gen-stats { min-height: 3.5em; }\n"
        "#gen-output textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }\n"
        + disabled_choice_css("gen-backend", unavailable)
    )


def _megabytes(size: int) -> str:
    """`size` bytes in MB: one decimal, two significant digits below 1 MB (0.077)."""
    return f"{size / 1e6:.1f}" if size >= 1e6 else f"{size / 1e6:.2g}"
