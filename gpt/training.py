"""Training: `fit` runs Muon on the blocks' weight matrices and AdamW on the rest (or AdamW
everywhere; see `gpt.optim`) with warmup + cosine decay, gradient accumulation and clipping,
periodic evaluation, callbacks and resumable checkpoints; bf16 autocast where it pays
(`gpt.precision`) and DistributedDataParallel under `torchrun` (`gpt.distributed`), and an
exponential moving average of the weights (`gpt.WeightEMA`), which is what evaluations measure,
checkpoints hold as the model and the model holds when `fit` returns.

One `Trainer` runs one `fit` call and is what callbacks receive. Training stops cleanly, after the
last completed optimizer step, when `max_steps` or `max_time` is reached, when `stop_training` is
set (by a callback or by another thread), or on Ctrl-C; a checkpoint is written if there is a
checkpoint folder, and `fit` returns normally with the reason in `stop_reason`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from gpt import checkpoint
from gpt.callbacks import DEFAULT_CHECKPOINT_MINUTES, Callback, ModelCheckpoint, ProgressBar, WeightEMA
from gpt.checkpoint import CheckpointError, latest_checkpoint
from gpt.distributed import data_parallel, join_process_group, shard, training_device
from gpt.modes import evaluating
from gpt.optim import OPTIMIZERS, make_optimizer, muon_available

# The bf16 policy lives in gpt.precision; these names stay importable from here.
from gpt.precision import CPU_BF16_MIN_EMB as CPU_BF16_MIN_EMB
from gpt.precision import PRECISIONS, autocast, use_bf16
from gpt.precision import bf16_pays as bf16_pays
from gpt.signals import deferred_interrupt, on_sigterm

if TYPE_CHECKING:
    from gpt.model import GPT

logger = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]
"""`(inputs, targets)`, int64 `[batch, seq]`, targets shifted by one token."""


@dataclass
class TrainingOptions:
    """Every setting of `fit` besides the model, loaders, callbacks and checkpoint folder."""

    num_epoch: int | None = 1  # passes over the training data; None: as many as max_steps needs
    # Peak learning rate, reached at the end of the warmup: 3e-3 beat the first API's 1e-3 in nanoGPT's
    # Shakespeare budget (bench/quality.py; docs/decisions.md).
    learning_rate: float = 3e-3
    # "muon": Muon for the blocks' weight matrices, AdamW for the rest; "adamw": AdamW everywhere.
    # Muon reaches a lower loss in that budget (gpt/optim.py; docs/decisions.md).
    optimizer: str = "muon"
    weight_decay: float = 0.1  # decoupled weight decay, on 2-D weights only
    # AdamW's moment decay rates; None: (0.8, 0.99) beside Muon, 0.005 nats/byte lower than 0.9 in
    # nanoGPT's budget, and (0.9, 0.99) with optimizer="adamw" (gpt.optim.ADAMW_BETAS; docs/decisions.md).
    betas: tuple[float, float] | None = None
    warmup_steps: int | None = None  # linear warmup; None -> min(100, 5% of the optimizer steps)
    min_lr_ratio: float = 0.1  # the cosine decay ends at learning_rate * min_lr_ratio
    muon_momentum: float = 0.95  # Muon's (Nesterov) momentum
    # Muon's learning rate is learning_rate * muon_lr_scale: 3x reached about 0.015 nats/byte lower in
    # nanoGPT's budget than one learning rate for all (bench/ablate.py; docs/decisions.md).
    muon_lr_scale: float = 3.0
    # Muon orthogonalises each block's query, key and value weights apart, not as GPT-2's one fused
    # matrix: 0.007 nats/byte lower in that budget (gpt/optim.py; docs/decisions.md, sixth round).
    muon_qkv_apart: bool = True
    embedding_lr_scale: float = 1.0  # the embeddings' (and an untied head's) learning rate is learning_rate * this
    grad_clip: float | None = 1.0  # largest global gradient norm; None: no clipping
    # Decay per optimizer step of the weight average (`WeightEMA`) that evaluations measure, checkpoints
    # hold as the model and `fit` leaves in it; None or 0: no average, the last weights. 0.99 reached
    # 0.008 nats/byte lower in nanoGPT's budget on three seeds (bench/ablate.py; docs/decisions.md).
    ema_decay: float | None = 0.99
    grad_accum_steps: int = 1  # batches per optimizer step
    max_steps: int | None = None  # stop after this many optimizer steps (resumed ones included)
    max_time: float | None = None  # stop after this many seconds of this call
    eval_interval: int | None = None  # evaluate every N steps, besides at every epoch end
    eval_batches: int | None = None  # validation batches per evaluation; None: all
    # "fp32", "bf16" (autocast; the weights stay fp32) or "auto": bf16 where it pays (`bf16_pays`), else fp32
    precision: str = "auto"
    resume: bool = False  # continue from the newest checkpoint in checkpoint_dir (fresh start if none)
    progress: bool = True  # tqdm progress bar (rank 0)
    log_every: int | None = 100  # log loss, learning rate and tokens/s every N steps; None: never

    def __post_init__(self) -> None:
        _check_int("num_epoch", self.num_epoch, minimum=1, optional=True)
        _check(self.num_epoch is not None or self.max_steps is not None, "num_epoch=None needs max_steps")
        _check_int("grad_accum_steps", self.grad_accum_steps, minimum=1)
        _check_int("warmup_steps", self.warmup_steps, minimum=0, optional=True)
        for name in ("max_steps", "eval_interval", "eval_batches", "log_every"):
            _check_int(name, getattr(self, name), minimum=1, optional=True)
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(
            self.betas is None or (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)),
            f"betas must be in [0, 1) (two numbers), got {self.betas}",
        )
        _check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(0 <= self.muon_momentum < 1, f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        _check(self.embedding_lr_scale > 0, f"embedding_lr_scale must be > 0, got {self.embedding_lr_scale}")
        _check(self.muon_lr_scale > 0, f"muon_lr_scale must be > 0, got {self.muon_lr_scale}")
        _check(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be None or > 0, got {self.grad_clip}")
        decay = self.ema_decay
        _check(
            decay is None or (not isinstance(decay, bool) and isinstance(decay, (int, float)) and 0 <= decay < 1),
            f"ema_decay must be None or 0 (no average) or in (0, 1), got {decay!r}",
        )
        _check(self.max_time is None or self.max_time > 0, f"max_time must be None or > 0 seconds, got {self.max_time}")
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(
            self.optimizer != "muon" or muon_available(),
            f"optimizer 'muon' needs torch >= 2.9 (this is {torch.__version__}): upgrade torch or pass optimizer='adamw'",
        )


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warmup to `peak_lr`, then cosine decay to `peak_lr * min_lr_ratio` at `total_steps`."""

    peak_lr: float
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float

    def __call__(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        min_lr = self.peak_lr * self.min_lr_ratio
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.peak_lr - min_lr)


@dataclass
class TrainingHistory:
    """What `fit` recorded, per optimizer step, per evaluation and per epoch (for plots and resumes)."""

    steps: list[int] = field(default_factory=list)  # optimizer step numbers (1-based), the x axis of the next three
    loss: list[float] = field(default_factory=list)  # train loss of each step (mean over ranks)
    learning_rate: list[float] = field(default_factory=list)  # learning rate of each step
    tokens: list[int] = field(default_factory=list)  # tokens seen after each step, all ranks together
    evaluations: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    train_loss: list[float] = field(default_factory=list)  # mean train loss of each epoch
    # validation loss at each epoch end: its evaluation (trained by steps: the latest one, once there is one)
    validation_loss: list[float] = field(default_factory=list)
    stop_reason: str | None = None  # why training stopped early; None when it ran every epoch

    @property
    def tokens_seen(self) -> int:
        return self.tokens[-1] if self.tokens else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingHistory:
        return cls(**{**values, "evaluations": [(int(step), float(loss)) for step, loss in values["evaluations"]]})


def fit(
    model: GPT,
    train_loader: DataLoader,
    valid_loader: Iterable[Batch] | None = None,
    num_epoch: int | None = 1,
    learning_rate: float = 3e-3,
    callbacks: Sequence[Callback] | None = None,
    checkpoint_dir: str | Path | None = None,
    **options: Any,
) -> TrainingHistory:
    """Train `model` on its own device; every keyword option is a field of `TrainingOptions`.

    A train dataset with a `set_epoch(epoch)` method (`ShiftingWindows`, as `make_loaders` gives)
    is told each epoch before the epoch's first batch.

    Returns the history (`GPT.fit` also keeps it on the model, with the per-epoch means in
    `model.train_loss` and `model.validation_loss`). With `checkpoint_dir`, a `ModelCheckpoint` is
    added unless one is given (a checkpoint every 5 minutes of training, at every epoch end when
    `num_epoch` is given, and at the end), and `resume=True` continues from its newest checkpoint. Under `torchrun` it trains with DDP.

    By default (`ema_decay=0.99`) training keeps an average of the weights (`WeightEMA`; a `WeightEMA`
    among `callbacks` takes its place): every evaluation measures the average (the validation history,
    `EarlyStopping`, the best checkpoint), a checkpoint's `model.safetensors` holds it (its
    `training_weights.safetensors` the raw weights, so that a resume restores both and trains exactly
    as one run), and the model ends `fit` holding it, or the best checkpoint's with
    `ModelCheckpoint(restore_best=True)`. With `ema_decay=None` (or 0) it ends with the last weights.
    """
    if train_loader is None:
        raise ValueError("train_loader is required")
    settings = TrainingOptions(num_epoch=num_epoch, learning_rate=learning_rate, **options)
    if settings.resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    return Trainer(model, train_loader, valid_loader, settings, callbacks, checkpoint_dir).run()


@torch.no_grad()
def evaluate(model: GPT, loader: Iterable[Batch], max_batches: int | None = None, precision: str = "fp32") -> float:
    """Mean cross-entropy per token of `model` over the first `max_batches` batches of `loader`.

    Runs in eval mode and leaves the model's mode and the random number generators as they were.
    """
    device = model.device
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    rng_devices = [device] if device.type == "cuda" else []
    bf16 = use_bf16(precision, device, model)
    with evaluating(model), torch.random.fork_rng(devices=rng_devices), autocast(device, bf16):
        for inputs, targets in islice(loader, max_batches):
            inputs, targets = inputs.to(device), targets.to(device)
            total += _lm_loss(model(inputs), targets, reduction="sum")
            count += targets.numel()
    if count == 0:
        raise ValueError("the validation loader yielded no batches")
    return total.item() / count


class Trainer:
    """One `fit` call; callbacks receive it.

    Read: `model`, `options`, `step` (optimizer steps done), `epoch` (0-based), `loss` (of the last
    step), `lr`, `tokens_per_second`, `validation_loss` (of the last evaluation), `history`,
    `total_steps`, `num_epoch`, `by_epochs` (`fit` was given num_epoch, not None: epoch ends are
    milestones), `checkpoint_dir`, `valid_loader`, `is_main` (rank 0), `world_size`, `ema` (the
    `WeightEMA` it keeps, or None).
    Write: `stop_training = True` from any thread (checked before every optimizer step), or
    `request_stop(reason)`; `stop_reason` then says why.
    Under DDP, `main_decides(flag)` makes a decision taken on rank 0 everyone's.
    """

    def __init__(
        self,
        model: GPT,
        train_loader: DataLoader,
        valid_loader: Iterable[Batch] | None,
        options: TrainingOptions,
        callbacks: Sequence[Callback] | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> None:
        self.model = model
        self.options = options
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.device = training_device(model.device)
        self.bf16 = use_bf16(options.precision, self.device, model)  # autocast; the weights stay fp32
        self.dist = join_process_group(self.device)
        self.is_main = self.dist is None or self.dist.rank == 0
        self.world_size = 1 if self.dist is None else self.dist.world_size
        model.to(self.device)
        self.train_loader = train_loader if self.dist is None else shard(train_loader, self.dist)
        self.valid_loader = valid_loader
        steps_per_epoch = _steps_per_epoch(self.train_loader, options.grad_accum_steps)
        self.batches_per_epoch = steps_per_epoch * options.grad_accum_steps  # a last incomplete step is skipped
        self.by_epochs = options.num_epoch is not None  # else by steps: epochs end unmarked
        self.num_epoch = options.num_epoch or math.ceil(options.max_steps / steps_per_epoch)
        self.total_steps = self.num_epoch * steps_per_epoch
        if options.max_steps is not None:
            self.total_steps = min(self.total_steps, options.max_steps)
        warmup = min(100, self.total_steps // 20) if options.warmup_steps is None else options.warmup_steps
        self.schedule = CosineSchedule(options.learning_rate, warmup, self.total_steps, options.min_lr_ratio)
        self.optimizer = make_optimizer(
            model,
            options.optimizer,
            options.learning_rate,
            options.weight_decay,
            options.betas,
            self.device,
            muon_momentum=options.muon_momentum,
            embedding_lr_scale=options.embedding_lr_scale,
            muon_lr_scale=options.muon_lr_scale,
            qkv_apart=options.muon_qkv_apart,
        )
        self.module: torch.nn.Module = model  # what the forward pass runs: the model, or its DDP wrapper
        if self.dist is not None:
            self.module = data_parallel(model, self.device)
        self.callbacks = _with_defaults(list(callbacks or []), options, self.checkpoint_dir, self.is_main)
        self.ema = _weight_average(self.callbacks, options.ema_decay)  # None: no average
        self._final_raw_weights: list[Tensor] | None = None  # once `fit` has put the average in the model

        self.step = 0
        self.epoch = 0
        self.batch = 0  # batches of the current epoch consumed by completed steps
        self.loss = math.nan
        self.lr = self.schedule(0)
        self.tokens_per_second = 0.0
        self.validation_loss: float | None = None
        self.history = TrainingHistory()
        self.stop_training = False
        self.stop_reason: str | None = None
        self._epoch_loss = [0.0, 0]  # sum and count of this epoch's step losses
        self._epoch_rng: dict[str, Tensor] = {}  # RNG states when this epoch's loader iterator was made
        self._resume_rng: dict[str, Tensor] | None = None  # RNG states to restore once a resumed epoch is skipped
        self._last_eval_step = -1
        self._started = time.monotonic()

    def run(self) -> TrainingHistory:
        """Train until every epoch has run or training stops; see `fit`."""
        try:
            with on_sigterm(self._terminate):
                if self.ema is not None:
                    self.ema.start(self.model)  # a resume restarts it from the checkpoint
                if self.options.resume:
                    self._resume()
                elif self.checkpoint_dir is not None and latest_checkpoint(self.checkpoint_dir) is not None:
                    raise ValueError(
                        f"{self.checkpoint_dir} already holds checkpoints of another run: "
                        "pass resume=True to continue it, or use another checkpoint_dir"
                    )
                if self.is_main:
                    precision = "bf16" if self.bf16 else "fp32"
                    message = "training to step %d on %s (%s, world size %d)"
                    logger.info(message, self.total_steps, self.device, precision, self.world_size)
                self._started = time.monotonic()
                self.model.train()
                self._call("on_train_begin")
                while self.epoch < self.num_epoch and not self._should_stop():
                    self._run_epoch()
                    self._end_epoch()
                    if self.batch >= self.batches_per_epoch:
                        self.epoch, self.batch = self.epoch + 1, 0
                return self._finish()
        finally:
            if self.dist is not None:
                self.dist.leave()

    def request_stop(self, reason: str) -> None:
        """Stop after the current step; the first reason given is kept."""
        self.stop_training = True
        self.stop_reason = self.stop_reason or reason

    def main_decides(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank: for decisions that must agree, such as one taken on a
        clock. Every rank must call it at the same point (one broadcast under DDP)."""
        return flag if self.dist is None else self.dist.main_decides(flag, self.device)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write a resumable checkpoint of the current step into folder `path` (atomically)."""
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "epoch_loss": self._epoch_loss,
            "world_size": self.world_size,
            **_optimizer_layout(self.options.optimizer, self.options.muon_qkv_apart),
            "schedule": asdict(self.schedule),
            "history": self.history.to_dict(),
        }
        rng = {**_prefixed("now.", self._capture_rng()), **_prefixed("epoch_start.", self._epoch_rng)}
        with self._averaged_weights() as raw:
            training_weights = None if raw is None else dict(zip(self._parameter_names(), raw, strict=True))
            path = checkpoint.save_training_checkpoint(path, self.model, self.optimizer, state, rng, training_weights)
        logger.info("saved checkpoint %s", path)
        return path

    def _run_epoch(self) -> None:
        batches = self._epoch_batches()
        if self.batch == 0:
            self._epoch_loss = [0.0, 0]
        self._call("on_epoch_begin")
        try:
            while self.batch < self.batches_per_epoch and not self._should_stop():
                self._train_step(batches)
                self._after_step()
        except KeyboardInterrupt:
            logger.warning("interrupted: stopping after step %d", self.step)
            self.request_stop("interrupted")

    def _epoch_batches(self) -> Iterator[Batch]:
        """This epoch's batches, after the `self.batch` ones a resumed checkpoint has trained on."""
        if self._resume_rng is None:
            self._epoch_rng = self._capture_rng()  # a resume has restored this epoch's start states instead
        if isinstance(self.train_loader.sampler, DistributedSampler):
            self.train_loader.sampler.set_epoch(self.epoch)
        set_epoch = getattr(self.train_loader.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)  # `ShiftingWindows`: this epoch's windows
        batches = iter(self.train_loader)
        for _ in range(self.batch):
            next(batches)
        if self._resume_rng is not None and self.batch:
            self._restore_rng(self._resume_rng)
        self._resume_rng = None
        return batches

    def _train_step(self, batches: Iterator[Batch]) -> None:
        """One optimizer step over `grad_accum_steps` batches."""
        started = time.perf_counter()
        accum = self.options.grad_accum_steps
        loss_sum, tokens = torch.zeros((), device=self.device), 0
        for i in range(accum):
            inputs, targets = (t.to(self.device, non_blocking=True) for t in next(batches))
            with self._gradient_sync(i == accum - 1):
                with autocast(self.device, self.bf16):
                    loss = _lm_loss(self.module(inputs), targets)
                (loss / accum).backward()
            loss_sum += loss.detach()
            tokens += targets.numel()
        if self.options.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss_value = self._mean_over_ranks(loss_sum / accum)
        with deferred_interrupt():  # never leave a step half applied
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self._record_step(loss_value, lr, tokens * self.world_size, time.perf_counter() - started)
            if self.ema is not None:
                self.ema.update(self.model, self.step)

    def _record_step(self, loss: float, lr: float, tokens: int, seconds: float) -> None:
        self.step += 1
        self.batch += self.options.grad_accum_steps
        self.loss, self.lr = loss, lr
        self.tokens_per_second = tokens / max(seconds, 1e-9)
        self._epoch_loss = [self._epoch_loss[0] + loss, self._epoch_loss[1] + 1]
        history = self.history
        history.steps.append(self.step)
        history.loss.append(loss)
        history.learning_rate.append(lr)
        history.tokens.append(history.tokens_seen + tokens)

    def _after_step(self) -> None:
        every = self.options.log_every
        if self.is_main and every and self.step % every == 0:
            logger.info(
                "step %d/%d | loss %.4f | lr %.2e | %.0f tokens/s",
                self.step,
                self.total_steps,
                self.loss,
                self.lr,
                self.tokens_per_second,
            )
        interval = self.options.eval_interval
        if self.valid_loader is not None and interval and self.step % interval == 0:
            self._evaluate()
        self._call("on_batch_end")

    def _evaluate(self) -> None:
        options = self.options
        with self._averaged_weights():
            self.validation_loss = evaluate(self.model, self.valid_loader, options.eval_batches, options.precision)
        self._last_eval_step = self.step
        self.history.evaluations.append((self.step, self.validation_loss))
        if self.is_main:
            logger.info("step %d | validation loss %.4f", self.step, self.validation_loss)
        self._call("on_evaluate")

    def _end_epoch(self) -> None:
        """Record the epoch's means (a stopped epoch too, if it made a step) and call `on_epoch_end`.

        Each epoch ends with an evaluation when `fit` counts epochs; trained by steps (num_epoch=None)
        only the last one does: its epochs are the loader's passes, not milestones, and may be short."""
        total, count = self._epoch_loss
        if count == 0:
            return
        ending = self.step >= self.total_steps or self.stop_training
        if self.valid_loader is not None and self._last_eval_step != self.step and (self.by_epochs or ending):
            self._evaluate()
        self.history.train_loss.append(total / count)
        if self.valid_loader is not None and self.validation_loss is not None:
            self.history.validation_loss.append(self.validation_loss)
        if self.is_main:
            logger.info("epoch %d | train loss %.4f", self.epoch + 1, total / count)
        self._call("on_epoch_end")

    def _should_stop(self) -> bool:
        """Check the limits and the stop flag; under DDP every rank gets the same answer."""
        if self.options.max_steps is not None and self.step >= self.options.max_steps:
            self.request_stop("max_steps")
        if self.options.max_time is not None and time.monotonic() - self._started >= self.options.max_time:
            self.request_stop("max_time")
        if self.dist is not None and self.dist.any(self.stop_training, self.device):
            self.request_stop("stopped on another rank")
        return self.stop_training

    def _terminate(self) -> None:
        """SIGTERM: stop after the current step, with its final checkpoint."""
        logger.warning("SIGTERM: stopping after step %d", self.step + 1)
        self.request_stop("terminated")

    def _finish(self) -> TrainingHistory:
        self.optimizer.zero_grad(set_to_none=True)  # an interrupted step may have left gradients
        self.model.eval()
        if self.stop_training:
            self.stop_reason = self.stop_reason or "requested"
            logger.info("training stopped at step %d: %s", self.step, self.stop_reason)
        self.history.stop_reason = self.stop_reason
        if self.ema is not None:
            self._final_raw_weights = self.ema.copy_to(self.model)
        self._call("on_train_end")
        if self.dist is not None:
            self.dist.barrier()  # rank 0's last checkpoint is on disk when fit returns on any rank
        return self.history

    def _resume(self) -> None:
        folder = latest_checkpoint(self.checkpoint_dir)
        if folder is None:
            logger.info("no checkpoint in %s: starting from scratch", self.checkpoint_dir)
            return
        if checkpoint.read_config(folder) != self.model.config:
            raise CheckpointError(f"{folder / checkpoint.CONFIG_FILE}: does not match the model being trained")
        saved = _saved_optimizer_layout(folder)
        if saved not in (None, _optimizer_layout(self.options.optimizer, self.options.muon_qkv_apart)):
            settings = ", ".join(f"{name}={value!r}" for name, value in saved.items())
            file = folder / checkpoint.TRAINER_STATE_FILE
            raise CheckpointError(f"{file}: trained with {settings}; resume it with {settings}")
        checkpoint.read_weights(self.model, folder)  # the average, if the run kept one
        if self.ema is not None:
            self.ema.start(self.model)
        if not checkpoint.read_training_weights(self.model, folder) and self.ema is not None:
            logger.info("%s holds no weight average: it restarts from the checkpoint's weights", folder)
        state, rng = checkpoint.read_training_state(folder, self.optimizer)
        with _reading(folder / checkpoint.TRAINER_STATE_FILE):
            epoch_finished = self._load_state(state)
        with _reading(folder / checkpoint.RNG_FILE):
            self._resume_rng = _unprefixed("now.", rng)
            self._epoch_rng = self._resume_rng if epoch_finished else _unprefixed("epoch_start.", rng)
            for states in (self._resume_rng, self._epoch_rng):  # the last is where the next epoch starts
                self._restore_rng(states)
        logger.info("resumed from %s (epoch %d, step %d)", folder, self.epoch + 1, self.step)

    def _load_state(self, state: dict[str, Any]) -> bool:
        """Restore the progress and history; True when the checkpoint was saved at the end of an epoch."""
        self.step, self.epoch, self.batch = int(state["step"]), int(state["epoch"]), int(state["batch"])
        self._epoch_loss = [float(state["epoch_loss"][0]), int(state["epoch_loss"][1])]
        self.history = TrainingHistory.from_dict(state["history"])
        self.history.stop_reason = None
        epoch_finished = self.batch >= self.batches_per_epoch
        if epoch_finished:
            self.epoch, self.batch = self.epoch + 1, 0
        del self.history.train_loss[self.epoch :]  # a stopped epoch's means are recorded again at its end
        del self.history.validation_loss[self.epoch :]
        if self.history.loss:
            self.loss, self.lr = self.history.loss[-1], self.history.learning_rate[-1]
        if self.history.evaluations:
            self._last_eval_step, self.validation_loss = self.history.evaluations[-1]
        return epoch_finished

    def _capture_rng(self) -> dict[str, Tensor]:
        states = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.train_loader.generator is not None:
            states["loader"] = self.train_loader.generator.get_state()
        return states

    def _restore_rng(self, states: dict[str, Tensor]) -> None:
        """Inverse of `_capture_rng`; a CUDA state is skipped on the CPU (and missing from a CPU run)."""
        torch.set_rng_state(states["torch"])
        if "cuda" in states and self.device.type == "cuda":
            torch.cuda.set_rng_state(states["cuda"], self.device)
        if "loader" in states and self.train_loader.generator is not None:
            self.train_loader.generator.set_state(states["loader"])

    @contextmanager
    def _averaged_weights(self) -> Iterator[list[Tensor] | None]:
        """The model holds the weight average inside the block (and its raw weights again after it,
        until `fit` ends); yields the raw weights, or None when training keeps no average."""
        if self.ema is None:
            yield None
        elif self._final_raw_weights is not None:
            yield self._final_raw_weights
        else:
            with self.ema.applied(self.model) as raw:
                yield raw

    def _parameter_names(self) -> list[str]:
        return [name for name, _ in self.model.named_parameters()]

    def _gradient_sync(self, sync: bool) -> AbstractContextManager:
        """DDP all-reduces gradients on the last batch of an accumulated step only."""
        return nullcontext() if sync or self.dist is None else self.module.no_sync()

    def _mean_over_ranks(self, value: Tensor) -> float:
        return value.item() if self.dist is None else self.dist.mean(value)

    def _call(self, hook: str) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self)


def _steps_per_epoch(loader: DataLoader, grad_accum_steps: int) -> int:
    steps = len(loader) // grad_accum_steps
    if steps == 0:
        raise ValueError(f"train_loader has {len(loader)} batches, fewer than grad_accum_steps = {grad_accum_steps}")
    return steps


def _with_defaults(
    callbacks: list[Callback], options: TrainingOptions, checkpoint_dir: Path | None, is_main: bool
) -> list[Callback]:
    """The user's callbacks, plus a `ModelCheckpoint` (with a checkpoint folder) and a `ProgressBar`."""
    if checkpoint_dir is not None and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        callbacks.append(ModelCheckpoint(every_n_minutes=DEFAULT_CHECKPOINT_MINUTES))
    if options.progress and is_main and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(ProgressBar())
    return callbacks


def _weight_average(callbacks: list[Callback], ema_decay: float | None) -> WeightEMA | None:
    """The `WeightEMA` among `callbacks` (taken out of them: the trainer drives it), else one of
    `ema_decay` (None when it is None or 0)."""
    given = [c for c in callbacks if isinstance(c, WeightEMA)]
    if len(given) > 1:
        raise ValueError(f"callbacks hold {len(given)} WeightEMA: training keeps one weight average at most")
    if given:
        callbacks.remove(given[0])
        return given[0]
    return WeightEMA(ema_decay) if ema_decay else None


def _lm_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)


def _optimizer_layout(optimizer: str, muon_qkv_apart: bool) -> dict[str, Any]:
    """The options that shape the optimizer state a checkpoint saves (and a resume must repeat)."""
    return {"optimizer": optimizer, **({"muon_qkv_apart": muon_qkv_apart} if optimizer == "muon" else {})}


def _saved_optimizer_layout(folder: Path) -> dict[str, Any] | None:
    """`_optimizer_layout` of a checkpoint, as it was before each option was recorded ("adamw", then
    Muon on fused query-key-value matrices); None if unreadable."""
    try:
        state = json.loads((folder / checkpoint.TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        return _optimizer_layout(state.get("optimizer", "adamw"), state.get("muon_qkv_apart", False))
    except (OSError, ValueError, AttributeError):
        return None  # read_training_state reports what is wrong with the file


@contextmanager
def _reading(file: Path) -> Iterator[None]:
    """Turn a malformed value read from `file` into a `CheckpointError` naming it."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"{file}: unexpected content ({err!r})") from err


def _prefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + name: tensor for name, tensor in tensors.items()}


def _unprefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name.removeprefix(prefix): tensor for name, tensor in tensors.items() if name.startswith(prefix)}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {'None or ' if optional else ''}an integer >= {minimum}, got {value!r}")
