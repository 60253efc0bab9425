"""The Models tab's evaluation: how well the current or a saved model predicts a pasted or uploaded
text (`gpt.evaluate_text`), each result kept in the session's table, so that two models (say, one
and its fine-tuned copy) compare side by side on the same held-out text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gpt import (
    DEFAULT_EVAL_BATCH,
    GPT,
    CheckpointError,
    TextScore,
    estimate_evaluation_memory,
    evaluation_batch_size,
    read_config,
    token_losses,
)
from webapp import corpus, insight, library, models, validation
from webapp.i18n import UserError, t
from webapp.owners import Owner
from webapp.sessions import Session
from webapp.settings import MB, Settings

MODELS = ("current", "saved")
MAX_ROWS = 20  # results a session keeps; the oldest go first
COLUMNS = ("model", "text", "tokens", "loss", "perplexity", "nats_per_byte", "bits_per_byte")


def read_text(pasted: Any, upload: Path | None, settings: Settings) -> tuple[str, str]:
    """The text to score and its name: the uploaded file when there is one (by the training
    uploads' rules), else the pasted text; each at most `max_eval_mb`."""
    limit = settings.max_eval_mb
    if upload is not None:
        found = corpus.read_uploads([upload], min(settings.max_upload_mb, limit), limit)
        return found.texts[0], str(found.label)
    text = validation.text("text", pasted, int(limit * MB), max_bytes=int(limit * MB))
    if not text.strip():
        raise UserError("error.eval_no_text")
    return text, f"{len(text):,} chars".replace(",", " ")


@dataclass(frozen=True)
class Plan:
    """How an evaluation runs: the batch of windows it scores at once, the memory it reserves, and
    the saved model it loads (None: the session's current model)."""

    batch_size: int
    memory: int
    saved: Any


def plan(
    session: Session, which: str, saved_name: Any, text: str, settings: Settings, owner: Owner, budget: int
) -> Plan:
    """Score with the current or one of the owner's saved models (`which`), in the largest batch whose
    estimated memory (`gpt.estimate_evaluation_memory`) fits half of `budget` (the most one job may
    reserve); planned from the model's config, before anything is loaded."""
    if which not in MODELS:
        raise UserError("error.bad_value", name="model", value=which, rule=" / ".join(MODELS))
    saved = None
    if which == "current":
        config = models.require_model(session).config
    elif not saved_name:
        raise UserError("error.pick_model")
    else:
        saved = library.find(settings, owner, str(saved_name))
        try:
            config = read_config(saved.path)
        except CheckpointError as err:
            raise UserError("error.bad_checkpoint", detail=str(err)) from None
    text_bytes = len(text.encode("utf-8"))
    loads = saved is not None
    batch = evaluation_batch_size(config, text_bytes, budget // 2, weights=loads)
    return Plan(batch, estimate_evaluation_memory(config, text_bytes, batch, weights=loads), saved)


def pick_model(session: Session, plan: Plan, settings: Settings) -> tuple[GPT, str]:
    """The model `plan` scores with and its name: the session's current model or the saved one, loaded."""
    if plan.saved is None:
        return models.require_model(session), str(session.model_label)
    model = models.load_checked(plan.saved.path, settings)
    library.touch(plan.saved)
    return model, plan.saved.name


def score(
    session: Session, model: GPT, model_name: str, text: str, text_name: str, batch_size: int = DEFAULT_EVAL_BATCH
) -> tuple[TextScore, list[Any]]:
    """Score `text` in batches of `batch_size` windows, add the result to the session's table; the
    result, and the text's first tokens each with its surprise (`insight.TokenPiece`s)."""
    try:
        ids, losses = token_losses(model, text, batch_size, progress=True)  # the app shows tqdm's bar (gr.Progress)
    except ValueError as err:  # a tokenizer that does not fit the model
        raise UserError("error.bad_checkpoint", detail=str(err)) from None
    result = TextScore.of(text, losses)
    row = {"model": model_name, "text": text_name, **result.to_dict()}
    with session.lock:
        session.evaluations = [*session.evaluations, row][-MAX_ROWS:]
    return result, insight.surprise_pieces(ids, losses, model.tokenizer)


def table(session: Session, lang: str) -> pd.DataFrame:
    """The session's results, newest first, with the column names in `lang`."""
    rows = [
        [
            row["model"],
            row["text"],
            row["tokens"],
            round(row["loss"], 4),
            round(row["perplexity"], 2),
            round(row["nats_per_byte"], 4),
            round(row["bits_per_byte"], 4),
        ]
        for row in reversed(session.evaluations)
    ]
    return pd.DataFrame(rows, columns=[t(lang, f"eval.col_{name}") for name in COLUMNS])


def message(result: TextScore, model_name: str, text_name: str, lang: str) -> str:
    return t(
        lang,
        "eval.done",
        model=model_name,
        text=text_name,
        nats=f"{result.nats_per_byte:.4f}",
        bits=f"{result.bits_per_byte:.4f}",
        ppl=f"{result.perplexity:.2f}",
    )
