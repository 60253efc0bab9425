"""The Train tab: its layout (`build`), its events (`wire`) and its handlers (`TrainHandlers`).

Data and model settings on the left; status, loss plot and a sample on the right. A run starts a
new model or goes on from the current or a saved one, streams its progress, and can be stopped
and resumed. The order of the advanced training settings is `webapp.training.SETTING_FIELDS`
(the /train API order); every endpoint keeps its name and input order (API clients depend on them).

No `from __future__ import annotations` here: Gradio reads the `gr.Request` / `gr.Progress`
annotations at runtime to inject them.
"""

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from gpt import count_parameters, text_start
from webapp import backends, corpus, library, models, owners, storage, training, validation
from webapp.i18n import I18N, UserError, t
from webapp.services import (
    POLL_S,
    TabHandlers,
    as_gr_error,
    disabled_choice_css,
    file_list,
    file_path,
    friendly,
    friendly_stream,
    lang_of,
)
from webapp.sessions import Session
from webapp.settings import Settings

STOP_WAIT_S = 120.0  # a cancelled train stream waits this long for the run's clean step
STOP_REPLY_S = 2.0  # the Stop button answers within this (it runs outside the queue)

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
    "rotary": "rotary",
}
SETTING_ROWS = (("layers", "heads"), ("emb", "context"), ("vocab", "batch"), ("lr", "steps"), ("dropout", "rotary"))


def _setting(key: str, value: float | bool) -> gr.Number | gr.Checkbox:
    """One advanced training setting: label `train.<key>`, element id `train-<key>`; a checkbox for
    a true-or-false one (with its `train.<key>_info`).

    No `precision`: Gradio would round the value before the handler sees it (and fail on NaN or
    inf with a traceback); the handler checks every value itself (`webapp.validation`)."""
    if isinstance(value, bool):
        return gr.Checkbox(value, label=I18N(f"train.{key}"), info=I18N(f"train.{key}_info"), elem_id=f"train-{key}")
    return gr.Number(value, label=I18N(f"train.{key}"), elem_id=f"train-{key}")


@dataclass
class TrainTab:
    source: gr.Radio
    sample: gr.Dropdown
    files: gr.File
    start: gr.Radio
    start_model: gr.Dropdown
    preset: gr.Radio
    settings: dict[str, gr.Number | gr.Checkbox]  # by training field (`SETTING_KEYS`)
    device: gr.Radio
    train_btn: gr.Button
    stop_btn: gr.Button
    resume_btn: gr.Button
    status: gr.Markdown
    plot: gr.LinePlot
    sample_box: gr.Textbox

    def setting_components(self) -> list[gr.Number | gr.Checkbox]:
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


def _advanced_settings(settings: Settings) -> tuple[dict[str, gr.Number | gr.Checkbox], gr.Radio]:
    """The "advanced" accordion: one control per training field (the tiny preset's values), and the device."""
    tiny = training.MODEL_PRESETS["tiny"]
    values = {name: getattr(tiny, name) for name in SETTING_KEYS}
    values["steps"] = min(tiny.steps, settings.max_steps)
    by_key = {key: name for name, key in SETTING_KEYS.items()}
    numbers: dict[str, gr.Number | gr.Checkbox] = {}
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


def build(settings: Settings) -> TrainTab:
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
            plot = gr.LinePlot(  # axis and legend titles in the reader's language: `TrainHandlers.page_labels`
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


class TrainHandlers(TabHandlers):
    """The Train tab's handlers, over the app's shared `Services`."""

    def preset(self, name: str) -> tuple:
        """Advanced-setting values of a model preset, in `training.SETTING_FIELDS` order."""
        c = training.MODEL_PRESETS.get(name, training.MODEL_PRESETS["tiny"])
        values = {field: getattr(c, field) for field in training.SETTING_FIELDS}
        values["steps"] = min(c.steps, self.settings.max_steps)
        return tuple(values[field] for field in training.SETTING_FIELDS)

    @friendly_stream
    def train(
        self,
        source: str,
        files: list[str] | None,
        sample: str,
        num_layers: float,
        num_heads: float,
        emb_size: float,
        context: float,
        vocab_size: float,
        learning_rate: float,
        batch_size: float,
        steps: float,
        dropout: float,
        rotary: bool,
        device: str,
        start: str,
        start_model: str | None,
        owner_key: str | None = None,
        request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[tuple]:
        """Train on uploaded files or a built-in sample: a new model, or the current or a saved model
        further (`start`: "new" / "current" / "saved", then `start_model` names one the caller may
        use, `owner_key` says who the caller is: `webapp.owners`); streams (status, loss plot, sample, model).
        A failure is shown in the status line as well as in the error toast."""
        lang = lang_of(request)
        session = self.services.session(request)
        values = (
            num_layers,
            num_heads,
            emb_size,
            context,
            vocab_size,
            learning_rate,
            batch_size,
            steps,
            dropout,
            rotary,
        )
        run = self._train(session, lang, source, files, sample, values, device, start, start_model,
                          self.services.owner(owner_key, profile, request), progress)  # fmt: skip
        yield from self._errors_in_status(run, session, lang)

    def _train(
        self, session: Session, lang: str, source: str, files: Any, sample: str, values: tuple, device: str,
        start: str, start_model: Any, owner: owners.Owner, progress: gr.Progress,
    ) -> Iterator[tuple]:  # fmt: skip
        num_layers, num_heads, emb_size, context, vocab_size, learning_rate, batch_size, steps, dropout, rotary = values
        with session.lock:
            if session.training:
                raise UserError("error.already_training")
            device_name = training.checked_device(device)
            model = models.starting_model(session, owner, start, start_model, self.settings, device_name)
            if model is not None:  # its saved name, or (never saved) what it was trained on
                base = model.training_record["started_from"].get("model") or session.model_label
            earlier = self._earlier_curve(session, start, model)
            config = training.make_config(
                self.settings,
                start=model.config if model is not None else None,
                num_layers=num_layers,
                num_heads=num_heads,
                emb_size=emb_size,
                context=context,
                vocab_size=vocab_size,
                learning_rate=learning_rate,
                batch_size=batch_size,
                steps=steps,
                dropout=dropout,
                rotary=rotary,
                device=device,
            )
            if source not in ("upload", "sample"):
                raise UserError("error.bad_value", name="source", value=source, rule="upload / sample")
            if source == "upload":
                paths = [file_path(f) for f in file_list(files)]
                texts = corpus.read_uploads(paths, self.settings.max_upload_mb, self.settings.max_text_mb)
            else:
                texts = corpus.sample_corpus(sample)
            params = count_parameters(config.gpt_config(config.vocab_size))
        text_bytes = sum(len(text.encode("utf-8")) for text in texts.texts)
        with (
            self.services.reserve_disk(session, storage.run_bytes(params)),
            self.services.admit(
                session, "training", training.run_memory(config, text_bytes), self.settings.train_threads
            ),
        ):
            run_folder = session.new_folder("runs")
            plot = gr.update(value=training.loss_frame(None, lang, earlier), **training.plot_style(earlier, lang))
            yield t(lang, "train.preparing"), plot, "", gr.skip()  # the plot's style: a stream's first yield
            torch.set_num_threads(self.settings.train_threads)
            data = training.prepare_data(texts, config, model.tokenizer if model is not None else None)
            if model is None:
                model = training.build_model(config, data.tokenizer, self.settings)
                label = t(lang, "model.trained_on", corpus=data.corpus_label)
            else:
                label = t(lang, "model.continued", base=base, corpus=data.corpus_label)
            model.training_record["prompt"] = text_start(texts.texts)  # the Generate tab's prompt
            saved = model.training_record["started_from"]["model"] if start == "saved" else None
            checkpoints = run_folder / "checkpoints"
            job = self._job(session, model, data, config, checkpoints, label, earlier=earlier, saved_start=saved)
            yield from self._run(session, job, lang, progress)

    @staticmethod
    def _errors_in_status(run: Iterator[tuple], session: Session, lang: str) -> Iterator[tuple]:
        """`yield from` a train or resume stream: a failure it raises is also written into the status
        line, where it stays (the toast goes after a few seconds), unless the run's own status says it."""
        try:
            yield from run
        except Exception as err:
            error = as_gr_error(err, lang)
            job = session.job
            if job is None or err is not job.error:  # a failed run's status already says why
                yield t(lang, "train.not_run", error=error.message), gr.skip(), gr.skip(), gr.skip()
            raise error from err

    @staticmethod
    def _earlier_curve(session: Session, start: str, model: Any) -> training.Curve | None:
        """The loss curve of the model a run goes on from: the whole curve when it is the current
        model and this session trained it, else the last losses its record keeps."""
        if model is None:
            return None
        earlier = model.training_record["started_from"]
        curve = training.Curve.from_record(earlier)
        earlier.pop("curve", None)  # the new run's record keeps the whole curve, once
        job = session.job
        if start == "current" and job is not None and job.model is session.model:
            return job.curve()
        return curve

    @friendly_stream
    def resume(self, steps: float, request: gr.Request, progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        """Continue the session's last run from its newest checkpoint, up to `steps`; a failure is
        shown in the status line as well as in the error toast."""
        lang = lang_of(request)
        session = self.services.session(request)
        yield from self._errors_in_status(self._resume(session, steps, lang, progress), session, lang)

    def _resume(self, session: Session, steps: float, lang: str, progress: gr.Progress) -> Iterator[tuple]:
        with session.lock:
            last = session.job
            if last is None:
                raise UserError("error.nothing_to_resume")
            if session.training:
                raise UserError("error.already_training")
            if last.steps_done == 0 and training.latest_checkpoint(last.checkpoint_dir) is None:
                raise UserError("error.nothing_to_resume")
            config = training.resume_config(last, validation.integer("steps", steps, 1, 10**9), self.settings)
            storage.check_free_disk(self.settings)
            model = training.build_model(config, last.data.tokenizer, self.settings)
            model.training_record = copy.deepcopy(last.model.training_record)  # e.g. the model it went on from
            job = self._job(
                session, model, last.data, config, last.checkpoint_dir, last.label, resume=True, earlier=last.earlier,
                saved_start=last.saved_start,
            )  # fmt: skip
        with self.services.admit(session, "training", training.run_memory(config), self.settings.train_threads):
            yield from self._run(session, job, lang, progress)

    def _job(self, session: Session, model: Any, data: Any, config: Any, checkpoints: Path, label: str, **kw: Any):
        """A training job whose model becomes the session's model only once the run has a checkpoint:
        a run refused, failed or stopped before its first checkpoint leaves the previous model in place."""

        def install(job: training.TrainingJob) -> None:
            if not job.usable:
                return
            if job.kept_start:  # training only made it worse: the model it went on from stays as it was
                if job.saved_start is not None:  # (the session's current model stays by itself)
                    record = {k: v for k, v in job.model.training_record["started_from"].items() if k != "model"}
                    job.model.training_record = {**record, "curve": job.earlier.to_record()}
                    name = job.saved_start
                    session.set_model(job.model, name, name, source=job.source, force=True, saved=True)
                return
            job.model.training_record["curve"] = job.curve().to_record()  # shown when it trains further
            name = library.safe_name(str(job.label))  # its downloads are named as the app shows it
            session.set_model(job.model, job.label, name, source=job.source, force=True)

        return training.TrainingJob(
            model,
            data,
            config,
            checkpoints,
            label=label,
            threads=self.settings.train_threads,
            max_minutes=self.settings.max_train_minutes,
            on_done=install,
            **kw,
        )

    def _run(self, session: Session, job: training.TrainingJob, lang: str, progress: gr.Progress) -> Iterator[tuple]:
        """Start `job` as the session's run and render it until it ends; closing this generator stops it."""
        with session.lock:
            if session.training:
                raise UserError("error.already_training")
            session.job = job
            job.start()
        try:
            while not job.wait(POLL_S):
                snap = job.snapshot()
                if snap.total:
                    rate = t(lang, "train.speed", rate=f"{snap.tokens_per_second:,.0f}".replace(",", " "))
                    progress((snap.step, snap.total), desc=f"{t(lang, 'train.progress')} · {rate}", unit="steps")
                yield self._train_view(session, job, snap, lang)
            snap = job.snapshot()
            yield self._train_view(session, job, snap, lang)
            if job.error is not None:
                raise job.error
        finally:
            if not job.done.is_set():  # cancelled (Stop button, closed page): stop at a clean step
                job.stop(training.STOPPED)
                job.wait(STOP_WAIT_S)

    def _train_view(self, session: Session, job: training.TrainingJob, snap: training.Snapshot, lang: str) -> tuple:
        plot = gr.update(value=training.loss_frame(snap, lang), **training.plot_style(snap.earlier, lang))
        return (  # the style counts in a stream's first yield only: a resumed run's first frame
            training.status_text(job, snap, lang),
            plot,
            training.sample_text(job, lang),
            models.summary(session, lang),
        )

    @friendly
    def stop(self, request: gr.Request) -> tuple:
        """Stop the session's training after its current step; the checkpoint of that step is kept."""
        lang = lang_of(request)
        session = self.services.session(request)
        job = session.job
        if job is None:
            return t(lang, "train.nothing_running"), gr.skip(), gr.skip(), models.summary(session, lang)
        if job.running:  # the run stops after its current step; the train stream shows the outcome
            job.stop(training.STOPPED)
            job.wait(STOP_REPLY_S)
        return self._train_view(session, job, job.snapshot(), lang)

    def start_view(
        self, start: str, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        """The Train tab's saved-model picker (shown, with the caller's models, when a run starts from
        one) and the presets (hidden then: the model keeps its shape)."""
        picker = {**self.services.model_choices(owner_key, request, profile), "visible": start == "saved"}
        return picker, gr.update(visible=start == "new")

    def page_labels(self, request: gr.Request) -> tuple[Any, Any]:
        """What the page cannot translate by itself: the loss plot's axis and legend titles, and the
        "unavailable here" note of the device choice, in the reader's language."""
        lang = lang_of(request)
        titles = {
            "x_title": t(lang, "plot.step"),
            "y_title": t(lang, "plot.loss"),
            "color_title": t(lang, "plot.curve"),
        }
        style = {**training.plot_style(None, lang), "colors_in_legend": []}  # no legend until a run draws
        plot = gr.update(value=training.loss_frame(None, lang), **titles, **style)  # its axes and titles
        unavailable = [d for d in backends.devices().values() if not d.available]
        return plot, gr.update(info=backends.unavailable_text(unavailable, lang))


def wire(demo: gr.Blocks, tab: TrainTab, h: TrainHandlers, *, current: gr.Markdown, owner: gr.BrowserState) -> None:
    """Source switch, model presets, the page's labels, and the train / resume / stop_training
    endpoints. From other parts of the page: `current`, the Models tab's summary of the session's
    model (a run's last output), and `owner`, the browser's owner key (the last input of every
    endpoint that touches saved models)."""
    heavy = {"concurrency_limit": h.settings.train_concurrency, "concurrency_id": "train"}
    outputs = [tab.status, tab.plot, tab.sample_box, current]  # the order `TrainHandlers.train` yields
    demo.load(h.page_labels, None, [tab.plot, tab.device], api_visibility="private", queue=False)
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


def css() -> str:
    """The tab's styles: room for the status line, a monospace sample, devices unavailable here greyed out."""
    unavailable = [d.name for d in backends.devices().values() if not d.available]
    return (
        "#train-status { min-height: 3.5em; }\n"
        "#train-sample textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }\n"
        + disabled_choice_css("train-device", unavailable)
    )
