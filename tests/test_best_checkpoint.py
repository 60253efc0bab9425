"""`ModelCheckpoint(restore_best=True)`: a run whose validation loss rises ends with its best
checkpoint's weights (issue 22, item 9); `evaluate_start` lets that be the weights it started from.

The validation losses are scripted (a callback before the checkpointer sets them), so which step is
best does not depend on how a tiny model happens to train."""

import copy

import pytest
import torch
from tiny_training import assert_same_weights, byte_loaders, tiny_model

from gpt import GPT, checkpoint
from gpt.callbacks import Callback, ModelCheckpoint
from gpt.training import Trainer, fit


class Scripted(Callback):
    """Replaces each evaluation's validation loss with `losses[step]` (placed before the checkpointer)."""

    def __init__(self, losses: dict[int, float]) -> None:
        self.losses = losses

    def on_evaluate(self, trainer: Trainer) -> None:
        trainer.validation_loss = self.losses[trainer.step]


def _fit(
    model: GPT, folder, losses: dict[int, float], steps: int = 8, callbacks=(), ema_decay=0.99, **options
) -> ModelCheckpoint:
    saver = ModelCheckpoint(every_n_steps=4, keep_last=None, restore_best=True, **options)
    train, valid = byte_loaders()
    saver.history = fit(model, train, valid, max_steps=steps, eval_interval=2, eval_batches=1, learning_rate=1e-2,
        callbacks=[*callbacks, Scripted(losses), saver], checkpoint_dir=folder, progress=False, log_every=None,
        ema_decay=ema_decay)  # fmt: skip
    return saver


def test_a_rising_validation_loss_ends_with_the_best_checkpoints_weights(tmp_path):
    model = tiny_model()
    saver = _fit(model, tmp_path, {2: 3.0, 4: 2.0, 6: 2.5, 8: 2.8})
    assert (saver.best_step, saver.best_loss, saver.restored) == (4, 2.0, True)
    best = GPT.load(tmp_path / checkpoint.BEST_DIR)
    last = GPT.load(tmp_path / "step-00000008")  # the last step is still saved: a resume goes on from it
    assert_same_weights(model, best)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), last.state_dict().values()))


def test_a_falling_validation_loss_keeps_the_last_weights(tmp_path):
    model = tiny_model()
    saver = _fit(model, tmp_path, {2: 3.0, 4: 2.0, 6: 1.5, 8: 1.0})
    assert (saver.best_step, saver.restored) == (8, False)
    assert_same_weights(model, GPT.load(tmp_path / "step-00000008"))


def test_evaluate_start_keeps_the_starting_weights_when_training_only_made_them_worse(tmp_path):
    model = tiny_model()
    start = copy.deepcopy(model)
    saver = _fit(model, tmp_path, {0: 1.0, 2: 3.0, 4: 2.0, 6: 2.5, 8: 2.8}, evaluate_start=True)
    assert (saver.best_step, saver.best_loss, saver.restored) == (0, 1.0, True)
    assert saver.history.evaluations[0][0] == 0  # the start is in the history (and so on the loss plot)
    assert_same_weights(model, start)


def test_with_a_weight_average_the_best_checkpoint_and_the_restored_model_hold_the_best_average(tmp_path):
    class RawWeights(Callback):  # the raw weights after each step; the model holds them then
        def __init__(self) -> None:
            self.weights: list[list[torch.Tensor]] = []

        def on_batch_end(self, trainer: Trainer) -> None:
            self.weights.append([p.detach().clone() for p in trainer.model.parameters()])

    model = tiny_model()
    average = [p.detach().clone() for p in model.parameters()]
    raw = RawWeights()
    saver = _fit(model, tmp_path, {2: 3.0, 4: 2.0, 6: 2.5, 8: 2.8}, ema_decay=0.5, callbacks=[raw])
    assert (saver.best_step, saver.restored) == (4, True)
    for step, weights in enumerate(raw.weights[:4], start=1):  # the average after step 4, computed here
        d = min(0.5, (1 + step) / (10 + step))
        average = [d * a + (1 - d) * w for a, w in zip(average, weights)]
    for p, a in zip(model.parameters(), average, strict=True):
        torch.testing.assert_close(p.detach(), a)
    assert_same_weights(model, GPT.load(tmp_path / checkpoint.BEST_DIR))


def test_restore_best_needs_save_best():
    with pytest.raises(ValueError, match="restore_best=True needs save_best=True"):
        ModelCheckpoint(save_best=False, restore_best=True)
