"""The Gradio event handlers: each takes UI values, works on the caller's session through `gpt`,
`export` and the helper modules, and returns UI values. Errors become `gr.Error`s in the caller's
language (from the browser's Accept-Language), so a bad input costs one message, never the server.

No `from __future__ import annotations` here: Gradio reads the `gr.Request` / `gr.Progress`
annotations at runtime to inject them.
"""

import copy
import functools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from gpt import count_parameters, text_start
from webapp import (
    backends,
    browser,
    corpus,
    evaluation,
    exports,
    generation,
    insight,
    library,
    models,
    owners,
    storage,
    training,
    validation,
)
from webapp.i18n import UserError, language, t
from webapp.sessions import Session, SessionRegistry
from webapp.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a running job is rendered (and a cancel can land)
STREAM_EVERY_S = 0.05  # at most 20 text updates a second while generating
STOP_WAIT_S = 120.0  # a cancelled train stream waits this long for the run's clean step
STOP_REPLY_S = 2.0  # the Stop button answers within this (it runs outside the queue)


def _lang(request: gr.Request | None) -> str:
    if request is None:
        return "en"
    return language(request.headers.get("accept-language", ""))


def _as_gr_error(err: BaseException, lang: str) -> gr.Error:
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, UserError):
        return gr.Error(err.message(lang), title=t(lang, "error.title"), print_exception=False)
    if isinstance(err, (ValueError, FileNotFoundError)):
        return gr.Error(t(lang, "error.invalid", detail=str(err)), title=t(lang, "error.title"), print_exception=False)
    log.exception("unexpected error in a handler")
    return gr.Error(t(lang, "error.internal", detail=f"{type(err).__name__}: {err}"), title=t(lang, "error.title"))


def _request_of(args: tuple, kwargs: dict) -> gr.Request | None:
    request = kwargs.get("request")
    if request is None:
        request = next((a for a in args if isinstance(a, gr.Request)), None)
    return request


def friendly(fn: Callable) -> Callable:
    """Turn any exception of a plain handler into a translated `gr.Error`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise _as_gr_error(err, _lang(_request_of(args, kwargs))) from err

    return wrapper


def friendly_stream(fn: Callable) -> Callable:
    """`friendly` for generator handlers (closing the wrapper closes the handler: its `finally` runs)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        inner = fn(*args, **kwargs)
        try:
            yield from inner
        except Exception as err:
            raise _as_gr_error(err, _lang(_request_of(args, kwargs))) from err
        finally:
            inner.close()

    return wrapper


class Handlers:
    """All handlers of one app; `settings` and the session registry are shared by every user."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = SessionRegistry(settings, loader=functools.partial(models.load_checked, settings=settings))
        library.sweep(settings, force=True)  # anonymous saves unused for too long

    def session(self, request: gr.Request | None) -> Session:
        return self.sessions.get(getattr(request, "session_hash", None))

    def owner(self, owner_key: Any, profile: Any, request: gr.Request | None) -> owners.Owner:
        """Who the caller is for saved models: the signed-in user, the owner of `owner_key`, or the session."""
        return owners.resolve(owner_key, profile, self.session(request).id)

    # Train ---------------------------------------------------------------------------------
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
        lang = _lang(request)
        session = self.session(request)
        values = (num_layers, num_heads, emb_size, context, vocab_size, learning_rate, batch_size, steps, dropout)
        run = self._train(session, lang, source, files, sample, values, device, start, start_model,
                          self.owner(owner_key, profile, request), progress)  # fmt: skip
        yield from self._errors_in_status(run, session, lang)

    def _train(
        self, session: Session, lang: str, source: str, files: Any, sample: str, values: tuple, device: str,
        start: str, start_model: Any, owner: owners.Owner, progress: gr.Progress,
    ) -> Iterator[tuple]:  # fmt: skip
        num_layers, num_heads, emb_size, context, vocab_size, learning_rate, batch_size, steps, dropout = values
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
                device=device,
            )
            if source not in ("upload", "sample"):
                raise UserError("error.bad_value", name="source", value=source, rule="upload / sample")
            if source == "upload":
                paths = [_path(f) for f in _file_list(files)]
                texts = corpus.read_uploads(paths, self.settings.max_upload_mb, self.settings.max_text_mb)
            else:
                texts = corpus.sample_corpus(sample)
            params = count_parameters(config.gpt_config(config.vocab_size))
        text_bytes = sum(len(text.encode("utf-8")) for text in texts.texts)
        with (
            self._reserve_disk(session, storage.run_bytes(params)),
            self._admit(session, "training", training.run_memory(config, text_bytes), self.settings.train_threads),
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
            error = _as_gr_error(err, lang)
            job = session.job
            if job is None or err is not job.error:  # a failed run's status already says why
                yield t(lang, "train.not_run", error=error.message), gr.skip(), gr.skip(), gr.skip()
            raise error from err

    def _reserve_disk(self, session: Session, need: int) -> Any:
        """`need` bytes of disk for the session's work while it runs (`storage.reserve`)."""
        return storage.reserve(session.folder, self.settings, need, session.kept_folders(), session.downloads)

    def _admit(self, session: Session, job: str, memory: int, cpus: int) -> Any:
        """The server-wide admission of a heavy job (`webapp.capacity`); waiting ends if the session closes."""
        return self.sessions.capacity.admit(job, memory, cpus, cancelled=lambda: session.closed)

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
        lang = _lang(request)
        session = self.session(request)
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
        with self._admit(session, "training", training.run_memory(config), self.settings.train_threads):
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
        lang = _lang(request)
        session = self.session(request)
        job = session.job
        if job is None:
            return t(lang, "train.nothing_running"), gr.skip(), gr.skip(), models.summary(session, lang)
        if job.running:  # the run stops after its current step; the train stream shows the outcome
            job.stop(training.STOPPED)
            job.wait(STOP_REPLY_S)
        return self._train_view(session, job, job.snapshot(), lang)

    # Generate ------------------------------------------------------------------------------
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
        lang = _lang(request)
        session = self.session(request)
        options = generation.make_options(
            max_new_tokens,
            mode,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            stop_strings,
            seed,
            self.settings.max_new_tokens,
        )
        prompt = generation.prompt_text(prompt)
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
        session = self.session(request)
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
        pieces = self.session(request).pieces
        return insight.highlighted(pieces), t(_lang(request), "look.hint" if pieces else "look.none")

    def look_view(self, backend: str, request: gr.Request) -> tuple[Any, str]:
        """The "Why it wrote this" view for the chosen backend: the browser's runs never reach the server, so
        it says that it covers the server's backends; theirs shows the session's last generation."""
        if backend == backends.BROWSER:
            return [], t(_lang(request), "look.browser")
        return self.token_view(request)

    def suggested_prompt(self, prompt: Any, request: gr.Request) -> Any:
        """The start of the current model's training text as the prompt, when the model changed and the
        prompt is still a suggestion (the page's default, empty, or the one suggested before)."""
        session = self.session(request)
        model = session.model
        suggestion = generation.suggested_prompt(model.training_record.get("prompt")) if model is not None else None
        if not suggestion or prompt not in ("", generation.default_prompt(), session.suggested_prompt):
            return gr.skip()
        session.suggested_prompt = suggestion
        return suggestion

    def page_labels(self, request: gr.Request) -> tuple[Any, Any]:
        """What the page cannot translate by itself: the loss plot's axis and legend titles, and
        the (empty) evaluation table's column names, in the reader's language."""
        lang = _lang(request)
        titles = {
            "x_title": t(lang, "plot.step"),
            "y_title": t(lang, "plot.loss"),
            "color_title": t(lang, "plot.curve"),
        }
        style = {**training.plot_style(None, lang), "colors_in_legend": []}  # no legend until a run draws
        plot = gr.update(value=training.loss_frame(None, lang), **titles, **style)  # its axes and titles
        return plot, evaluation.table(self.session(request), lang)

    @friendly
    def token_details(self, evt: gr.EventData, request: gr.Request) -> str:
        """The probability and the alternatives of the token the user selected in the view.

        `gr.EventData`, not `gr.SelectData`: Gradio builds a SelectData before the handler runs and
        fails (HTTP 500) when a caller's event data lacks its keys; this reads what is there."""
        pieces = self.session(request).pieces
        data = evt._data if isinstance(getattr(evt, "_data", None), dict) else {}
        index = data.get("index")
        index = index[0] if isinstance(index, (list, tuple)) and index else index
        if not isinstance(index, int) or not 0 <= index < len(pieces):
            return t(_lang(request), "look.none")
        return insight.describe(pieces[index], _lang(request))

    @friendly_stream
    def compare(self, prompt: str, max_new_tokens: float, backend: str, request: gr.Request) -> Iterator[str]:
        """Run the prompt through torch and onnxruntime: max logit difference and greedy agreement
        (the model is exported on first use; a cancel kills that export)."""
        from export import TOLERANCES, compare

        lang = _lang(request)
        session = self.session(request)
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
        model = models.require_model(self.session(request))
        new_tokens = validation.integer("max_new_tokens", max_new_tokens, 1, self.settings.max_new_tokens)
        ids, steps = generation.compare_prompt_ids(model, generation.prompt_text(prompt), new_tokens)
        torch.set_num_threads(self.settings.generate_threads)
        expected = model.generate([ids], steps)[0, len(ids) :].tolist()
        yield files, {"ids": ids, "expected": expected}

    def availability(self, request: gr.Request) -> tuple:
        """The "unavailable here" notes of the backend and device choices, in the reader's language."""
        lang = _lang(request)
        gen = [b for b in backends.backends().values() if not b.available]
        dev = [d for d in backends.devices().values() if not d.available]
        return gr.update(info=backends.unavailable_text(gen, lang)), gr.update(
            info=backends.unavailable_text(dev, lang)
        )

    # Models --------------------------------------------------------------------------------
    def model_choices(
        self, owner_key: str | None = None, request: gr.Request = None, profile: gr.OAuthProfile | None = None
    ) -> Any:
        """The saved models the caller may use: theirs, the server's, and others' published ones."""
        lang = _lang(request)
        try:
            saved = library.visible(self.settings, self.owner(owner_key, profile, request))
        except UserError:  # a malformed key sees nothing; the actions say why
            saved = []
        choices = [(m.label(lang), m.name) for m in saved]
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def start_view(
        self, start: str, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        """The Train tab's saved-model picker (shown, with the caller's models, when a run starts from
        one) and the presets (hidden then: the model keeps its shape)."""
        picker = {**self.model_choices(owner_key, request, profile), "visible": start == "saved"}
        return picker, gr.update(visible=start == "new")

    def owner_view(
        self, owner_key: str | None = None, request: gr.Request = None, profile: gr.OAuthProfile | None = None
    ) -> tuple[str, Any, Any, str]:
        """The page's first call: the browser's owner key (a new one when it has none), its saved
        models for both pickers, and a line saying who owns what is saved here."""
        lang = _lang(request)
        if not owners.valid_key(owner_key):
            owner_key = owners.new_key()
        choices = self.model_choices(owner_key, request, profile)
        owner = self.owner(owner_key, profile, request)
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
        lang = _lang(request)
        session = self.session(request)
        if not name:
            raise UserError("error.pick_model")
        if session.training:
            raise UserError("error.busy_training")
        models.load_saved(session, self.owner(owner_key, profile, request), name, self.settings)
        return models.summary(session, lang), t(lang, "model.loaded", name=name)

    @friendly
    def save_model(
        self, name: str, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, str, str]:  # fmt: skip
        lang = _lang(request)
        session = self.session(request)
        saved = models.save_current(session, self.owner(owner_key, profile, request), name, self.settings)
        update = self.model_choices(owner_key, request, profile)
        update["value"] = saved
        return update, models.summary(session, lang), t(lang, "model.saved", name=saved)

    @friendly
    def download_model(
        self, name: str | None, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> str:  # fmt: skip
        if not name:
            raise UserError("error.pick_model")
        owner = self.owner(owner_key, profile, request)
        return str(models.zip_saved(self.session(request), owner, name, self.settings))

    @friendly
    def upload_checkpoint(
        self, file: Any, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, str, str]:  # fmt: skip
        lang = _lang(request)
        session = self.session(request)
        if not file:
            raise UserError("error.no_files")
        if session.training:
            raise UserError("error.busy_training")
        owner = self.owner(owner_key, profile, request)
        name = models.import_zip(session, owner, _path(file), self.settings)
        update = self.model_choices(owner_key, request, profile)
        update["value"] = name
        return update, models.summary(session, lang), t(lang, "model.uploaded", name=name)

    @friendly
    def delete_model(
        self, name: str | None, owner_key: str | None = None, request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, str]:  # fmt: skip
        """Delete one of the caller's own saved models."""
        if not name:
            raise UserError("error.pick_model")
        library.delete(self.settings, self.owner(owner_key, profile, request), str(name))
        return self.model_choices(owner_key, request, profile), t(_lang(request), "library.deleted", name=name)

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
        owner = self.owner(owner_key, profile, request)
        entry = library.publish(self.settings, owner, str(name), published)
        update = self.model_choices(owner_key, request, profile)
        update["value"] = entry.name
        key = "library.published" if published else "library.unpublished"
        return update, t(_lang(request), key, name=entry.name, public=f"{entry.name}@{owner.tag}")

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
        lang = _lang(request)
        session = self.session(request)
        owner = self.owner(owner_key, profile, request)
        upload_path = _path(_file_list(upload)[0]) if _file_list(upload) else None
        text, text_name = evaluation.read_text(pasted, upload_path, self.settings)
        budget = self.sessions.capacity.job_budget
        plan = evaluation.plan(session, which, saved_name, text, self.settings, owner, budget)
        with self._admit(session, "evaluation", plan.memory, self.settings.generate_threads):
            model, model_name = evaluation.pick_model(session, plan, self.settings)
            torch.set_num_threads(self.settings.generate_threads)
            result, pieces = evaluation.score(session, model, model_name, text, text_name, plan.batch_size)
            del model  # a saved model loaded for this goes before the reservation ends
        message = evaluation.message(result, model_name, text_name, lang)
        return evaluation.table(session, lang), message, insight.highlighted(pieces)

    @friendly
    def model_info(self, request: gr.Request) -> str:
        return models.summary(self.session(request), _lang(request))

    @friendly_stream
    def export(self, precision: str, request: gr.Request, progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        """Export the current model to ONNX (with a parity check), then offer the zip; streams progress."""
        from export import PRECISIONS, read_report

        lang = _lang(request)
        session = self.session(request)
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

    def unload(self, request: gr.Request) -> None:
        """The page closed: stop its training and delete its session folders."""
        self.sessions.close(getattr(request, "session_hash", None))


def _file_list(files: Any) -> list[Any]:
    """Uploaded files as a list (the API may send one file, none, or a list)."""
    if files is None:
        return []
    return list(files) if isinstance(files, (list, tuple)) else [files]


def _path(file: Any) -> Path:
    """A Gradio file value (path string, or an object with `.name` / `path`) as a Path."""
    if isinstance(file, (str, Path)):
        return Path(file)
    if isinstance(file, dict) and "path" in file:
        return Path(file["path"])
    return Path(file.name)
