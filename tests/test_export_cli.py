"""`python -m export`: export (the default subcommand), verify and generate, run as a user would."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from in_process import CliRun, run_main

from export import OnnxGPT
from export.cli import main
from gpt import GPT, Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> CliRun:
    """`python -m export ARGS`, run in this process (its --help test starts the real one)."""
    return run_main(main, *args, log_level=logging.WARNING)  # `main` sets its own logger to INFO


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tokenizer = Tokenizer()
    model = GPT(vocab_size=tokenizer.vocab_size, max_seq_len=48, emb_size=32, num_heads=2, num_layers=2, dropout=0.0)
    return model.save(tmp_path_factory.mktemp("cli") / "checkpoint", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def exported(checkpoint) -> Path:
    out = checkpoint.parent / "onnx"
    result = run(
        "--model",
        str(checkpoint),
        "--out",
        str(out),
        "--precision",
        "int8",
        "--provider",
        "cpu",
        "--opset",
        "20",
        "--threads",
        "1",
        "--no-portable",  # no test here reads onnx/ or web/: the fast graph alone is under test
        "--no-web",
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out} (int8 for the cpu provider, opset 20, dynamo exporter)" in result.stdout
    return out


def test_help_documents_every_flag(capsys):
    command = [sys.executable, "-m", "export", "--help"]  # the entry point, in its own interpreter
    top = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert top.returncode == 0 and all(command in top.stdout for command in ("export", "verify", "generate"))
    assert "Without a subcommand" in " ".join(top.stdout.split())
    flags = {
        "export": [
            "--model",
            "--out",
            "--precision",
            "--provider",
            "--opset",
            "--no-portable",
            "--no-web",
            "--threads",
        ],
        "verify": ["--model", "--onnx", "--steps", "--provider", "--threads"],
        "generate": [
            "--onnx",
            "--prompt",
            "--max-new-tokens",
            "--temperature",
            "--top-k",
            "--top-p",
            "--repetition-penalty",
            "--stop",
            "--seed",
            "--greedy",
            "--sample",
            "--preset",
            "--stream",
            "--provider",
            "--threads",
        ],
    }
    for command, names in flags.items():  # in-process: one interpreter start is enough to show --help works
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        shown = capsys.readouterr().out
        assert all(name in shown for name in names), command


def test_export_without_subcommand_writes_the_folder(exported):
    report = json.loads((exported / "export_report.json").read_text())
    assert report["precision"] == "int8" and report["parity"]["passed"]
    assert report["provider"] == "cpu" and report["cache_buffers"]
    assert (exported / "model_fast.onnx").is_file() and (exported / "genai_config.json").is_file()
    assert not (exported / "onnx").exists() and not (exported / "web").exists()  # --no-portable, --no-web


def test_verify_prints_a_parity_report(checkpoint, exported):
    result = run("verify", "--model", str(checkpoint), "--onnx", str(exported), "--steps", "20")
    assert result.returncode == 0, result.stderr
    for line in (
        "provider         CPUExecutionProvider",
        "prefill logits   max abs",
        "decode logits    max abs",
        "greedy tokens",
        "20 cached decode steps",
        "result           PASS",
    ):
        assert line in result.stdout


def test_generate_matches_the_python_api(exported):
    expected = OnnxGPT.load(exported).generate_text("Hello", 20, do_sample=True, temperature=0.8, top_k=20, seed=5)
    args = [
        "generate",
        "--onnx",
        str(exported),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "20",
        "--sample",
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--seed",
        "5",
    ]
    for extra in ([], ["--stream"]):
        result = run(*args, *extra)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "Hello" + expected + "\n"
        assert "running on CPUExecutionProvider" in result.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    result = run("--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert (
        result.returncode == 2
        and "error: " in result.stderr
        and "missing: checkpoint folder not found" in result.stderr
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "m", "--out", "x", "--precision", "int4"], "invalid choice: 'int4'"),
        (["--model", "m", "--out", "x", "--threads", "0"], "must be a positive integer"),
        (["generate", "--onnx", "x"], "the following arguments are required: --prompt"),
    ],
)
def test_bad_flags_are_refused(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cuda_request_is_refused_clearly(exported):
    result = run("generate", "--onnx", str(exported), "--prompt", "Hi", "--provider", "cuda")
    if result.returncode == 0:
        pytest.skip("CUDA works here: nothing to refuse")
    assert result.returncode == 1 and "error: provider 'cuda'" in result.stderr
