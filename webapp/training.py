"""Training runs for the app: presets, validated settings, data preparation, and a `TrainingJob`
that runs `gpt`'s `fit` in a worker thread and reports through a callback.

The handler that owns a job polls it between yields, so a Gradio cancel or the Stop button lands
between two optimizer steps: `stop()` sets the trainer's stop flag, `fit` finishes the step, writes
a checkpoint and returns, and the model is left at that clean step. A stopped run resumes from its
newest checkpoint with the same data and tokenizer. A run may also go on from an existing model
(its weights, shape and tokenizer; `TrainConfig.start`); its loss curve then continues the
model's earlier one (`Curve`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from gpt import (
    GPT,
    Callback,
    EarlyStopping,
    GPTConfig,
    ModelCheckpoint,
    Tokenizer,
    Trainer,
    check_vocabulary,
    count_parameters,
    encode_corpus,
    estimate_training_memory,
    evaluating,
    latest_checkpoint,
    make_loaders,
    read_weights,
)
from webapp import backends, validation
from webapp.corpus import Corpus
from webapp.i18n import Msg, UserError, t
from webapp.settings import MB, Settings

log = logging.getLogger(__name__)

VALID_FRACTION = 0.1
EVAL_BATCHES = 8
SAMPLE_TOKENS = 160
SAMPLE_EVERY_S = 10.0
ABANDONED_S = 120.0  # nobody polled the job for this long (the page is gone): stop it
PLOT_POINTS = 400
STOPPED = "stopped"
ABANDONED = "abandoned"
EARLY_STOP_EVALUATIONS = 6
"""A run stops once this many evaluations in a row (a fifth of a run's 30) found no lower validation
loss than its best: the app keeps the best checkpoint, so further steps would only learn the text
by heart (bench/presets.py; docs/performance.md). Resume goes on from the last step, under the
same rule (`EarlyStopping` remembers the best of the run's history)."""
TRAIN_NICE = 10  # training yields the CPU to generation requests (bench/webapp_latency.py; docs/decisions.md)


@dataclass(frozen=True)
class TrainConfig:
    """What the Train tab sets: model shape, tokenizer size and optimisation."""

    num_layers: int = 2
    num_heads: int = 4
    emb_size: int = 64
    context: int = 64
    vocab_size: int = 512
    learning_rate: float = 3e-3
    batch_size: int = 16
    steps: int = 1500
    dropout: float = 0.0
    rotary: bool = False  # rotary positions (`GPTConfig.rotary`): a lower loss, but not GPT-2
    device: str = "cpu"
    start: GPTConfig | None = None  # the shape of the model the run goes on from; None: a new model

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The model this run trains, for a tokenizer of `vocab_size` tokens."""
        if self.start is not None:
            return self.start
        return GPTConfig(
            vocab_size=vocab_size,
            max_seq_len=self.context,
            emb_size=self.emb_size,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            dropout=self.dropout,
            rotary=self.rotary,
        )


MODEL_PRESETS: dict[str, TrainConfig] = {  # model sizes; gpt.PRESETS are sampling presets
    # 137 K parameters: recognisable Python (indentation, def, docstrings) in about a minute on 2 cores.
    "tiny": TrainConfig(),
    "small": TrainConfig(4, 4, 128, 128, 2048, 1e-3, 16, 3000, 0.1),
    "medium": TrainConfig(6, 6, 192, 256, 4096, 6e-4, 16, 5000, 0.1),
}

SETTING_FIELDS = (
    "num_layers",
    "num_heads",
    "emb_size",
    "context",
    "vocab_size",
    "learning_rate",
    "batch_size",
    "steps",
    "dropout",
    "rotary",
)
"""The advanced training settings in the order of the /train API (after source, files and sample)
and of `TrainHandlers.preset`'s values: numbers, then `rotary` (true or false)."""

# (minimum, maximum) of each integer setting; steps are capped by the server settings too.
LIMITS = {
    "num_layers": (1, 48),
    "num_heads": (1, 64),
    "emb_size": (8, 4096),
    "context": (8, 4096),
    "vocab_size": (257, 65536),
    "batch_size": (1, 1024),
    "steps": (1, 10**9),
}
MAX_DROPOUT = 0.9


def make_config(settings: Settings, start: GPTConfig | None = None, **values: Any) -> TrainConfig:
    """A validated `TrainConfig` from UI values (numbers may arrive as floats or strings), refused
    before any work when the model is over the size cap or the run over the memory budget.
    With `start`, the run goes on from a model of that shape, which replaces the UI's."""
    parsed = {name: validation.integer(name, values[name], low, high) for name, (low, high) in LIMITS.items()}
    if parsed["steps"] > settings.max_steps:
        raise UserError("error.too_many_steps", steps=parsed["steps"], limit=settings.max_steps)
    if parsed["emb_size"] % parsed["num_heads"]:
        raise UserError("error.heads_divide", emb=parsed["emb_size"], heads=parsed["num_heads"])
    learning_rate = validation.real("learning_rate", values["learning_rate"], 0.0, 1.0, open_low=True)
    dropout = validation.real("dropout", values["dropout"], 0.0, MAX_DROPOUT)
    rotary = validation.boolean("rotary", values["rotary"])
    device = checked_device(values.get("device"))
    if start is not None:
        parsed.update(
            num_layers=start.num_layers,
            num_heads=start.num_heads,
            emb_size=start.emb_size,
            context=start.max_seq_len,
            vocab_size=start.vocab_size,
        )
        dropout, rotary = start.dropout, start.rotary
    config = TrainConfig(
        learning_rate=learning_rate, dropout=dropout, rotary=rotary, device=device, start=start, **parsed
    )
    check_size(config, config.vocab_size, settings)  # an upper bound: the trained vocabulary may be smaller
    return config


def checked_device(value: Any) -> str:
    """The training device the UI value names ("cpu" when empty); unknown or unavailable raises `UserError`."""
    device = str(value or "cpu")
    found = backends.devices().get(device)
    if found is None:
        raise UserError("error.bad_value", name="device", value=device, rule=" / ".join(backends.DEVICES))
    if not found.available:
        raise UserError("error.device_unavailable", device=device, reason=found.reason)
    return device


def check_size(config: TrainConfig, vocab_size: int, settings: Settings) -> None:
    """Refuse a model over `max_params`, or a run whose estimated peak memory is over the budget."""
    model = config.gpt_config(vocab_size)
    params = count_parameters(model)
    if params > settings.max_params:
        raise UserError("error.too_many_params", params=_count(params), limit=_count(settings.max_params))
    memory = estimate_training_memory(model, config.batch_size, precision="auto", device=config.device)
    if memory.total > settings.max_train_memory_mb * MB:
        lower = "lower.model" if memory.largest() in ("weights", "gradients", "optimizer") else "lower.activations"
        raise UserError(
            "error.too_much_memory",
            estimate=memory.describe(),
            limit=settings.max_train_memory_mb,
            lower=Msg(lower),
        )


PREPARE_BYTES_PER_TEXT_BYTE = 48
"""Memory preparing the data takes per byte of training text: the tokenizer's training and the
encoded ids (about 30 measured for 1 MB of English; the rest is margin)."""


def run_memory(config: TrainConfig, text_bytes: int = 0) -> int:
    """Bytes a run reserves from the server's memory budget (`webapp.capacity`): its estimated
    training peak, and the data preparation of `text_bytes` of text (0 when it is prepared)."""
    model = config.gpt_config(config.vocab_size)
    estimate = estimate_training_memory(model, config.batch_size, precision="auto", device=config.device)
    return estimate.total + PREPARE_BYTES_PER_TEXT_BYTE * text_bytes


@dataclass
class PreparedData:
    """Everything a run (and its resume) trains on."""

    tokenizer: Tokenizer
    train_loader: Any
    valid_loader: Any
    tokens: int
    train_tokens: int
    corpus_label: Any  # str, or a translatable `Msg`


def prepare_data(corpus: Corpus, config: TrainConfig, tokenizer: Tokenizer | None = None) -> PreparedData:
    """Encode the corpus with `tokenizer` (by default one trained on it) and cut it into windows;
    too little text, or a tokenizer that does not fit the model, raises `UserError`."""
    tokenizer = tokenizer or Tokenizer.train(corpus.texts, vocab_size=config.vocab_size)
    ids = encode_corpus(corpus.texts, tokenizer)
    try:
        check_vocabulary(ids, config.gpt_config(tokenizer.vocab_size).vocab_size)
    except ValueError as err:
        raise UserError("error.bad_checkpoint", detail=str(err)) from None
    needed = minimum_tokens(config)
    if len(ids) < needed:
        raise UserError(
            "error.text_too_short", tokens=len(ids), needed=needed, context=config.context, batch=config.batch_size
        )
    train_loader, valid_loader = make_loaders(ids, config.context, config.batch_size, valid_fraction=VALID_FRACTION)
    train_tokens = int(len(ids) * (1 - VALID_FRACTION))
    return PreparedData(tokenizer, train_loader, valid_loader, len(ids), train_tokens, corpus.label)


def minimum_tokens(config: TrainConfig) -> int:
    """Fewest tokens for one batch of training windows and one validation window."""
    for_train = math.ceil((config.context + config.batch_size) / (1 - VALID_FRACTION)) + 1
    for_valid = math.ceil((config.context + 1) / VALID_FRACTION) + 1
    return max(for_train, for_valid)


def build_model(config: TrainConfig, tokenizer: Tokenizer, settings: Settings, seed: int = 0) -> GPT:
    check_size(config, tokenizer.vocab_size, settings)
    torch.manual_seed(seed)
    model = GPT.from_config(config.gpt_config(tokenizer.vocab_size), device=config.device)
    model.tokenizer = tokenizer
    return model


@dataclass(frozen=True)
class Curve:
    """A model's losses before a run, by step: train `(step, loss)` points and validation evaluations.

    Kept in the model's `training_record` as `"curve"` (`to_record`), so a saved model shows its
    whole curve when it trains further; steps count from the model's first run."""

    train: tuple[tuple[int, float], ...] = ()
    evaluations: tuple[tuple[int, float], ...] = ()

    @property
    def end(self) -> int:
        """The step the curve reaches: a run that goes on from it counts its steps from there."""
        return max((step for step, _ in self.train + self.evaluations), default=0)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Curve:
        """The curve a model's `training_record` keeps; for a record without one (saved before the
        app kept curves, or by the command line), its last losses at the step its runs reached."""
        kept = record.get("curve")
        if isinstance(kept, dict):
            curve = cls(_points(kept.get("train")), _points(kept.get("validation")))
            if curve.train or curve.evaluations:
                return curve
        step = _record_steps(record)
        if step <= 0:
            return cls()
        points = {name: record.get(name) for name in ("train_loss", "validation_loss")}
        found = {name: ((step, float(v)),) if _is_number(v) else () for name, v in points.items()}
        return cls(found["train_loss"], found["validation_loss"])

    def to_record(self) -> dict[str, list[list[float]]]:
        """The curve for a `training_record`, at most `PLOT_POINTS` points a series (train losses averaged)."""
        steps, losses = [s for s, _ in self.train], [v for _, v in self.train]
        stride = max(1, math.ceil(len(self.evaluations) / PLOT_POINTS))
        return {
            "train": [[step, round(loss, 4)] for step, loss in _averaged(steps, losses)],
            "validation": [[step, round(loss, 4)] for step, loss in self.evaluations[::stride]],
        }


def _points(value: Any) -> tuple[tuple[int, float], ...]:
    """`[[step, loss], ...]` from a record (which may come from an uploaded zip): () unless well formed."""
    if not isinstance(value, list):
        return ()
    ok = all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and p[0] >= 0 and _is_number(p[1]) for p in value
    )
    return tuple((p[0], float(p[1])) for p in value) if ok else ()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _record_steps(record: dict[str, Any], depth: int = 0) -> int:
    """Optimizer steps of a model's runs together: its last run's and those of the models it went on from."""
    steps = record.get("steps")
    steps = steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else 0
    earlier = record.get("started_from")
    if isinstance(earlier, dict) and depth < 100:
        steps += _record_steps(earlier, depth + 1)
    return steps


@dataclass
class Snapshot:
    """A consistent-enough view of a running job for the UI (read from another thread)."""

    phase: str  # "starting", "training", "done"
    step: int
    total: int
    loss: float | None
    validation_loss: float | None
    tokens_per_second: float
    elapsed: float
    eta: float | None
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    earlier: Curve = field(default_factory=Curve)  # the model's losses before this run (steps before `earlier.end`)


class TrainingJob:
    """One training run of one session: `start()`, poll `snapshot()` / `samples`, `stop()`, `done`."""

    def __init__(
        self,
        model: GPT,
        data: PreparedData,
        config: TrainConfig,
        checkpoint_dir: Path,
        *,
        threads: int,
        max_minutes: float,
        resume: bool = False,
        earlier: Curve | None = None,
        label: Any = "",
        saved_start: str | None = None,
        sample_every_s: float = SAMPLE_EVERY_S,
        on_done: Callable[[TrainingJob], None] | None = None,
    ) -> None:
        self.model = model
        self.earlier = earlier or Curve()  # the losses of the model this run goes on from
        self.label = label  # what the app calls the model this run trains
        self.saved_start = saved_start  # the saved model's name, when the run goes on from one
        model.training_record.setdefault("texts", [str(data.corpus_label)])  # its model card names them
        self.data = data
        self.config = config
        self.checkpoint_dir = checkpoint_dir
        self.threads = threads
        self.max_minutes = max_minutes
        self.resume = resume
        self.sample_every_s = sample_every_s
        self.on_done = on_done  # called from the worker when the run has ended, before `done` is set
        self.usable = False  # the model holds the weights of a checkpoint of this run (see `_run`)
        # Keeps the best checkpoint by validation loss; a run that goes on from a model compares with its start.
        self.checkpointer = ModelCheckpoint(
            every_n_steps=checkpoint_interval(config.steps),
            keep_last=2,
            restore_best=True,
            evaluate_start=config.start is not None,
        )
        self.kept_step: int | None = None  # the run's best step, kept instead of its last (0: the start)
        self.samples: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
        self.last_sample: tuple[int, str] | None = None
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.trainer: Trainer | None = None
        self.stop_reason: str | None = None
        self.started = time.monotonic()
        self.last_poll = time.monotonic()
        self._stop_requested: str | None = None
        self._rate = collections.deque(maxlen=4096)  # (time, step, tokens seen)
        self._thread = threading.Thread(target=self._run, name="simple-llm-training", daemon=True)

    # control ---------------------------------------------------------------------------------
    def start(self) -> TrainingJob:
        self._thread.start()
        return self

    def stop(self, reason: str = STOPPED) -> None:
        """Ask the run to stop after its current step (safe from any thread, before or during `fit`)."""
        self._stop_requested = self._stop_requested or reason
        if self.trainer is not None:
            self.trainer.request_stop(reason)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.done.is_set()

    @property
    def steps_done(self) -> int:
        if self.trainer is not None:
            return self.trainer.step
        return 0

    @property
    def completed(self) -> bool:
        """The run reached its step target (so Resume needs a higher one)."""
        return self.done.is_set() and self.error is None and self.steps_done >= self.config.steps

    # worker ----------------------------------------------------------------------------------
    def _run(self) -> None:
        _lower_priority(TRAIN_NICE)
        torch.set_num_threads(self.threads)
        data = self.data
        try:
            self.model.fit(
                data.train_loader,
                data.valid_loader,
                num_epoch=None,  # as many as the steps need
                learning_rate=self.config.learning_rate,
                callbacks=[_Reporter(self), self.checkpointer, EarlyStopping(patience=EARLY_STOP_EVALUATIONS)],
                checkpoint_dir=self.checkpoint_dir,
                max_steps=self.config.steps,
                max_time=self.max_minutes * 60,
                eval_interval=eval_interval(self.config.steps),
                eval_batches=EVAL_BATCHES,
                resume=self.resume,
                progress=False,
                log_every=None,
            )
            self.stop_reason = self.trainer.stop_reason if self.trainer is not None else None
            self.usable = latest_checkpoint(self.checkpoint_dir) is not None  # `fit` saved its last step
            if self.checkpointer.restored:
                self._keep_best()
        except BaseException as err:  # reported to the UI; the model goes back to its last checkpoint
            log.exception("training failed")
            self.error = err
            self.usable = self._restore_last_checkpoint()
        finally:
            self.model.eval()
            self._call_on_done()
            self.done.set()

    def _keep_best(self) -> None:
        """The model holds the run's best checkpoint (`ModelCheckpoint(restore_best=True)`), not its
        last step: its record says so (a model kept at step 0 is the one the run started from)."""
        step, history = self.checkpointer.best_step, self.trainer.history
        self.kept_step = step
        if step and step in history.steps:
            i = history.steps.index(step)
            self.model.training_record.update(
                steps=step,
                tokens_seen=history.tokens[i],
                train_loss=history.loss[i],
                validation_loss=self.checkpointer.best_loss,
            )

    @property
    def kept_start(self) -> bool:
        """Training only raised the validation loss: the model holds the weights it started from."""
        return self.kept_step == 0

    @property
    def source(self) -> Path | None:
        """The checkpoint folder holding the weights the model ends with."""
        return self.checkpointer.best_folder if self.kept_step is not None else latest_checkpoint(self.checkpoint_dir)

    def _restore_last_checkpoint(self) -> bool:
        """Load the run's newest checkpoint into the model; False when there is none (or it is unreadable)."""
        folder = latest_checkpoint(self.checkpoint_dir)
        if folder is None:
            return False
        try:
            read_weights(self.model, folder)
        except Exception:  # the error already reported matters more
            log.exception("could not restore %s", folder)
            return False
        return True

    def _call_on_done(self) -> None:
        if self.on_done is None:
            return
        try:
            self.on_done(self)
        except Exception:
            log.exception("the end-of-run handler of %s failed", self.checkpoint_dir)

    def _sample(self, step: int) -> None:
        """A short sampled continuation of an empty prompt (a new document), in eval mode."""
        with evaluating(self.model):
            text = self.model.generate_text("", SAMPLE_TOKENS, do_sample=True, temperature=0.8, top_k=40, seed=step)
        self.last_sample = (step, text)
        self.samples.put((step, text))

    # view ------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        self.last_poll = time.monotonic()
        trainer = self.trainer
        elapsed = time.monotonic() - self.started
        if trainer is None:
            return Snapshot("starting", 0, self.config.steps, None, None, 0.0, elapsed, None, earlier=self.earlier)
        history = trainer.history
        steps, losses = list(history.steps), list(history.loss)
        n = min(len(steps), len(losses))
        step = trainer.step
        steps_per_s, tokens_per_s = self._rates()
        remaining = max(0, trainer.total_steps - step)
        eta = remaining / steps_per_s if steps_per_s > 0 else None
        return Snapshot(
            "done" if self.done.is_set() else "training",
            step,
            trainer.total_steps,
            None if math.isnan(trainer.loss) else trainer.loss,
            trainer.validation_loss,
            tokens_per_s,
            elapsed,
            0.0 if self.done.is_set() else eta,
            steps[:n],
            losses[:n],
            list(history.evaluations),
            self.earlier,
        )

    def curve(self) -> Curve:
        """The model's whole loss curve after this run: the earlier one, then this run's (averaged)."""
        snap, offset, end = self.snapshot(), self.earlier.end, self.kept_step
        kept = [(s, v) for s, v in zip(snap.steps, snap.losses) if end is None or s <= end]  # to the weights kept
        train = tuple((offset + step, loss) for step, loss in _averaged([s for s, _ in kept], [v for _, v in kept]))
        evaluations = tuple((offset + step, loss) for step, loss in snap.evaluations if end is None or step <= end)
        return Curve(self.earlier.train + train, self.earlier.evaluations + evaluations)

    def _rates(self, window: float = 10.0) -> tuple[float, float]:
        """Steps/s and tokens/s over the last `window` seconds (evaluations and samples included)."""
        points = list(self._rate)
        if len(points) < 2:
            trainer = self.trainer
            return 0.0, trainer.tokens_per_second if trainer is not None else 0.0
        end = points[-1]
        start = next((p for p in points if p[0] >= end[0] - window), points[0])
        if start is end:
            start = points[-2]
        dt = end[0] - start[0]
        if dt <= 0:
            return 0.0, 0.0
        return (end[1] - start[1]) / dt, (end[2] - start[2]) / dt


class _Reporter(Callback):
    """Links `fit` to its job: hands over the trainer, records throughput, samples, stops abandoned runs."""

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        self.next_sample = 0.0

    def on_train_begin(self, trainer: Trainer) -> None:
        job = self.job
        job.trainer = trainer
        job._rate.append((time.monotonic(), trainer.step, trainer.history.tokens_seen))
        self.next_sample = time.monotonic() + job.sample_every_s / 2
        if job._stop_requested:
            trainer.request_stop(job._stop_requested)

    def on_batch_end(self, trainer: Trainer) -> None:
        job, now = self.job, time.monotonic()
        job._rate.append((now, trainer.step, trainer.history.tokens_seen))
        if now - job.last_poll > ABANDONED_S:
            log.warning("nobody watches training run %s: stopping it", job.checkpoint_dir)
            trainer.request_stop(ABANDONED)
        if now >= self.next_sample and trainer.step < trainer.total_steps:
            job._sample(trainer.step)
            self.next_sample = time.monotonic() + job.sample_every_s

    def on_train_end(self, trainer: Trainer) -> None:
        self.job._sample(trainer.step)


def checkpoint_interval(steps: int) -> int:
    return max(50, steps // 10)


def eval_interval(steps: int) -> int:
    return max(10, steps // 30)


# rendering ------------------------------------------------------------------------------------
SERIES = ("earlier_train", "earlier_validation", "train", "validation")
"""The loss plot's series, in legend order; each is `plot.<name>` in the reader's language."""
COLOURS = {"earlier_train": "#93c5fd", "earlier_validation": "#fdba74", "train": "#2563eb", "validation": "#ea580c"}
"""A fixed colour per series: this run's train and validation losses in strong blue and orange, the
model's earlier ones in light tints of the same colours."""


def loss_frame(snapshot: Snapshot | None, lang: str, earlier: Curve | None = None) -> pd.DataFrame:
    """Rows (step, loss, split) for `gr.LinePlot`: one empty row (loss NaN, not drawn) per series,
    then the model's earlier losses, this run's train loss averaged into at most `PLOT_POINTS`
    points, and its validation losses (without a snapshot: a run about to go on from `earlier`).

    Every frame holds every series, drawn or not. Gradio's plot fixes its colour scale to the series
    of the data it holds when it redraws (at a run's first frame, from the frame before it), and a
    series outside that scale has neither colour nor legend entry for the whole run; with all of them
    always there, each keeps its colour in every run, and `plot_style` says which the legend shows.
    """
    names = {name: t(lang, f"plot.{name}") for name in SERIES}
    earlier = snapshot.earlier if snapshot is not None else earlier or Curve()
    offset = earlier.end  # a run that goes on from a model continues its curve
    rows = [(offset, math.nan, label) for label in names.values()]
    rows += [(step, loss, names["earlier_train"]) for step, loss in earlier.train]
    rows += [(step, loss, names["earlier_validation"]) for step, loss in earlier.evaluations]
    if snapshot is not None:
        rows += [(offset + step, loss, names["train"]) for step, loss in _averaged(snapshot.steps, snapshot.losses)]
        rows += [(offset + step, loss, names["validation"]) for step, loss in snapshot.evaluations]
    return pd.DataFrame(rows, columns=["step", "loss", "split"])


def plot_style(earlier: Curve | None, lang: str) -> dict[str, Any]:
    """The loss plot's colours (every series, fixed) and legend (the series a run that goes on from
    `earlier` draws), as `gr.LinePlot` update arguments. Gradio applies them only from a stream's
    first yield, so a run sends them with its first frame."""
    earlier = earlier or Curve()
    drawn = [name for name, points in (("earlier_train", earlier.train), ("earlier_validation", earlier.evaluations))
             if points] + ["train", "validation"]  # fmt: skip
    return {
        "color_map": {t(lang, f"plot.{name}"): COLOURS[name] for name in SERIES},
        "colors_in_legend": [t(lang, f"plot.{name}") for name in drawn],
    }


def _averaged(steps: list[int], losses: list[float]) -> list[tuple[int, float]]:
    """The train loss averaged into at most `PLOT_POINTS` points, each at its chunk's last step."""
    size = max(1, math.ceil(len(steps) / PLOT_POINTS))
    points = []
    for start in range(0, len(steps), size):
        chunk = losses[start : start + size]
        points.append((steps[min(start + size, len(steps)) - 1], sum(chunk) / len(chunk)))
    return points


def status_text(job: TrainingJob, snapshot: Snapshot, lang: str) -> str:
    """Markdown status of a run: progress, losses, throughput, ETA; then the outcome when done."""
    lines = [
        t(
            lang,
            "train.header",
            corpus=job.data.corpus_label,
            tokens=_count(job.data.tokens),
            params=_count(job.model.num_parameters()),
            vocab=job.data.tokenizer.vocab_size,
            context=job.config.context,
        )
    ]
    if snapshot.phase == "starting":
        lines.append(t(lang, "train.starting"))
        return "\n\n".join(lines)
    parts = [t(lang, "train.step", step=snapshot.step, total=snapshot.total)]
    if snapshot.loss is not None:
        parts.append(t(lang, "train.loss", loss=f"{snapshot.loss:.3f}"))
    if snapshot.validation_loss is not None:
        parts.append(t(lang, "train.val_loss", loss=f"{snapshot.validation_loss:.3f}"))
    parts.append(t(lang, "train.speed", rate=f"{snapshot.tokens_per_second:,.0f}".replace(",", " ")))
    parts.append(t(lang, "train.elapsed", time=_clock(snapshot.elapsed)))
    if snapshot.phase == "training" and snapshot.eta is not None:
        parts.append(t(lang, "train.eta", time=_clock(snapshot.eta)))
    lines.append(" · ".join(parts))
    if snapshot.phase == "done":
        lines.append(outcome_text(job, lang))
    return "\n\n".join(lines)


def outcome_text(job: TrainingJob, lang: str) -> str:
    if job.error is not None:
        key = "train.failed" if job.usable else "train.failed_kept"
        return t(lang, key, error=_error_text(job.error, lang))
    if not job.usable:
        return t(lang, "train.stopped_kept")
    reason = job.stop_reason
    if reason in (None, "max_steps") or job.completed:
        text = t(lang, "train.finished", step=job.steps_done)
    elif reason == "early_stopping":
        text = t(
            lang, "train.early_stop", step=job.steps_done, steps=job.config.steps, evaluations=EARLY_STOP_EVALUATIONS
        )
    elif reason == "max_time":
        text = t(lang, "train.time_limit", step=job.steps_done, minutes=f"{job.max_minutes:g}")
    else:
        text = t(lang, "train.stopped", step=job.steps_done)
    return text + _kept_text(job, lang)


def _kept_text(job: TrainingJob, lang: str) -> str:
    """What the app kept when the validation loss rose after the run's best checkpoint ("" otherwise)."""
    if job.kept_step is None or job.trainer is None or job.trainer.validation_loss is None:
        return ""
    values = {
        "best": f"{job.checkpointer.best_loss:.3f}",
        "best_step": job.kept_step,
        "last": f"{job.trainer.validation_loss:.3f}",
        "step": job.trainer.history.evaluations[-1][0],
    }
    return "\n\n" + t(lang, "train.kept_start" if job.kept_start else "train.kept_best", **values)


def _error_text(err: BaseException, lang: str) -> str:
    if isinstance(err, UserError):
        return err.message(lang)
    return f"{type(err).__name__}: {err}"


def sample_text(job: TrainingJob, lang: str) -> str:
    if job.last_sample is None:
        return ""
    step, text = job.last_sample
    return t(lang, "train.sample_at", step=step) + "\n" + text


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    if n >= 1_000:
        return f"{n / 1e3:.0f} K"
    return str(n)


def resume_config(job: TrainingJob, steps: int, settings: Settings) -> TrainConfig:
    """The stopped run's settings with a new step target, which must lie beyond the steps done."""
    if steps > settings.max_steps:
        raise UserError("error.too_many_steps", steps=steps, limit=settings.max_steps)
    if steps <= job.steps_done:
        raise UserError("error.resume_done", step=job.steps_done)
    return dataclasses.replace(job.config, steps=steps)


def _lower_priority(nice: int) -> None:
    """Raise this thread's nice value (torch worker threads it starts inherit it); Linux only, best effort."""
    if not sys.platform.startswith("linux"):
        return  # elsewhere a thread id is not a process id: setpriority would miss, or hit another process
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:
        pass
