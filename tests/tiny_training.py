"""Tiny models and byte-level loaders shared by the training tests, and the command line the session's
tiny model is trained with (conftest.py's `tiny_checkpoint`).

Run as a script under `torch.distributed.run`, it is the worker of `test_distributed.py`: it trains a
few steps with DDP and writes each rank's weights and history, and who saved checkpoints, to a folder.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from gpt import GPT, checkpoint, make_loaders
from gpt.callbacks import Callback
from gpt.training import Trainer

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data/shakespeare-excerpt.txt"  # shipped with the repository
TINY_CONTEXT = 48  # the session's tiny model (conftest.py): BPE vocabulary 320, 2 layers of width 32
TINY_SHAPE = ["--vocab-size", "320", "--context", str(TINY_CONTEXT), "--emb", "32", "--heads", "4", "--layers", "2"]
_WORDS = "the cat sat on a mat and the dog ran to the sun while birds sang".split()


def run_module(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m module args` in the repository, on one thread; asserts success unless `check` is False."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def made_text(words: int = 400, seed: int = 0) -> str:
    """Random sentences over a small vocabulary: learnable, and cheap to train on."""
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(words)) + "."


def tiny_model(dropout: float = 0.0, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(vocab_size=256, max_seq_len=32, emb_size=32, num_heads=4, num_layers=2, dropout=dropout)


def byte_loaders(
    text: str | None = None, seq_len: int = 16, batch_size: int = 8, seed: int = 0, train_stride: int | None = 1
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders over the UTF-8 bytes of `text` (vocabulary 256). Train windows
    start at every position by default, so that an epoch is long: the training tests count steps
    within one; `train_stride=None` is `make_loaders`' default (windows that do not overlap)."""
    ids = list((text or made_text()).encode())
    return make_loaders(ids, seq_len, batch_size, valid_fraction=0.1, seed=seed, train_stride=train_stride)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


class StopAt(Callback):
    """Stops training (or raises `error`) after optimizer step `step`."""

    def __init__(self, step: int, error: type[BaseException] | None = None) -> None:
        self.step = step
        self.error = error

    def on_batch_end(self, trainer: Trainer) -> None:
        if trainer.step == self.step:
            if self.error:
                raise self.error
            trainer.request_stop("test")


class RecordShard(Callback):
    """Records the dataset indices of this rank's training shard."""

    def on_train_begin(self, trainer: Trainer) -> None:
        self.indices = list(trainer.train_loader.sampler)


def _ddp_worker(out: Path) -> None:
    """Train 6 steps under torchrun; record this rank's weights, history, data shard and checkpoint saves."""
    torch.set_num_threads(1)
    saves = []
    save_training_checkpoint = checkpoint.save_training_checkpoint

    def counting_save(path, *args, **kwargs):
        saves.append(str(path))
        return save_training_checkpoint(path, *args, **kwargs)

    checkpoint.save_training_checkpoint = counting_save
    model = tiny_model()
    train, valid = byte_loaders()
    shard = RecordShard()
    history = model.fit(train, valid, max_steps=6, checkpoint_dir=out / "ckpt", callbacks=[shard], progress=False)
    rank = int(os.environ["RANK"])
    assert not dist.is_initialized(), "fit should tear down the process group it created"
    model.save(out / f"rank{rank}")
    record = {"history": history.to_dict(), "train_loss": model.train_loss, "saves": saves, "shard": shard.indices}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    _ddp_worker(Path(sys.argv[1]))
