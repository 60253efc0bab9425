"""`estimate_training_memory`: each part against what torch really keeps, and the total against the
peak memory growth of a real `fit` in a fresh process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from needs import need_linux

from gpt import GPT, GPTConfig, MemoryEstimate, count_parameters, estimate_training_memory
from gpt.memory import LOWER_TO_SHRINK, format_bytes
from gpt.training import _lm_loss

REPO = Path(__file__).resolve().parents[1]
SMALL = GPTConfig(vocab_size=256, max_seq_len=64, emb_size=32, num_heads=4, num_layers=2, dropout=0.0)


def config(**overrides) -> GPTConfig:
    return GPTConfig(**{**SMALL.to_dict(), **overrides})


def test_parts_are_non_negative_integers_and_total_is_their_sum():
    for precision in ("fp32", "bf16", "auto"):
        for optimizer in ("muon", "adamw"):
            estimate = estimate_training_memory(config(), 8, optimizer=optimizer, precision=precision)
            parts = [estimate.weights, estimate.gradients, estimate.optimizer, estimate.activations]
            parts += [estimate.logits, estimate.allocator]
            assert all(isinstance(p, int) and p >= 0 for p in parts)
            assert estimate.total == sum(parts) > 0


def test_doubling_the_batch_doubles_activations_and_logits():
    one, two = (estimate_training_memory(config(), batch) for batch in (8, 16))
    assert two.activations == 2 * one.activations and two.logits == 2 * one.logits
    assert (two.weights, two.gradients, two.optimizer) == (one.weights, one.gradients, one.optimizer)
    accumulated = estimate_training_memory(config(), 16, grad_accum_steps=2)  # two forward passes of 8
    assert accumulated == one


def test_the_weight_average_is_one_more_copy_of_the_weights():
    averaged, last = (estimate_training_memory(config(), 8, weight_average=a) for a in (True, False))
    assert averaged.weights == 2 * last.weights == 2 * 4 * count_parameters(config())
    assert averaged.total - last.total == last.weights


def test_adamw_keeps_more_optimizer_state_than_muon():
    muon = estimate_training_memory(config(), 8, optimizer="muon")
    adamw = estimate_training_memory(config(), 8, optimizer="adamw")
    assert adamw.optimizer > muon.optimizer >= muon.weights / 2  # at least a state per parameter (weights: 2 copies)
    assert adamw.optimizer >= adamw.weights  # two moments per parameter


@pytest.mark.parametrize(
    "shape",
    [
        {},
        {"dropout": 0.1},  # the CPU's math attention keeps [batch, heads, T, T] scores
        {"num_heads": 2, "head_size": 24, "mlp_ratio": 2, "num_layers": 3, "bias": False},
    ],
)
def test_activations_are_what_autograd_saves(shape):
    """Every tensor a training forward pass saves for backward, counted once (fp32, on the CPU)."""
    cfg = config(**shape)
    model = GPT.from_config(cfg).train()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = 3
    inputs, targets = torch.randint(0, cfg.vocab_size, (2, batch, cfg.max_seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _lm_loss(model(inputs), targets)
    estimate = estimate_training_memory(cfg, batch)
    log_probabilities = 4 * batch * cfg.max_seq_len * cfg.vocab_size  # one of the three `logits` copies
    assert estimate.activations == pytest.approx(sum(saved.values()) - log_probabilities, rel=0.01)
    assert estimate.logits == 3 * log_probabilities


def test_dropout_on_a_cpu_costs_attention_scores_that_cuda_does_not_keep():
    plain = estimate_training_memory(config(max_seq_len=512), 4)
    cpu = estimate_training_memory(config(max_seq_len=512, dropout=0.1), 4)
    cuda = estimate_training_memory(config(max_seq_len=512, dropout=0.1), 4, device="cuda")
    scores = 2 * 3 * 4 * 4 * 4 * 512 * 512  # layers x copies x fp32 x batch x heads x T x T
    assert cpu.activations - plain.activations > scores > 10 * (cuda.activations - plain.activations)


def test_largest_part_and_description():
    logits = estimate_training_memory(config(vocab_size=50_000, emb_size=8, num_heads=2, num_layers=1), 64)
    assert logits.largest() == "logits" and "batch size" in LOWER_TO_SHRINK[logits.largest()]
    wide = estimate_training_memory(config(emb_size=1024, num_heads=8, num_layers=8, max_seq_len=8), 1)
    assert wide.largest() in ("weights", "gradients", "optimizer")
    line = MemoryEstimate(1536, 2 * 1024**2, 3 * 1024**3, 0, 5, 0).describe()
    assert line == (
        "estimated peak memory 3.0 GiB (weights 1.5 KiB, gradients 2.0 MiB, optimizer 3.0 GiB, "
        "activations 0 B, logits 5 B, allocator 0 B)"
    )
    assert format_bytes(5 * 1024**4) == "5.00 TiB"


def test_a_request_too_large_for_any_machine_is_estimated_without_allocating():
    """The request that tried to allocate 17 GB in one tensor: batch 1024 x context 4096."""
    cfg = GPTConfig(vocab_size=4096, max_seq_len=4096, emb_size=128, num_heads=4, num_layers=4)
    estimate = estimate_training_memory(cfg, 1024)
    assert estimate.total > 100 * 1024**3 and estimate.largest() in ("activations", "logits")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 2, "grad_accum_steps": 0}, "grad_accum_steps must be a positive integer"),
        ({"batch_size": 2, "optimizer": "sgd"}, "optimizer must be one of"),
        ({"batch_size": 2, "precision": "fp16"}, "precision must be 'fp32', 'bf16' or 'auto'"),
    ],
)
def test_bad_arguments(values, message):
    with pytest.raises(ValueError, match=message):
        estimate_training_memory(SMALL, **values)


MEASURE = """
import json, sys
import torch
from torch.utils.data import DataLoader
from gpt import GPT, estimate_training_memory
from gpt.data import GetData

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))  # kB

def reset_peak():  # VmHWM back to the current RSS: earlier peaks (imports, warm-up) don't hide this one
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

shape = json.loads(sys.argv[1])
batch, steps = shape.pop("batch"), 3
torch.manual_seed(0)
windows = lambda ids, seq: DataLoader(GetData(ids, seq, stride=seq), batch_size=batch)
warm = GPT(vocab_size=300, max_seq_len=8, emb_size=8, num_heads=2, num_layers=1)  # one-off buffers of torch
warm.fit(windows(torch.randint(0, 300, (8 * batch * 3 + 9,)), 8), max_steps=2, progress=False, log_every=None)
seq = shape["max_seq_len"]
loader = windows(torch.randint(0, shape["vocab_size"], (batch * seq * steps + seq + 1,)), seq)
reset_peak()
before = status("VmRSS")
model = GPT(**shape)
model.fit(loader, max_steps=steps, progress=False, precision="fp32", log_every=None)
estimate = estimate_training_memory(model.config, batch, precision="fp32")
print(json.dumps({"grown": status("VmHWM") - before, "estimate": estimate.total, "largest": estimate.largest()}))
"""


@pytest.mark.slow  # a process of its own, measured: not in the fast tier
@pytest.mark.parametrize(
    "shape, largest",
    [
        # about 200 MiB of logits, 5 MiB of activations
        (
            {"batch": 16, "vocab_size": 8192, "max_seq_len": 128, "emb_size": 32, "num_heads": 4, "num_layers": 1},
            "logits",
        ),
        # about 130 MiB of activations, 24 MiB of logits, 1 MiB of weights
        (
            {"batch": 32, "vocab_size": 256, "max_seq_len": 256, "emb_size": 64, "num_heads": 4, "num_layers": 4},
            "activations",
        ),
    ],
)
def test_estimate_brackets_the_measured_peak_of_fit(shape, largest):
    """Peak RSS growth of three `fit` steps in a fresh process (VmHWM, reset just before; the
    process's earlier peaks once hid the growth in a full-suite run): the estimate is within 0.85x-1.3x of
    it, the accuracy gpt/memory.py states.

    (Measured: about 0.96x where the logits dominate, 1.1x-1.2x where the activations do; ignoring
    the activations or the logits would give under 0.25x.)
    """
    need_linux("the peak RSS of /proc/self/status and glibc's allocator")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", MEASURE, json.dumps({**shape, "dropout": 0.0})]
    result = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.splitlines()[-1])
    assert measured["largest"] == largest
    assert 0.85 <= measured["estimate"] / measured["grown"] <= 1.3, measured
