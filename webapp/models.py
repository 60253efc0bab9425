"""Models for the app: saved models in `<artifacts>/models/<name>/`, checkpoint zips in and out, and
ONNX exports of a session's current model (made by `export.to_onnx`, run by `export.OnnxGPT`)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt import (
    CONFIG_FILE,
    GPT,
    MODEL_FILES,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    GPTConfig,
    atomic_folder,
    count_parameters,
    read_config,
)
from webapp import backends, exports, storage, validation
from webapp.archive import safe_extract, zip_folder
from webapp.i18n import UserError, t
from webapp.sessions import Session
from webapp.settings import MB, Settings

if TYPE_CHECKING:
    from export import ExportReport

REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)  # of a model the app can use
MAX_NAME_CHARS = 200
_UNSAFE = re.compile(r"[^\w.-]+")


@dataclass(frozen=True)
class SavedModel:
    name: str
    path: Path
    config: GPTConfig | None  # None: the folder's config is unreadable

    def label(self) -> str:
        c = self.config
        if c is None:
            return f"{self.name} (?)"
        return f"{self.name} — {c.num_layers}×{c.emb_size}, ctx {c.max_seq_len}, vocab {c.vocab_size}"


def safe_name(name: str, fallback: str = "model") -> str:
    """A folder name from user text: letters (any script), digits, '.', '-', '_'; no leading dot."""
    cleaned = _UNSAFE.sub("-", name.strip()).strip("-.")[:64]
    return cleaned or fallback


def list_saved(settings: Settings) -> list[SavedModel]:
    folder = settings.models_dir
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
        if path.name.startswith(".") or not (path / CONFIG_FILE).is_file():
            continue
        try:
            config = read_config(path)
        except CheckpointError:
            config = None
        found.append(SavedModel(path.name, path, config))
    return found


def find_saved(settings: Settings, name: str) -> SavedModel:
    """The saved model called `name` (exactly as listed, so no path can be smuggled in)."""
    for model in list_saved(settings):
        if model.name == name:
            return model
    raise UserError("error.no_such_model", name=name)


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
    return model


def load_saved(session: Session, name: str, settings: Settings) -> GPT:
    saved = find_saved(settings, name)
    model = load_checked(saved.path, settings)
    session.set_model(model, saved.name, saved.name)
    return model


def save_current(session: Session, name: str, settings: Settings, lang: str) -> str:
    """Save the session's model as `<models>/<name>/`; an existing name is never overwritten."""
    model = require_model(session)
    name = validation.text("name", name, MAX_NAME_CHARS)
    folder_name = safe_name(name)
    if not name.strip():
        raise UserError("error.no_name")
    target = settings.models_dir / folder_name
    if target.exists():
        raise UserError("error.name_taken", name=folder_name)
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    storage.check_saved_room(settings, storage.model_bytes(model.num_parameters()))
    try:  # refused if another session takes the name meanwhile
        with atomic_folder(target, replace=False, prefix=storage.saving_prefix()) as tmp:
            model.save(tmp)
    except FileExistsError:
        raise UserError("error.name_taken", name=folder_name) from None
    session.model_label = session.model_name = folder_name
    return folder_name


def zip_saved(session: Session, name: str, settings: Settings) -> Path:
    saved = find_saved(settings, name)
    return zip_folder(saved.path, session.downloads / f"{saved.name}.zip", names=MODEL_FILES, root=saved.name)


def import_zip(session: Session, zip_path: str | Path, settings: Settings) -> str:
    """Unpack an uploaded checkpoint zip safely, check it loads, add it to the saved models and load it."""
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
        storage.check_saved_room(settings, storage.folder_size(work))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # nothing of a refused upload stays on disk
        raise
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    base = safe_name(path.stem, "uploaded")
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        try:
            os.rename(work, settings.models_dir / name)
            break
        except OSError:
            continue
    else:
        raise UserError("error.name_taken", name=base)
    session.set_model(model, name, name)
    return name


START_FROM = ("new", "current", "saved")
"""What a training run starts from: a new model, the session's current model, or a saved one."""


def starting_model(session: Session, start: str, name: str | None, settings: Settings, device: str) -> GPT | None:
    """A copy of the model a run goes on from (the run changes its weights, the original stays as
    it is until the run has a checkpoint), its record marking the new run; None for a new model."""
    if start not in START_FROM:
        raise UserError("error.bad_value", name="start", value=start, rule=" / ".join(START_FROM))
    if start == "new":
        return None
    if start == "saved":
        if not name:
            raise UserError("error.pick_model")
        saved = find_saved(settings, str(name))
        model = load_checked(saved.path, settings, device=device)
        model.begin_run_from(saved.name)
        return model
    source = require_model(session)
    model = GPT.from_config(source.config, device=device)
    model.load_state_dict(source.state_dict())
    model.tokenizer = source.tokenizer  # immutable: shared
    model.training_record = copy.deepcopy(source.training_record)
    model.begin_run_from(session.model_name or "current model")
    return model.eval()


def require_model(session: Session) -> GPT:
    if session.training:
        raise UserError("error.busy_training")
    if session.model is None:
        raise UserError("error.no_model")
    return session.model


def summary(session: Session, lang: str) -> str:
    model = session.model
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
    the session's downloads, which the app may serve (`webapp.exports.browser_files`)."""
    return exports.browser_files(session, export_current(session, precision, settings, cancelled), settings)


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
    with session.lock:
        session.onnx_models[key] = model
    return model, precision


def _short(err: BaseException, limit: int = 400) -> str:
    text = str(err).strip() or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
