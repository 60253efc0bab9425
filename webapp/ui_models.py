"""The Models tab: its layout (`build`), its events (`wire`) and its handlers (`ModelsHandlers`).

The session's current model; saved models (list, load, download, save, upload, delete, publish),
each endpoint that touches them taking the browser's owner key (`webapp.owners`) as its last input;
ONNX export; and evaluation of the current or a saved model on a text. Every endpoint keeps its
name and input order (API clients depend on them).

No `from __future__ import annotations` here: Gradio reads the `gr.Request` / `gr.Progress` /
`gr.OAuthProfile` annotations at runtime to inject them.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch

from webapp import corpus, evaluation, exports, insight, library, models, owners
from webapp.i18n import I18N, UserError, t
from webapp.services import POLL_S, TabHandlers, file_list, file_path, friendly, friendly_stream, lang_of


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


def build() -> ModelsTab:
    """The Models tab: the current model, saved models on the left, ONNX export on the right."""
    with gr.Tab(I18N("tab.models"), id="models"):
        current = gr.Markdown(elem_id="model-current")
        message = gr.Markdown(elem_id="model-message")
        with gr.Row():
            saved = _saved_models_column()
            exports = _export_column()
        evaluations = _evaluation_row()
    return ModelsTab(current=current, message=message, **saved, **exports, **evaluations)


class ModelsHandlers(TabHandlers):
    """The Models tab's handlers, over the app's shared `Services`."""

    def model_choices(
        self, owner_key: str | None = None, request: gr.Request = None, profile: gr.OAuthProfile | None = None
    ) -> Any:
        """The saved models the caller may use: theirs, the server's, and others' published ones."""
        return self.services.model_choices(owner_key, request, profile)

    def _picking(self, name: str, owner_key: Any, request: Any, profile: Any) -> Any:
        """The saved-model picker's choices with `name` picked."""
        return {**self.model_choices(owner_key, request, profile), "value": name}

    def owner_view(
        self, owner_key: str | None = None, request: gr.Request = None, profile: gr.OAuthProfile | None = None
    ) -> tuple[str, Any, Any, str]:
        """The page's first call: the browser's owner key (a new one when it has none), its saved
        models for both pickers, and a line saying who owns what is saved here."""
        lang = lang_of(request)
        if not owners.valid_key(owner_key):
            owner_key = owners.new_key()
        choices = self.model_choices(owner_key, request, profile)
        owner = self.services.owner(owner_key, profile, request)
        if owner.expires:
            note = t(lang, "library.note_anonymous", days=f"{self.settings.anonymous_save_days:g}")
        else:
            note = t(lang, "library.note_user", user=owner.user)
        return owner_key, choices, {**choices, "value": None}, note

    @friendly
    def load_model(
        self, name: str | None, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[str, str]:  # fmt: skip
        lang = lang_of(request)
        session = self.services.session(request)
        if not name:
            raise UserError("error.pick_model")
        if session.training:
            raise UserError("error.busy_training")
        models.load_saved(session, self.services.owner(owner_key, profile, request), name, self.settings)
        return models.summary(session, lang), t(lang, "model.loaded", name=name)

    @friendly
    def save_model(
        self, name: str, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, str, str]:  # fmt: skip
        lang = lang_of(request)
        session = self.services.session(request)
        saved = models.save_current(session, self.services.owner(owner_key, profile, request), name, self.settings)
        return (
            self._picking(saved, owner_key, request, profile),
            models.summary(session, lang),
            t(lang, "model.saved", name=saved),
        )

    @friendly
    def download_model(
        self, name: str | None, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> str:  # fmt: skip
        if not name:
            raise UserError("error.pick_model")
        owner = self.services.owner(owner_key, profile, request)
        return str(models.zip_saved(self.services.session(request), owner, name, self.settings))

    @friendly
    def upload_checkpoint(
        self, file: Any, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, str, str]:  # fmt: skip
        lang = lang_of(request)
        session = self.services.session(request)
        if not file:
            raise UserError("error.no_files")
        if session.training:
            raise UserError("error.busy_training")
        owner = self.services.owner(owner_key, profile, request)
        name = models.import_zip(session, owner, file_path(file), self.settings)
        return (
            self._picking(name, owner_key, request, profile),
            models.summary(session, lang),
            t(lang, "model.uploaded", name=name),
        )

    @friendly
    def delete_model(
        self, name: str | None, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, str]:  # fmt: skip
        """Delete one of the caller's own saved models."""
        if not name:
            raise UserError("error.pick_model")
        library.delete(self.settings, self.services.owner(owner_key, profile, request), str(name))
        return self.model_choices(owner_key, request, profile), t(lang_of(request), "library.deleted", name=name)

    @friendly
    def publish_model(
        self, name: str | None, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, str]:  # fmt: skip
        """Publish one of the caller's saved models: every visitor may then use it (not change it)."""
        return self._publish(name, True, owner_key, request, profile)

    @friendly
    def unpublish_model(
        self, name: str | None, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, str]:  # fmt: skip
        """Make a published model of the caller's private again."""
        return self._publish(name, False, owner_key, request, profile)

    def _publish(self, name: Any, published: bool, owner_key: Any, request: Any, profile: Any) -> tuple[Any, str]:
        if not name:
            raise UserError("error.pick_model")
        owner = self.services.owner(owner_key, profile, request)
        entry = library.publish(self.settings, owner, str(name), published)
        key = "library.published" if published else "library.unpublished"
        return self._picking(entry.name, owner_key, request, profile), t(
            lang_of(request), key, name=entry.name, public=f"{entry.name}@{owner.tag}"
        )

    @friendly
    def evaluate(
        self,
        which: str,
        saved_name: str | None,
        pasted: str,
        upload: Any,
        owner_key: str | None = None,
        request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),
    ) -> tuple[Any, str, Any]:
        """Score the current or a saved model on pasted or uploaded text; (results table, message,
        the text coloured by each token's surprise)."""
        lang = lang_of(request)
        session = self.services.session(request)
        owner = self.services.owner(owner_key, profile, request)
        upload_path = file_path(file_list(upload)[0]) if file_list(upload) else None
        text, text_name = evaluation.read_text(pasted, upload_path, self.settings)
        budget = self.services.sessions.capacity.job_budget
        plan = evaluation.plan(session, which, saved_name, text, self.settings, owner, budget)
        with self.services.admit(session, "evaluation", plan.memory, self.settings.generate_threads):
            model, model_name = evaluation.pick_model(session, plan, self.settings)
            torch.set_num_threads(self.settings.generate_threads)
            result, pieces = evaluation.score(session, model, model_name, text, text_name, plan.batch_size)
            del model  # a saved model loaded for this goes before the reservation ends
        message = evaluation.message(result, model_name, text_name, lang)
        return evaluation.table(session, lang), message, insight.highlighted(pieces)

    @friendly
    def model_info(self, request: gr.Request) -> str:
        return models.summary(self.services.session(request), lang_of(request))

    @friendly_stream
    def export(self, precision: str, request: gr.Request, progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        """Export the current model to ONNX (with a parity check), then offer the zip; streams progress."""
        from export import PRECISIONS, read_report

        lang = lang_of(request)
        session = self.services.session(request)
        if precision not in PRECISIONS:
            raise UserError("error.bad_value", name="precision", value=precision, rule=" / ".join(PRECISIONS))
        models.require_model(session)

        def running(elapsed: float) -> tuple:
            progress(None, desc=t(lang, "export.running", seconds=f"{elapsed:.0f}"))
            return gr.skip(), t(lang, "export.running", seconds=f"{elapsed:.0f}")

        yield running(0.0)
        folder = yield from exports.in_worker(
            lambda cancel: models.export_current(session, precision, self.settings, cancel.is_set), running, POLL_S
        )
        progress(None, desc=t(lang, "export.zipping"))
        zip_path = models.export_zip(session, folder, precision, self.settings)
        yield str(zip_path), models.report_text(read_report(folder), lang)

    def page_labels(self, request: gr.Request) -> Any:
        """The (empty) evaluation table's column names, in the reader's language."""
        return evaluation.table(self.services.session(request), lang_of(request))


def wire(
    demo: gr.Blocks, tab: ModelsTab, h: ModelsHandlers, *, owner: gr.BrowserState, start_model: gr.Dropdown
) -> None:
    """The page's first calls (the owner key, the current model, the labels), and the list / load /
    download / save / upload / delete / publish / export / evaluate endpoints. From other parts of
    the page: `owner`, the browser's owner key (the last input of every endpoint that touches saved
    models), and `start_model`, the Train tab's saved-model picker (filled with the caller's models)."""
    settings = h.settings
    demo.load(  # the owner key (a new one on a first visit), its models, who owns what is saved here
        h.owner_view, owner, [owner, tab.saved, start_model, tab.owner_note], api_name="owner", queue=False
    )
    demo.load(h.model_info, None, tab.current, api_name="model_info", queue=False)
    demo.load(h.page_labels, None, tab.eval_table, api_visibility="private", queue=False)
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
