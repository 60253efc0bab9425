"""Models for the app: checked loading, the caller's saved models (kept by `webapp.library`, which
knows whose each is), checkpoint zips in and out, and ONNX exports of a session's current model
(made by `export.to_onnx`, run by `export.OnnxGPT`)."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt import (
    CONFIG_FILE,
    GPT,
    MODEL_FILES,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    count_parameters,
    read_config,
)
from webapp import backends, exports, library, storage, validation
from webapp.archive import safe_extract, zip_folder
from webapp.i18n import Msg, UserError, t
from webapp.library import safe_name
from webapp.owners import Owner
from webapp.sessions import Session, model_bytes
from webapp.settings import MB, Settings

if TYPE_CHECKING:
    from export import ExportReport

REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)  # of a model the app can use
MAX_NAME_CHARS = 200


def load_checked(folder: Path, settings: Settings, device: str = "cpu") -> GPT:
    """`GPT.load` after checking the size cap (counted from the config, before anything is built);
    a bad checkpoint raises `UserError` with the reason."""
    try:
        config = read_config(folder)
        params = count_parameters(config)
        if params > settings.max_params:
            raise UserError("error.too_many_params", params=f"{params:,}", limit=f"{settings.max_params:,}")
        weights = folder / WEIGHTS_FILE
        if weights.is_file() and weights.stat().st_size > params * 8 + 16 * MB:
            raise UserError("error.bad_checkpoint", detail=f"{WEIGHTS_FILE} is larger than its config allows")
        model = GPT.load(folder, device=device)
    except UserError:
        raise
    except (CheckpointError, ValueError, OSError) as err:
        raise UserError("error.bad_checkpoint", detail=_short(err)) from None
    if model.tokenizer is None:
        raise UserError("error.bad_checkpoint", detail=f"{TOKENIZER_FILE} is missing")
    if model.tokenizer.vocab_size > model.config.vocab_size:  # its ids would index past the embeddings
        raise UserError(
            "error.bad_checkpoint",
            detail=f"{TOKENIZER_FILE} has {model.tokenizer.vocab_size} tokens, more than the model's "
            f"vocabulary of {model.config.vocab_size}: it does not fit this model",
        )
    return model


def load_saved(session: Session, owner: Owner, name: str, settings: Settings) -> GPT:
    saved = library.find(settings, owner, name)
    model = load_checked(saved.path, settings)
    library.touch(saved)
    session.set_model(model, saved.name, saved.name, source=saved.path, saved=True)
    return model


def save_current(session: Session, owner: Owner, name: str, settings: Settings) -> str:
    """Save the session's model as the owner's `name`; an existing name is never overwritten."""
    model = require_model(session)
    name = validation.text("name", name, MAX_NAME_CHARS)
    if not name.strip():
        raise UserError("error.no_name")
    saved = library.save(model, owner, name, settings)
    session.model_label = session.model_name = session.saved_name = saved
    return saved


def zip_saved(session: Session, owner: Owner, name: str, settings: Settings) -> Path:
    saved = library.find(settings, owner, name)
    library.touch(saved)
    folder_name = saved.path.name
    return zip_folder(saved.path, session.downloads / f"{folder_name}.zip", names=MODEL_FILES, root=folder_name)


def import_zip(session: Session, owner: Owner, zip_path: str | Path, settings: Settings) -> str:
    """Unpack an uploaded checkpoint zip safely, check it loads, add it to the owner's saved models and load it."""
    path = Path(zip_path)
    if path.suffix.lower() != ".zip":
        raise UserError("error.file_type", name=path.name, allowed=".zip")
    if path.stat().st_size > settings.max_upload_mb * MB:
        raise UserError(
            "error.file_too_big", name=path.name, size=f"{path.stat().st_size / MB:.1f}", limit=settings.max_upload_mb
        )
    work = session.new_folder("uploads")
    try:
        files = safe_extract(path, work, MODEL_FILES, settings.max_unzip_mb * MB)
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise UserError("error.zip_missing", names=", ".join(missing))
        model = load_checked(work, settings)
        name = library.add_folder(work, owner, path.stem, settings)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # nothing of a refused upload stays on disk
        raise
    session.set_model(model, name, name, source=library.find(settings, owner, name).path, saved=True)
    return name


START_FROM = ("new", "current", "saved")
"""What a training run starts from: a new model, the session's current model, or a saved one."""


def starting_model(
    session: Session, owner: Owner, start: str, name: str | None, settings: Settings, device: str
) -> GPT | None:
    """A copy of the model a run goes on from (the run changes its weights, the original stays as
    it is until the run has a checkpoint), its record marking the new run; None for a new model.
    The record names the model it went on from only by a name the user gave it (its saved name)."""
    if start not in START_FROM:
        raise UserError("error.bad_value", name="start", value=start, rule=" / ".join(START_FROM))
    if start == "new":
        return None
    if start == "saved":
        if not name:
            raise UserError("error.pick_model")
        saved = library.find(settings, owner, str(name))
        model = load_checked(saved.path, settings, device=device)
        library.touch(saved)
        model.begin_run_from(saved.name)
        return model
    source = require_model(session)
    model = GPT.from_config(source.config, device=device)
    model.load_state_dict(source.state_dict())
    model.tokenizer = source.tokenizer  # immutable: shared
    model.training_record = copy.deepcopy(source.training_record)
    model.begin_run_from(session.saved_name or "")
    if not session.saved_name:  # never saved: its record says what it was trained on, not an invented name
        del model.training_record["started_from"]["model"]
    return model.eval()


def require_model(session: Session) -> GPT:
    if session.training:
        raise UserError("error.busy_training")
    model = session.current_model()
    if model is None:
        raise UserError("error.no_model")
    return model


def summary(session: Session, lang: str) -> str:
    model = session.current_model()
    if model is None:
        return t(lang, "model.none")
    c = model.config
    return t(
        lang,
        "model.summary",
        label=session.model_label,
        params=f"{model.num_parameters():,}".replace(",", " "),
        layers=c.num_layers,
        heads=c.num_heads,
        emb=c.emb_size,
        context=c.max_seq_len,
        vocab=c.vocab_size,
        device=str(model.device),
    )


# ONNX ------------------------------------------------------------------------------------------
def export_current(
    session: Session, precision: str, settings: Settings, cancelled: Callable[[], bool] | None = None
) -> Path:
    """The current model's ONNX export in `precision`, made on first use with `python -m export` in a
    child process (`torch.export` in the server crashed other sessions' trainings). Every export of
    the app goes through here: one gate for the server (`webapp.exports`). The child is killed when
    every caller waiting for it has cancelled (`cancelled()` true) or the session closes."""
    return exports.export_model(session, require_model(session), precision, settings, cancelled)


def browser_files(
    session: Session, precision: str, settings: Settings, cancelled: Callable[[], bool] | None = None
) -> list[Path]:
    """The files the browser backend fetches, from the current model's export in `precision`, among
    the session's downloads, which the app may serve (`webapp.exports.browser_files`). An int8
    export that fails says so and points to fp32, which passes its checks on every model."""
    try:
        folder = export_current(session, precision, settings, cancelled)
    except UserError as err:
        detail = err.values.get("detail")
        if precision != "int8" or err.key != "error.export_failed" or isinstance(detail, Msg):  # Msg: cancelled, limits
            raise
        raise UserError("error.browser_int8_failed", detail=err) from None
    return exports.browser_files(session, folder, settings)


def export_zip(session: Session, folder: Path, precision: str, settings: Settings) -> Path:
    """The export `folder` as a zip among the session's downloads, pruned with the export."""
    name = safe_name(session.model_name)
    target = session.downloads / folder.name / f"{name}-onnx-{precision}.zip"
    if target.is_file():  # an export never changes once made
        return target
    keep = [folder, *session.kept_folders()]
    storage.make_room(session.folder, settings, storage.folder_size(folder), keep, session.downloads)
    return zip_folder(folder, target, root=f"{name}-onnx-{precision}")


def report_text(report: ExportReport, lang: str) -> str:
    """The export's headline numbers and its parity table (as `export.ParityReport.format` writes it)."""
    table = report.parity
    worst = max(table.prefill_max_abs, table.decode_max_abs)
    greedy = (
        t(lang, "cmp.agree", steps=table.decode_steps)
        if table.greedy_identical
        else t(lang, "cmp.differ", position=table.greedy_first_difference)
    )
    head = t(
        lang,
        "export.report",
        precision=report.precision,
        opset=report.opset,
        seconds=report.export_seconds,
        size=f"{report.size_bytes / MB:.2f}",
        diff=f"{worst:.3g}",
        greedy=greedy,
        verdict=t(lang, "cmp.pass") if table.passed else t(lang, "cmp.fail"),
    )
    return head + "\n\n```text\n" + table.format() + "\n```"


def onnx_model(
    session: Session, backend: str, settings: Settings, cancelled: Callable[[], bool] | None = None
) -> tuple[Any, str]:
    """The current model on an onnxruntime backend: the newest export (fp32 exported on demand),
    loaded once per provider. Returns (OnnxGPT, precision)."""
    from export import OnnxGPT, ProviderError

    available = backends.backends()[backend]
    if not available.available:
        raise UserError("error.backend_unavailable", backend=available.label, reason=available.reason)
    require_model(session)
    with session.lock:
        precision, folder = next(reversed(session.exports.items()), (None, None))
    if folder is None:
        precision, folder = "fp32", export_current(session, "fp32", settings, cancelled)
    provider = backends.ORT_PROVIDERS[backend]
    key = (str(folder), provider)
    with session.lock:
        cached = session.onnx_models.get(key)
    if cached is not None:
        return cached, precision
    try:
        model = OnnxGPT.load(folder, provider=provider, threads=settings.generate_threads)
    except ProviderError as err:
        raise UserError("error.backend_unavailable", backend=available.label, reason=_short(err)) from None
    session.add_onnx_model(key, model, model_bytes(require_model(session)))  # at most the fp32 weights
    return model, precision


def _short(err: BaseException, limit: int = 400) -> str:
    text = str(err).strip() or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
