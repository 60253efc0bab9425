"""Callbacks observe `fit` and may stop it: early stopping, checkpoints, a progress bar.

Every hook receives the running `gpt.training.Trainer`, which exposes the step, epoch, last loss,
learning rate, throughput, history and model, and stops training when `stop_training` is set.
Hooks run on every rank; the ones that write files or the terminal do so on rank 0 only.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from gpt import checkpoint

if TYPE_CHECKING:
    from gpt.training import Trainer, TrainingHistory

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_MINUTES = 5.0
"""How often `ModelCheckpoint` (and so `fit` with a checkpoint folder) saves by default, in minutes."""


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first step (after a resume has restored the state)."""

    def on_epoch_begin(self, trainer: Trainer) -> None:
        """Before the first step of an epoch (a resumed epoch included)."""

    def on_batch_end(self, trainer: Trainer) -> None:
        """After each optimizer step (`grad_accum_steps` batches); `trainer.loss` is its loss."""

    def on_evaluate(self, trainer: Trainer) -> None:
        """After each evaluation; `trainer.validation_loss` is its result."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After each epoch that made a step (a stopped one too), its means already in `trainer.history`."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step; `trainer.stop_reason` says why training stopped (None: it ran every epoch)."""


class WeightEMA(Callback):
    """An exponential moving average of the parameters, starting from the weights training starts
    with. After optimizer step `step` it moves towards the weights by 1 - d, with d =
    min(`decay`, (1 + step) / (10 + step)): a short run averages its last tenth of steps or so, not
    mostly its starting weights, and from step 890 on (for 0.99) d is `decay`. `fit` averages with
    decay 0.99 by default (its `ema_decay` option); in nanoGPT's CPU budget (2,000 steps) that reached
    0.008 nats/byte lower validation loss than the last weights on three seeds (bench/ablate.py;
    docs/decisions.md).

    `fit` drives it, not its hooks: the evaluations during training (the validation history,
    `EarlyStopping`, `ModelCheckpoint`'s best) measure the average, a checkpoint's
    `model.safetensors` holds it (the raw weights and the optimizer are kept apart, for a resume,
    which restores both), and the model ends `fit` holding it. Passed among `fit`'s callbacks, it
    takes the place of `ema_decay`'s average (one average at most).
    """

    def __init__(self, decay: float = 0.99) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.average: list[torch.Tensor] = []  # one tensor per parameter, in `model.parameters()` order

    def start(self, model: torch.nn.Module) -> None:
        """Start the average at the model's weights."""
        self.average = [p.detach().clone() for p in model.parameters()]

    def decay_at(self, step: int) -> float:
        """The decay applied after optimizer step `step` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Move the average towards the model's weights after optimizer step `step` (1-based)."""
        weight = 1.0 - self.decay_at(step)
        for average, p in zip(self.average, model.parameters(), strict=True):
            average.lerp_(p.detach(), weight)

    def copy_to(self, model: torch.nn.Module) -> list[torch.Tensor]:
        """Copy the average into the model; return the weights it held."""
        replaced = [p.detach().clone() for p in model.parameters()]
        _copy_weights(model, self.average)
        return replaced

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
        """The model holds the average inside the block, and its own weights again after it; yields those."""
        own = self.copy_to(model)
        try:
            yield own
        finally:
            _copy_weights(model, own)


@torch.no_grad()
def _copy_weights(model: torch.nn.Module, weights: list[torch.Tensor]) -> None:
    """Copy `weights` (one tensor per parameter, in `model.parameters()` order) into the model."""
    for p, weight in zip(model.parameters(), weights, strict=True):
        p.copy_(weight)


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` checks in a row.

    "validation_loss" is checked after every evaluation, "train_loss" (the epoch mean) at every epoch end.
    """

    def __init__(self, patience: int = 3, min_delta: float = 0.0, monitor: str = "validation_loss") -> None:
        if monitor not in ("validation_loss", "train_loss"):
            raise ValueError(f"monitor must be 'validation_loss' or 'train_loss', got {monitor!r}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.patience = patience
        self.min_delta = min_delta
        self.monitor = monitor
        self.best = math.inf
        self.wait = 0

    def on_train_begin(self, trainer: Trainer) -> None:
        if self.monitor == "validation_loss" and trainer.valid_loader is None:
            raise ValueError("EarlyStopping(monitor='validation_loss') needs a valid_loader")
        self.best = min(self._values(trainer.history), default=math.inf)  # a resume keeps its best
        self.wait = 0

    def on_evaluate(self, trainer: Trainer) -> None:
        if self.monitor == "validation_loss":
            self._check(trainer, trainer.validation_loss)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.monitor == "train_loss":
            self._check(trainer, trainer.history.train_loss[-1])

    def _values(self, history: TrainingHistory) -> list[float]:
        if self.monitor == "train_loss":
            return history.train_loss
        return [loss for _, loss in history.evaluations]

    def _check(self, trainer: Trainer, value: float) -> None:
        if value < self.best - self.min_delta:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            logger.info("early stopping at step %d: %s has not improved on %.4f", trainer.step, self.monitor, self.best)
            trainer.request_stop("early_stopping")


class ModelCheckpoint(Callback):
    """Resumable checkpoints in `fit(checkpoint_dir=...)`: a `step-00000123/` folder every
    `every_n_minutes` minutes of training (5 by default), every `every_n_steps` steps (if set), at
    every epoch end (when `fit` counts epochs, not with num_epoch=None) and when training ends,
    keeping the newest `keep_last` (None keeps all). With `save_best`, `best/` holds the checkpoint
    of the lowest validation loss. With `fit`'s weight average (`WeightEMA`), that loss is the
    average's, and so are a checkpoint's model weights.

    With `restore_best`, the model ends `fit` with `best/`'s weights when a later evaluation was
    worse (overfitting a small text); the last step's checkpoint is still written, so a resume goes on
    from there. `evaluate_start` evaluates the weights a fresh run starts from (step 0), so that
    `best/` may be them: for a run that goes on from a trained model, which new text can only make
    worse. Afterwards `best_step`, `best_loss` and `restored` say what was kept.

    An epoch can take hours on a CPU: the time-based checkpoints bound what a crash or a `kill -9`
    loses. The clock is read on rank 0, which decides for every rank under DDP.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        keep_last: int | None = 3,
        save_best: bool = True,
        every_n_minutes: float | None = DEFAULT_CHECKPOINT_MINUTES,
        clock: Callable[[], float] = time.monotonic,
        restore_best: bool = False,
        evaluate_start: bool = False,
    ) -> None:
        """`clock` gives seconds (`time.monotonic`); tests pass a fake one."""
        if restore_best and not save_best:
            raise ValueError("restore_best=True needs save_best=True")
        for name, value in (("every_n_steps", every_n_steps), ("keep_last", keep_last)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        minutes = every_n_minutes
        if minutes is not None and (
            isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 < minutes < math.inf
        ):
            raise ValueError(f"every_n_minutes must be None or a number > 0, got {minutes!r}")
        self.every_n_steps = every_n_steps
        self.every_n_minutes = every_n_minutes
        self.keep_last = keep_last
        self.save_best = save_best
        self.clock = clock
        self._saved_step = 0
        self._saved_at = 0.0  # clock time of the last checkpoint (or of the start)
        self.restore_best = restore_best
        self.evaluate_start = evaluate_start
        self.best_step: int | None = None  # the step of the lowest validation loss (0: the starting weights)
        self.best_loss = math.inf
        self.restored = False  # the model ended `fit` with `best/`'s weights, not the last step's
        self.best_folder: Path | None = None  # `best/` of the checkpoint folder (once training began)

    def on_train_begin(self, trainer: Trainer) -> None:
        if trainer.checkpoint_dir is None:
            raise ValueError("ModelCheckpoint needs fit(..., checkpoint_dir=...)")
        self._saved_step = trainer.step  # a resumed step is on disk already
        self.best_folder = trainer.checkpoint_dir / checkpoint.BEST_DIR
        self._saved_at = self.clock()
        evaluations = trainer.history.evaluations  # a resume keeps its best
        self.best_step, self.best_loss = min(evaluations, key=lambda e: e[1], default=(None, math.inf))
        self.restored = False
        if self.evaluate_start and trainer.step == 0 and trainer.valid_loader is not None and not evaluations:
            trainer._evaluate()  # step 0 in the history; `on_evaluate` saves the starting weights as `best/`

    def on_batch_end(self, trainer: Trainer) -> None:
        due = bool(self.every_n_steps) and trainer.step % self.every_n_steps == 0
        if self.every_n_minutes is not None:
            late = trainer.is_main and self.clock() - self._saved_at >= 60 * self.every_n_minutes
            due = trainer.main_decides(late) or due  # every rank calls it: one broadcast under DDP
        if due:
            self._save_step(trainer)

    def on_evaluate(self, trainer: Trainer) -> None:
        if self.save_best and trainer.validation_loss < self.best_loss:
            self.best_step, self.best_loss = trainer.step, trainer.validation_loss
            if trainer.is_main:
                trainer.save_checkpoint(self.best_folder)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.by_epochs:
            self._save_step(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        self._save_step(trainer)
        if self.restore_best and self.best_step is not None and self.best_step != trainer.step:
            self._restore_best(trainer)

    def _restore_best(self, trainer: Trainer) -> None:
        """Load `best/` into the model, if it holds the best step of this run's history (a crash may
        have left one of a step the resumed history never reached)."""
        folder = self.best_folder
        try:
            saved = json.loads((folder / checkpoint.TRAINER_STATE_FILE).read_text(encoding="utf-8"))["step"]
        except (OSError, ValueError, KeyError, TypeError):
            saved = None
        if saved != self.best_step:
            logger.warning("%s does not hold step %s: the model keeps its last weights", folder, self.best_step)
            return
        checkpoint.read_weights(trainer.model, folder)
        self.restored = True
        logger.info(
            "validation loss %.4f at step %d, the best was %.4f at step %d: the model holds that checkpoint",
            trainer.validation_loss, trainer.step, self.best_loss, self.best_step,
        )  # fmt: skip

    def _save_step(self, trainer: Trainer) -> None:
        if trainer.step == self._saved_step:
            return
        self._saved_step = trainer.step
        if trainer.is_main:
            trainer.save_checkpoint(trainer.checkpoint_dir / checkpoint.step_dir_name(trainer.step))
            if self.keep_last is not None:
                checkpoint.prune_checkpoints(trainer.checkpoint_dir, self.keep_last)
        self._saved_at = self.clock()  # the interval counts training time, not the time spent saving


class ProgressBar(Callback):
    """A tqdm bar over the optimizer steps showing loss, learning rate and tokens/s (rank 0 only)."""

    def __init__(self) -> None:
        self._bar: tqdm | None = None

    def on_train_begin(self, trainer: Trainer) -> None:
        self._bar = tqdm(
            total=trainer.total_steps,
            initial=trainer.step,
            unit="step",
            dynamic_ncols=True,
            disable=not trainer.is_main,
        )

    def on_batch_end(self, trainer: Trainer) -> None:
        postfix = dict(loss=f"{trainer.loss:.4f}", lr=f"{trainer.lr:.2e}", tokens_s=f"{trainer.tokens_per_second:.0f}")
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update()

    def on_train_end(self, trainer: Trainer) -> None:
        self._bar.close()
