"""`fit`: validation, learning, histories, the schedule, callbacks and every way training stops."""

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from needs import need_gloo
from tiny_training import SHAKESPEARE, StopAt, assert_same_weights, byte_loaders, made_text, tiny_model

from gpt import GPT, checkpoint, training
from gpt.callbacks import Callback, EarlyStopping, ModelCheckpoint, WeightEMA
from gpt.training import CosineSchedule, Trainer, TrainingOptions, evaluate, fit

SMALL_TEXT = made_text(60)  # 24 training batches of 8 x 16 bytes


class Recorder(Callback):
    """Records every hook call as (hook, step)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def on_train_begin(self, trainer: Trainer) -> None:
        self.calls.append(("on_train_begin", trainer.step))

    def on_epoch_begin(self, trainer: Trainer) -> None:
        self.calls.append(("on_epoch_begin", trainer.step))

    def on_batch_end(self, trainer: Trainer) -> None:
        self.calls.append(("on_batch_end", trainer.step))

    def on_evaluate(self, trainer: Trainer) -> None:
        self.calls.append(("on_evaluate", trainer.step))

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.calls.append(("on_epoch_end", trainer.step))

    def on_train_end(self, trainer: Trainer) -> None:
        self.calls.append(("on_train_end", trainer.step))


@pytest.mark.parametrize(
    "args, options, error, message",
    [
        ((None,), {}, ValueError, "train_loader is required"),
        ((), dict(num_epoch=0), ValueError, "num_epoch must be None or an integer >= 1"),
        ((), dict(learning_rate=0), ValueError, "learning_rate must be > 0"),
        ((), dict(learning_rate=-1e-3), ValueError, "learning_rate must be > 0"),
        ((), dict(grad_accum_steps=0), ValueError, "grad_accum_steps must be an integer >= 1"),
        ((), dict(max_steps=0), ValueError, "max_steps must be None or an integer >= 1"),
        ((), dict(warmup_steps=-1), ValueError, "warmup_steps must be None or an integer >= 0"),
        ((), dict(betas=(1.0, 0.9)), ValueError, "betas must be in"),
        ((), dict(precision="fp16"), ValueError, "precision must be one of"),
        ((), dict(optimizer="sgd"), ValueError, "optimizer must be one of"),
        ((), dict(grad_accum_steps=100), ValueError, "fewer than grad_accum_steps"),
        ((), dict(resume=True), ValueError, "resume=True needs a checkpoint_dir"),
        ((), dict(epochs=2), TypeError, "epochs"),
        ((), dict(ema_decay=1.0), ValueError, "ema_decay must be None or 0 .no average. or in .0, 1."),
        ((), dict(ema_decay=-0.5), ValueError, "ema_decay must be None or 0"),
        ((), dict(ema_decay=True), ValueError, "ema_decay must be None or 0"),
        ((), dict(ema_decay="0.99"), ValueError, "ema_decay must be None or 0"),
    ],
)
def test_fit_validates_arguments(args, options, error, message):
    train, _ = byte_loaders(SMALL_TEXT)
    with pytest.raises(error, match=message):
        fit(tiny_model(), *(args or (train,)), progress=False, **options)


def test_fit_lowers_validation_loss_on_shakespeare():
    text = SHAKESPEARE.read_text(encoding="utf-8")[:20_000]
    model = tiny_model()
    train, valid = byte_loaders(text, seq_len=32, batch_size=16)
    initial = evaluate(model, valid, max_batches=8)
    history = model.fit(train, valid, learning_rate=3e-3, max_steps=150, eval_batches=8, progress=False)
    assert history.validation_loss[-1] < initial - 2.0  # about 5.5 -> 2.8 nats per byte
    assert model.training is False


def test_histories_per_step_and_per_epoch(caplog):
    model = tiny_model()
    train, valid = byte_loaders(SMALL_TEXT)
    steps_per_epoch = len(train)
    assert steps_per_epoch == 24
    with caplog.at_level(logging.INFO, logger="gpt.training"):
        history = model.fit(train, valid, num_epoch=2, eval_interval=10, log_every=5, progress=True)

    assert model.history is history and history.stop_reason is None
    steps = 2 * steps_per_epoch
    assert history.steps == list(range(1, steps + 1))
    assert len(history.loss) == len(history.learning_rate) == len(history.tokens) == steps
    assert history.tokens == [8 * 16 * step for step in history.steps] and history.tokens_seen == 8 * 16 * steps
    epochs = [history.loss[:steps_per_epoch], history.loss[steps_per_epoch:]]
    assert history.train_loss == pytest.approx([sum(e) / len(e) for e in epochs])
    assert model.train_loss == history.train_loss
    assert [step for step, _ in history.evaluations] == [10, 20, 24, 30, 40, 48]
    assert model.validation_loss == history.validation_loss == [history.evaluations[2][1], history.evaluations[5][1]]
    assert history.train_loss[1] < history.train_loss[0]
    assert any("step 5/48" in r.message for r in caplog.records)


def test_validation_loss_is_none_without_a_valid_loader():
    model = tiny_model()
    train, _ = byte_loaders(SMALL_TEXT)
    model.fit(train, max_steps=3, progress=False)
    assert model.validation_loss is None and len(model.train_loss) == 1


def test_learning_rate_warms_up_then_follows_the_cosine():
    schedule = CosineSchedule(peak_lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55) and schedule(110) == pytest.approx(0.1)
    decay = [schedule(s) for s in range(10, 111)]
    assert decay == sorted(decay, reverse=True)

    model = tiny_model()
    train, _ = byte_loaders(SMALL_TEXT)
    history = model.fit(train, num_epoch=2, learning_rate=1e-2, progress=False)
    assert history.learning_rate[1] == pytest.approx(1e-2)  # default warmup: 5% of 48 steps = 2
    assert history.learning_rate[-1] == pytest.approx(1e-3, rel=0.05)


def test_adamw_decays_2d_weights_only_and_sees_the_tied_embedding_once():
    model = tiny_model()
    train, _ = byte_loaders(SMALL_TEXT)
    trainer = Trainer(model, train, None, TrainingOptions(weight_decay=0.1, optimizer="adamw"))
    assert trainer.bf16 is False  # precision "auto" is fp32 for a model this narrow
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["betas"] == no_decay["betas"] == (0.9, 0.99)  # AdamW everywhere: the usual beta1
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    params = decay["params"] + no_decay["params"]
    assert len({id(p) for p in params}) == len(params) == len(list(model.parameters()))


def test_resuming_with_another_optimizer_is_a_clear_error(tmp_path):
    train, _ = byte_loaders(SMALL_TEXT)
    tiny_model().fit(train, max_steps=2, checkpoint_dir=tmp_path, optimizer="adamw", progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="resume it with optimizer='adamw'"):
        tiny_model().fit(train, max_steps=4, checkpoint_dir=tmp_path, resume=True, progress=False)
    history = tiny_model().fit(
        train, max_steps=4, checkpoint_dir=tmp_path, resume=True, optimizer="adamw", progress=False
    )
    assert history.steps == [1, 2, 3, 4]


def test_a_checkpoint_of_muon_on_fused_matrices_resumes_only_so(tmp_path):
    """Checkpoints before `muon_qkv_apart` hold one Muon buffer per fused query-key-value matrix
    (their trainer state does not record the option); the default's state has three."""
    train, _ = byte_loaders(SMALL_TEXT)
    tiny_model().fit(train, max_steps=2, checkpoint_dir=tmp_path, muon_qkv_apart=False, progress=False)
    state_file = checkpoint.latest_checkpoint(tmp_path) / checkpoint.TRAINER_STATE_FILE
    state = json.loads(state_file.read_text())
    assert state["optimizer"] == "muon" and state.pop("muon_qkv_apart") is False
    state_file.write_text(json.dumps(state))  # as written before the option existed
    with pytest.raises(checkpoint.CheckpointError, match="resume it with optimizer='muon', muon_qkv_apart=False"):
        tiny_model().fit(train, max_steps=4, checkpoint_dir=tmp_path, resume=True, progress=False)
    history = tiny_model().fit(
        train, max_steps=4, checkpoint_dir=tmp_path, resume=True, muon_qkv_apart=False, progress=False
    )
    assert history.steps == [1, 2, 3, 4]


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = tiny_model()
    train, _ = byte_loaders(SMALL_TEXT)
    trainer = Trainer(model, train, None, TrainingOptions(weight_decay=0.1))  # optimizer="muon" by default
    muon, adamw = trainer.optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    fused = {id(block.attn.c_attn.weight) for block in model.transformer.h}
    matrices = {id(p) for block in model.transformer.h for p in block.parameters() if p.dim() == 2}
    blocks = [b for matrix in trainer.optimizer.fused for b in matrix.blocks]  # each c_attn as q, k, v
    assert {id(p) for group in muon.param_groups for p in group["params"]} == (matrices - fused) | set(map(id, blocks))
    assert {id(matrix.fused) for matrix in trainer.optimizer.fused} == fused and len(blocks) == 3 * len(fused)
    assert muon.param_groups[0]["lr_scale"] == 3.0  # the default: Muon at 3x the schedule's learning rate
    decay, no_decay = adamw.param_groups
    assert decay["betas"] == no_decay["betas"] == (0.8, 0.99)  # beside Muon: beta1 0.8 (ADAMW_BETAS)
    assert {id(p) for p in decay["params"]} == {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert len({id(p) for p in params}) == len(params) == len(list(model.parameters())) + 2 * len(fused)
    history = model.fit(train, max_steps=5, progress=False)
    assert history.loss[-1] < history.loss[0]


@pytest.mark.parametrize("apart", [True, False])
def test_muon_orthogonalises_the_query_key_value_matrix_block_by_block(apart):
    """Each block's fused `c_attn` ([emb, 3 x attn]) takes the update torch's Muon gives the query,
    key and value matrices as three parameters (`muon_qkv_apart`, the default), or as one."""
    model = tiny_model()
    train, _ = byte_loaders(SMALL_TEXT)
    trainer = Trainer(model, train, None, TrainingOptions(warmup_steps=0, muon_qkv_apart=apart, grad_clip=None))
    weight = model.transformer.h[0].attn.c_attn.weight
    start, grad = weight.detach().clone(), torch.randn_like(weight)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    weight.grad = grad.clone()
    muon = trainer.optimizer.optimizers[0]
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e-2 * group.get("lr_scale", 1.0)
    trainer.optimizer.step()

    pieces = [torch.nn.Parameter(p.clone()) for p in (start.chunk(3, dim=1) if apart else [start])]
    for piece, part in zip(pieces, grad.chunk(3, dim=1) if apart else [grad]):
        piece.grad = part.clone()
    settings = {k: muon.param_groups[0][k] for k in ("weight_decay", "momentum", "nesterov", "adjust_lr_fn")}
    reference = torch.optim.Muon(pieces, lr=3e-2, **settings)  # Muon at 3x
    reference.step()
    assert torch.equal(weight.detach(), torch.cat([p.detach() for p in pieces], dim=1))
    trainer.optimizer.zero_grad()
    assert weight.grad is None and all(b.grad is None for m in trainer.optimizer.fused for b in m.blocks)


def test_embedding_lr_scale_and_muon_momentum():
    model = tiny_model()
    train, _ = byte_loaders(SMALL_TEXT)
    options = TrainingOptions(embedding_lr_scale=4.0, muon_momentum=0.8, warmup_steps=0)
    trainer = Trainer(model, train, None, options)
    muon, adamw = trainer.optimizer.optimizers
    assert all(group["momentum"] == 0.8 for group in muon.param_groups)
    decay, no_decay, tables = adamw.param_groups
    assert decay["params"] == [] and tables["lr_scale"] == 4.0 and tables["weight_decay"] == 0.1
    assert {id(p) for p in tables["params"]} == {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert len({id(p) for p in params}) == len(params) == len(list(model.parameters())) + 2 * model.config.num_layers
    with pytest.raises(ValueError, match="embedding_lr_scale must be > 0"):
        TrainingOptions(embedding_lr_scale=0.0)
    with pytest.raises(ValueError, match=r"muon_momentum must be in \[0, 1\)"):
        TrainingOptions(muon_momentum=1.0)


def test_lr_scales_set_the_groups_learning_rates():
    class Rates(Callback):
        def on_batch_end(self, trainer) -> None:
            self.groups = [g["lr"] for g in trainer.optimizer.param_groups]

    rates = Rates()
    train, _ = byte_loaders(SMALL_TEXT)
    tiny_model().fit(train, max_steps=1, learning_rate=1e-3, embedding_lr_scale=4.0, muon_lr_scale=2.0,
                     warmup_steps=0, callbacks=[rates], progress=False)  # fmt: skip
    assert rates.groups[0] == pytest.approx(2e-3)  # Muon's
    assert rates.groups[1:3] == pytest.approx([1e-3, 1e-3]) and rates.groups[3] == pytest.approx(4e-3)
    with pytest.raises(ValueError, match="muon_lr_scale must be > 0"):
        TrainingOptions(muon_lr_scale=-1.0)


def test_gradient_accumulation_matches_one_big_batch():
    models = []
    for batch_size, accum in ((8, 1), (4, 2)):
        model = tiny_model()
        train, _ = byte_loaders(SMALL_TEXT, batch_size=batch_size)
        # AdamW: Muon's bf16 Newton-Schulz would round away the last bits this comparison checks
        model.fit(train, max_steps=5, grad_accum_steps=accum, optimizer="adamw", progress=False)
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-6)  # float sums in another order


def test_callbacks_are_called_in_order():
    recorder = Recorder()
    model = tiny_model()
    train, valid = byte_loaders(SMALL_TEXT)
    n = len(train)
    model.fit(train, valid, num_epoch=2, callbacks=[recorder], progress=False)
    names = [name for name, _ in recorder.calls]
    epoch = ["on_epoch_begin"] + ["on_batch_end"] * n + ["on_evaluate", "on_epoch_end"]
    assert names == ["on_train_begin", *epoch, *epoch, "on_train_end"]
    assert [step for name, step in recorder.calls if name == "on_batch_end"] == list(range(1, 2 * n + 1))


def test_a_callback_stops_training_after_its_step():
    model = tiny_model()
    train, valid = byte_loaders(SMALL_TEXT)
    history = model.fit(train, valid, num_epoch=3, callbacks=[StopAt(5)], progress=False)
    assert len(history.loss) == 5 and history.stop_reason == "test"
    assert len(model.train_loss) == len(model.validation_loss) == 1  # the stopped epoch is recorded
    assert model.train_loss[0] == pytest.approx(sum(history.loss) / 5)


def test_stop_training_set_from_another_thread_stops_within_a_step():
    paused, resume = threading.Event(), threading.Event()

    class Pause(Callback):
        def on_batch_end(self, trainer: Trainer) -> None:
            if trainer.step == 4:
                self.trainer = trainer
                paused.set()
                resume.wait(timeout=10)

    pause = Pause()
    model = tiny_model()
    train, _ = byte_loaders(SMALL_TEXT)
    worker = threading.Thread(target=model.fit, args=(train,), kwargs=dict(callbacks=[pause], progress=False))
    worker.start()
    assert paused.wait(timeout=30)
    pause.trainer.stop_training = True
    resume.set()
    worker.join(timeout=30)
    assert model.history.loss and len(model.history.loss) == 4
    assert model.history.stop_reason == "requested"


class RawWeights(Callback):
    """The raw weights training starts from and those after each step (the model holds them then)."""

    def on_train_begin(self, trainer: Trainer) -> None:
        self.weights = [[p.detach().clone() for p in trainer.model.parameters()]]

    def on_batch_end(self, trainer: Trainer) -> None:
        self.weights.append([p.detach().clone() for p in trainer.model.parameters()])

    def averages(self, decay: float) -> list[list[torch.Tensor]]:
        """The average after each step (index 0: the start), computed here from the raw weights."""
        averages = [self.weights[0]]
        for step, weights in enumerate(self.weights[1:], start=1):
            d = min(decay, (1 + step) / (10 + step))  # follows the weights closely in the first steps
            averages.append([d * a + (1 - d) * w for a, w in zip(averages[-1], weights)])
        return averages


def _holding(weights: list[torch.Tensor]) -> GPT:
    """A tiny model holding `weights`."""
    model = tiny_model()
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights, strict=True):
            p.copy_(w)
    return model


@pytest.mark.parametrize("averaging", [dict(ema_decay=0.3), dict(callbacks=[WeightEMA(0.3)], ema_decay=0.9)])
def test_fit_leaves_the_average_of_the_raw_weights_of_every_step(averaging):
    """`ema_decay`, or a `WeightEMA` among the callbacks (which takes its place)."""
    model, raw = tiny_model(), RawWeights()
    train, _ = byte_loaders(SMALL_TEXT)
    model.fit(train, max_steps=5, progress=False, **{**averaging, "callbacks": [raw, *averaging.get("callbacks", [])]})
    for average, p in zip(raw.averages(0.3)[-1], model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), average)
    assert any(not torch.equal(p, w) for p, w in zip(model.parameters(), raw.weights[-1]))  # not the last


def test_evaluations_measure_the_average_of_the_weights():
    """The validation history (and so `EarlyStopping` and the best checkpoint) sees the weights `fit` leaves."""
    model, raw = tiny_model(), RawWeights()
    train, valid = byte_loaders(SMALL_TEXT)
    history = model.fit(train, valid, max_steps=6, eval_interval=3, ema_decay=0.3, callbacks=[raw], progress=False)
    averages = raw.averages(0.3)
    assert [step for step, _ in history.evaluations] == [3, 6]
    for step, loss in history.evaluations:
        assert loss == pytest.approx(evaluate(_holding(averages[step]), valid), rel=1e-5)
        assert loss != pytest.approx(evaluate(_holding(raw.weights[step]), valid), rel=1e-5)
    assert history.evaluations[-1][1] == pytest.approx(evaluate(model, valid), rel=1e-6)


@pytest.mark.parametrize("off", [None, 0])
def test_ema_decay_none_or_0_trains_and_leaves_the_raw_weights(off):
    model, raw = tiny_model(), RawWeights()
    train, valid = byte_loaders(SMALL_TEXT)
    history = model.fit(train, valid, max_steps=4, ema_decay=off, callbacks=[raw], progress=False)
    assert_same_weights(model, _holding(raw.weights[-1]))
    assert history.evaluations[-1][1] == pytest.approx(evaluate(model, valid), rel=1e-6)
    default = tiny_model()
    default.fit(byte_loaders(SMALL_TEXT)[0], max_steps=4, progress=False)  # the same steps, averaged (0.99)
    assert default.history.loss == history.loss
    assert not all(torch.equal(a, b) for a, b in zip(default.parameters(), model.parameters()))


def test_weight_ema_values_are_checked():
    train, _ = byte_loaders(SMALL_TEXT)
    for decay in (1.0, -0.1, True, "0.99"):
        with pytest.raises(ValueError, match="decay must be in"):
            WeightEMA(decay)
    with pytest.raises(ValueError, match="one weight average at most"):
        fit(tiny_model(), train, callbacks=[WeightEMA(0.9), WeightEMA(0.99)], progress=False)


def test_early_stopping_stops_when_validation_loss_stalls():
    model = tiny_model()
    train, valid = byte_loaders(SMALL_TEXT)
    stopper = EarlyStopping(patience=2, min_delta=10.0)  # no evaluation improves by 10 nats
    history = model.fit(train, valid, num_epoch=5, eval_interval=1, callbacks=[stopper], progress=False)
    assert history.stop_reason == "early_stopping" and len(history.loss) == 3


def test_early_stopping_on_train_loss_and_its_validation():
    model = tiny_model()
    train, valid = byte_loaders(SMALL_TEXT)
    history = model.fit(train, num_epoch=10, callbacks=[EarlyStopping(1, 10.0, monitor="train_loss")], progress=False)
    assert history.stop_reason == "early_stopping" and len(history.train_loss) == 2
    with pytest.raises(ValueError, match="monitor must be"):
        EarlyStopping(monitor="accuracy")
    with pytest.raises(ValueError, match="needs a valid_loader"):
        model.fit(train, callbacks=[EarlyStopping()], progress=False)


def test_max_steps_and_max_time_are_honoured():
    model = tiny_model()
    train, _ = byte_loaders(SMALL_TEXT)
    history = model.fit(train, num_epoch=10, max_steps=30, progress=False)
    assert len(history.loss) == 30 and history.stop_reason == "max_steps"
    assert len(history.train_loss) == 2  # one full epoch of 24 steps, then 6 steps

    history = tiny_model().fit(train, num_epoch=10_000, max_time=0.3, progress=False)
    assert history.stop_reason == "max_time" and 0 < len(history.loss) < 10_000 * len(train)


def test_trained_by_steps_epoch_ends_are_not_milestones(tmp_path):
    train, valid = byte_loaders(made_text(100), train_stride=None)  # 2 steps an epoch
    assert len(train) == 2
    saver = ModelCheckpoint(every_n_steps=4, every_n_minutes=None, keep_last=None, save_best=False)
    history = tiny_model().fit(
        train, valid, num_epoch=None, max_steps=9, eval_interval=3, checkpoint_dir=tmp_path, callbacks=[saver],
        progress=False,
    )  # fmt: skip
    assert [step for step, _ in history.evaluations] == [3, 6, 9]
    at_3, at_6, at_9 = (loss for _, loss in history.evaluations)
    assert len(history.train_loss) == 5  # epochs end at steps 2, 4, 6, 8 and 9
    assert history.validation_loss == [at_3, at_6, at_6, at_9]  # the latest evaluation, once there is one
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000004", "step-00000008", "step-00000009"]

    by_epochs = ModelCheckpoint(every_n_minutes=None, keep_last=None, save_best=False)
    history = tiny_model().fit(
        train, valid, num_epoch=2, checkpoint_dir=tmp_path / "epochs", callbacks=[by_epochs], progress=False
    )
    assert [step for step, _ in history.evaluations] == [2, 4]
    assert sorted(p.name for p in (tmp_path / "epochs").glob("step-*")) == ["step-00000002", "step-00000004"]


def test_each_epoch_trains_on_its_own_shifted_windows():
    train, _ = byte_loaders(made_text(600), train_stride=None)  # make_loaders' default windows
    seen: list[tuple[int, int]] = []

    class FirstWindows(Callback):
        def on_batch_end(self, trainer):
            if trainer.step % len(train) == 1:
                seen.append((trainer.epoch, trainer.train_loader.dataset.offset))

    tiny_model().fit(train, num_epoch=4, callbacks=[FirstWindows()], progress=False)
    expected = []
    for epoch in range(4):
        train.dataset.set_epoch(epoch)
        expected.append((epoch, train.dataset.offset))
    assert seen == expected and len({offset for _, offset in seen}) > 1


def test_without_num_epoch_training_takes_the_epochs_max_steps_needs():
    train, valid = byte_loaders(SMALL_TEXT, train_stride=None)  # windows that do not overlap: short epochs
    assert len(train) == 1
    model = tiny_model()
    history = model.fit(train, valid, num_epoch=None, max_steps=3, progress=False)
    assert history.steps == [1, 2, 3] and len(history.train_loss) == 3  # three epochs of one step
    assert [step for step, _ in history.evaluations] == [3]  # trained by steps: no evaluation at each epoch end
    assert history.validation_loss == [history.evaluations[-1][1]]
    with pytest.raises(ValueError, match="num_epoch=None needs max_steps"):
        model.fit(train, num_epoch=None, progress=False)


def test_keyboard_interrupt_at_step_k_leaves_a_checkpoint_of_step_k(tmp_path):
    model = tiny_model()
    train, valid = byte_loaders(SMALL_TEXT)
    history = model.fit(
        train, valid, num_epoch=2, checkpoint_dir=tmp_path, callbacks=[StopAt(7, KeyboardInterrupt)], progress=False
    )
    assert history.stop_reason == "interrupted" and len(history.loss) == 7
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest.name == "step-00000007"
    assert_same_weights(GPT.load(latest), model)
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler for the test, even when pytest runs with SIGINT ignored (a shell
    starts its background jobs so, and `fit` then rightly drops the signal)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_an_optimizer_step_completes_the_step_then_stops(tmp_path, python_ctrl_c):
    class CtrlCInThirdStep(Callback):
        def on_train_begin(self, trainer: Trainer) -> None:
            step = trainer.optimizer.step

            def interrupted_step(*args, **kwargs):
                if trainer.step == 2:
                    signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C right now
                return step(*args, **kwargs)

            trainer.optimizer.step = interrupted_step

    model = tiny_model()
    train, _ = byte_loaders(SMALL_TEXT)
    history = model.fit(train, checkpoint_dir=tmp_path, callbacks=[CtrlCInThirdStep()], progress=False)
    assert history.stop_reason == "interrupted" and len(history.loss) == 3
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-00000003"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_stops_after_the_step_with_a_checkpoint(tmp_path):
    """What torchrun sends its workers on Ctrl-C (and `kill`, schedulers, containers on shutdown)."""

    class TermInThirdStep(Callback):
        def on_batch_end(self, trainer: Trainer) -> None:
            if trainer.step == 3:
                signal.raise_signal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    model = tiny_model()
    train, _ = byte_loaders(SMALL_TEXT)
    history = model.fit(train, checkpoint_dir=tmp_path, callbacks=[TermInThirdStep()], progress=False)
    assert history.stop_reason == "terminated" and len(history.loss) == 3
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-00000003"
    assert_same_weights(GPT.load(checkpoint.latest_checkpoint(tmp_path)), model)
    assert signal.getsignal(signal.SIGTERM) is before


def test_model_checkpoint_needs_a_checkpoint_dir():
    train, _ = byte_loaders(SMALL_TEXT)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        tiny_model().fit(train, callbacks=[ModelCheckpoint()], progress=False)


def test_bf16_on_cpu_runs_and_lowers_the_loss():
    model = tiny_model()
    train, valid = byte_loaders(SMALL_TEXT)
    initial = evaluate(model, valid)
    model.fit(train, valid, learning_rate=3e-3, precision="bf16", progress=False)
    assert model.validation_loss[-1] < initial - 1.0
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_picks_bf16_on_native_bf16_cpus_for_wide_models(monkeypatch: pytest.MonkeyPatch, native: bool):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    wide = GPT(vocab_size=260, max_seq_len=16, emb_size=training.CPU_BF16_MIN_EMB, num_heads=4, num_layers=1)
    narrow = GPT(vocab_size=260, max_seq_len=16, emb_size=training.CPU_BF16_MIN_EMB // 2, num_heads=4, num_layers=1)
    cpu = torch.device("cpu")
    assert training.bf16_pays(wide, cpu) is native and training.bf16_pays(narrow, cpu) is False
    train, _ = byte_loaders(SMALL_TEXT, seq_len=16)
    assert Trainer(wide, train, None, TrainingOptions()).bf16 is native
    assert Trainer(wide, train, None, TrainingOptions(precision="fp32")).bf16 is False
    assert Trainer(narrow, train, None, TrainingOptions(precision="bf16")).bf16 is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_uses_bf16_autocast_when_supported():
    model = tiny_model().to("cuda")
    train, valid = byte_loaders(SMALL_TEXT)
    initial = evaluate(model, valid)
    history = model.fit(train, valid, learning_rate=3e-3, progress=False)
    assert model.device.type == "cuda" and all(p.dtype == torch.float32 for p in model.parameters())
    assert history.validation_loss[-1] < initial - 1.0 and not math.isnan(history.loss[-1])


class FakeClock:
    """A clock that a callback moves forward by `seconds_per_step` after each optimizer step."""

    def __init__(self, seconds_per_step: float) -> None:
        self.now = 1000.0
        self.seconds_per_step = seconds_per_step

    def __call__(self) -> float:
        return self.now


class Tick(Callback):
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_batch_end(self, trainer: Trainer) -> None:
        self.clock.now += self.clock.seconds_per_step


def test_checkpoints_are_written_every_n_minutes_of_training(tmp_path):
    clock = FakeClock(seconds_per_step=25.0)  # a checkpoint every third step at 1 minute
    saver = ModelCheckpoint(every_n_minutes=1, keep_last=None, save_best=False, clock=clock)
    train, _ = byte_loaders(SMALL_TEXT)
    tiny_model().fit(train, max_steps=10, checkpoint_dir=tmp_path, callbacks=[Tick(clock), saver], progress=False)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "step-00000003",
        "step-00000006",
        "step-00000009",
        "step-00000010",  # the end
    ]


def test_minutes_and_steps_combine_and_the_timer_restarts_at_each_checkpoint(tmp_path):
    clock = FakeClock(seconds_per_step=20.0)
    saver = ModelCheckpoint(every_n_steps=4, every_n_minutes=1.5, keep_last=None, clock=clock)
    train, _ = byte_loaders(SMALL_TEXT)
    tiny_model().fit(train, max_steps=14, checkpoint_dir=tmp_path, callbacks=[Tick(clock), saver], progress=False)
    steps = [int(p.name.split("-")[1]) for p in checkpoint.list_checkpoints(tmp_path)]
    assert steps == [4, 8, 12, 14]  # 90 s take 5 steps, but every 4th step restarts the timer


def test_fit_checkpoints_every_5_minutes_by_default(tmp_path):
    train, _ = byte_loaders(SMALL_TEXT)
    trainer = Trainer(tiny_model(), train, None, TrainingOptions(progress=False), checkpoint_dir=tmp_path)
    (saver,) = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert saver.every_n_minutes == 5 and saver.every_n_steps is None
    assert ModelCheckpoint().every_n_minutes == 5


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(every_n_minutes=0), "every_n_minutes must be None or a number > 0"),
        (dict(every_n_minutes=float("nan")), "every_n_minutes must be None or a number > 0"),
        (dict(every_n_steps=0), "every_n_steps must be None or an integer >= 1"),
        (dict(keep_last=1.5), "keep_last must be None or an integer >= 1"),
    ],
)
def test_model_checkpoint_validates(options, message):
    with pytest.raises(ValueError, match=message):
        ModelCheckpoint(**options)


DDP_WORKER = """
import json, os, sys
import torch
from tiny_training import byte_loaders, tiny_model
from gpt.callbacks import Callback, ModelCheckpoint

rank = int(os.environ["RANK"])
torch.set_num_threads(1)

class Clock:  # rank 0's clock runs 40 s a step, rank 1's stands still: only rank 0's may count
    now = 0.0
    def __call__(self):
        return self.now

class Tick(Callback):
    def on_batch_end(self, trainer):
        clock.now += 40.0 if rank == 0 else 0.0

clock = Clock()
saver = ModelCheckpoint(every_n_minutes=1, keep_last=None, save_best=False, clock=clock)
decided = []
save_step = saver._save_step
def recording(trainer):
    if trainer.step != saver._saved_step:
        decided.append(trainer.step)
    save_step(trainer)
saver._save_step = recording
train, _ = byte_loaders()
tiny_model().fit(train, max_steps=7, checkpoint_dir=sys.argv[1], callbacks=[Tick(), saver], progress=False)
print(json.dumps(decided))
"""


@pytest.mark.slow  # two processes
def test_time_based_checkpoints_are_decided_by_rank_0_on_every_rank(tmp_path):
    need_gloo()
    tests = Path(__file__).resolve().parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    path = os.pathsep.join([str(tests.parent), str(tests)])
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", DDP_WORKER, str(tmp_path)],
            env={**os.environ, **common, "RANK": str(rank), "LOCAL_RANK": str(rank), "PYTHONPATH": path},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    decided = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    assert decided[0] == decided[1] == [2, 4, 6, 7]  # rank 0's clock: 80 s, 80 s, 80 s, then the end
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [f"step-0000000{s}" for s in (2, 4, 6, 7)]
