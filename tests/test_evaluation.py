"""Scoring a text (`gpt.evaluate_text`, `python -m gpt eval`, `python -m export eval`): checked
against transformers' GPT-2 loss on the same checkpoint, the same on both backends."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from in_process import run_main
from tiny_training import TINY_CONTEXT

from export import OnnxGPT
from export.cli import main as export_main
from gpt import GPT, evaluate_text, token_losses
from gpt.cli import main as gpt_main

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data" / "shakespeare-excerpt.txt"
CONTEXT = TINY_CONTEXT
HELD_OUT = "KING RICHARD:\nNow is the winter of our discontent\nMade glorious summer by this sun of York;\n"


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def model(tiny_model) -> GPT:
    return tiny_model


@pytest.fixture(scope="module")
def exported(tiny_export) -> Path:
    return tiny_export("fp32")


def _transformers_nats(checkpoint: Path, ids: list[int], window: int) -> float:
    """Summed loss of `ids[1:]`, each window of `window` predictions scored by GPT2LMHeadModel."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    total = 0.0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start : start + window + 1]])
        with torch.no_grad():
            logits = hf(chunk[:, :-1]).logits
        total += torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
    return total


def test_scores_match_transformers_across_windows_and_batches(checkpoint, model):
    text = SHAKESPEARE.read_text(encoding="utf-8")[:3000]
    ids = [model.tokenizer.eos_token_id, *model.tokenizer.encode(text)]
    assert len(ids) > 4 * CONTEXT  # several windows and a shorter last one
    score = evaluate_text(model, text, batch_size=3)
    assert score.tokens == len(ids) - 1 and score.bytes == len(text.encode("utf-8"))
    assert score.total_nats == pytest.approx(_transformers_nats(checkpoint, ids, CONTEXT), rel=1e-5)
    assert evaluate_text(model, text, batch_size=1).total_nats == pytest.approx(score.total_nats, rel=1e-6)
    assert score.loss == pytest.approx(score.total_nats / score.tokens)
    assert score.perplexity == pytest.approx(math.exp(score.loss))
    assert score.nats_per_byte == pytest.approx(score.total_nats / score.bytes)
    assert score.bits_per_byte == pytest.approx(score.nats_per_byte / math.log(2))


def test_token_losses_are_each_tokens_surprise(model):
    ids, losses = token_losses(model, HELD_OUT)
    assert ids == model.tokenizer.encode(HELD_OUT) and losses.shape == (len(ids),)
    assert losses.sum().item() == pytest.approx(evaluate_text(model, HELD_OUT).total_nats, rel=1e-6)
    eos = model.tokenizer.eos_token_id
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([[eos, *ids[:5]]]))[0], dim=-1)
    expected = [-logprobs[i, token].item() for i, token in enumerate(ids[:5])]  # each from the tokens before it
    assert losses[:5].tolist() == pytest.approx(expected, abs=1e-5)


def test_training_lowers_the_loss_on_held_out_text(model):
    untrained = GPT(model.config)
    untrained.tokenizer = model.tokenizer
    trained_score, untrained_score = evaluate_text(model, HELD_OUT), evaluate_text(untrained, HELD_OUT)
    assert trained_score.loss < untrained_score.loss
    assert untrained_score.loss == pytest.approx(math.log(model.config.vocab_size), rel=0.1)  # about uniform


def test_both_backends_give_the_same_figures(model, exported):
    text = SHAKESPEARE.read_text(encoding="utf-8")[:1500]
    torch_score = evaluate_text(model, text)
    onnx_score = evaluate_text(OnnxGPT.load(exported, threads=1), text)
    assert onnx_score.tokens == torch_score.tokens
    assert onnx_score.total_nats == pytest.approx(torch_score.total_nats, rel=1e-5)
    one_token = evaluate_text(OnnxGPT.load(exported, threads=1), "a")  # a one-token window: a decode-sized run
    assert one_token.total_nats == pytest.approx(evaluate_text(model, "a").total_nats, rel=1e-5)


def test_bad_input(model):
    with pytest.raises(ValueError, match="the text is empty"):
        evaluate_text(model, "")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        evaluate_text(model, "text", batch_size=0)
    bare = GPT(model.config)
    with pytest.raises(ValueError, match="has no tokenizer"):
        evaluate_text(bare, "text")
    small = GPT(vocab_size=100, max_seq_len=16, emb_size=16, num_heads=2, num_layers=1)
    small.tokenizer = model.tokenizer  # 300 ids
    with pytest.raises(ValueError, match="outside the model's vocabulary of 100: it does not fit"):
        evaluate_text(small, HELD_OUT)


def test_eval_commands_print_the_same_figures(checkpoint, model, exported, tmp_path):
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(HELD_OUT, encoding="utf-8")
    expected = evaluate_text(model, HELD_OUT)
    from_torch = run_main(gpt_main, "eval", "--model", str(checkpoint), "--data", str(held_out), "--threads", "1")
    from_onnx = run_main(export_main, "eval", "--onnx", str(exported), "--data", str(held_out), "--threads", "1")
    pattern = (
        r"(\d+) tokens, (\d+) bytes: loss ([\d.]+) nats/token, perplexity ([\d.]+), ([\d.]+) nats/byte "
        r"\(([\d.]+) bits/byte\)"
    )
    for run in (from_torch, from_onnx):
        assert run.returncode == 0, run.stderr
        tokens, size, loss, perplexity, nats, bits = re.search(pattern, run.stdout).groups()
        assert (int(tokens), int(size)) == (expected.tokens, expected.bytes)
        figures = [float(loss), float(perplexity), float(nats), float(bits)]
        wanted = [expected.loss, expected.perplexity, expected.nats_per_byte, expected.bits_per_byte]
        assert figures == pytest.approx(wanted, rel=1e-3)


@pytest.mark.parametrize("module", ["gpt", "export"])
def test_eval_commands_refuse_bad_files_clearly(checkpoint, exported, tmp_path, module, capsys):
    """A binary file, an empty one, a missing one, a folder that is not a model: exit 2, the file
    named (a traceback would fail the test: `main` runs in this process)."""
    main = {"gpt": gpt_main, "export": export_main}[module]
    model_flag = ["--model", str(checkpoint)] if module == "gpt" else ["--onnx", str(exported)]
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02\xff" * 10)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for path, reason in ((binary, "blob.txt"), (empty, "empty.txt"), (tmp_path / "missing.txt", "missing.txt")):
        assert main(["eval", *model_flag, "--data", str(path), "--threads", "1"]) == 2
        assert reason in capsys.readouterr().err
    wrong = [*(["--model"] if module == "gpt" else ["--onnx"]), str(tmp_path)]
    assert main(["eval", *wrong, "--data", str(binary), "--threads", "1"]) == 2
