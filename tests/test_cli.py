"""`python -m gpt`: tokenizer, train (with resume) and generate, as a user runs them."""

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gpt import GPT, checkpoint
from gpt.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
TEXT = "Привет, мир! Hello world. 世界 🙂\n" * 40 + "The quick brown fox jumps over the lazy dog.\n" * 60


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "gpt", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "a.txt").write_text(TEXT, encoding="utf-8")
    (folder / "nested").mkdir()
    (folder / "nested" / "b.md").write_text(TEXT[::-1], encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "model"
    result = run_cli(
        "train",
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--vocab-size",
        "300",
        "--context",
        "32",
        "--emb",
        "32",
        "--heads",
        "2",
        "--layers",
        "1",
        "--batch-size",
        "8",
        "--steps",
        "6",
        "--eval-interval",
        "3",
        "--threads",
        "1",
        "--activation",
        "gelu",
    )
    assert "done: 6 steps" in result.stdout
    assert "validation loss" in result.stdout
    assert "estimated peak memory" in result.stdout and "activations" in result.stdout
    return out


def test_help_documents_every_command():
    for command in ("tokenizer", "train", "generate", "eval"):
        text = run_cli(command, "--help").stdout
        assert "--" in text and "usage" in text
    assert "--repetition-penalty" in run_cli("generate", "--help").stdout


def test_tokenizer_command(corpus, tmp_path):
    result = run_cli(
        "tokenizer", "--data", str(corpus / "a.txt"), "--out", str(tmp_path / "tok.json"), "--vocab-size", "280"
    )
    assert "280 tokens" in result.stdout
    assert (tmp_path / "tok.json").is_file()


def test_train_writes_a_loadable_model(trained):
    model = GPT.load(trained)
    assert model.config.max_seq_len == 32 and model.config.activation == "gelu" and model.tokenizer is not None
    assert any((trained / "checkpoints").iterdir())


def test_generate_greedy_and_streamed_agree(trained):
    args = ("generate", "--model", str(trained), "--prompt", "Hello", "--max-new-tokens", "12")
    plain = run_cli(*args).stdout
    streamed = run_cli(*args, "--stream").stdout
    assert plain == streamed
    assert plain.startswith("Hello")
    model = GPT.load(trained)
    assert plain == "Hello" + model.generate_text("Hello", 12) + "\n"


def test_generate_with_sampling_flags(trained):
    args = (
        "generate",
        "--model",
        str(trained),
        "--prompt",
        "Привет",
        "--max-new-tokens",
        "10",
        "--preset",
        "creative",
        "--seed",
        "1",
    )
    assert run_cli(*args).stdout == run_cli(*args).stdout  # same seed, same text
    run_cli(
        "generate",
        "--model",
        str(trained),
        "--sample",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--stop",
        "o",
        "--repetition-penalty",
        "1.3",
    )


def test_resume_continues_from_the_latest_checkpoint(trained, corpus):
    result = run_cli(
        "train",
        "--data",
        str(corpus),
        "--out",
        str(trained),
        "--steps",
        "9",
        "--batch-size",
        "8",
        "--resume",
        "--threads",
        "1",
    )
    assert "done: 9 steps" in result.stdout


def test_bad_input_gives_a_clear_error(tmp_path, trained):
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02\xff" * 10)
    result = run_cli("train", "--data", str(binary), "--out", str(tmp_path / "m"), check=False)
    assert result.returncode == 2
    assert "blob.txt" in result.stderr and "Traceback" not in result.stderr
    missing = run_cli("generate", "--model", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 2 and "nope" in missing.stderr
    bad = run_cli("generate", "--model", str(trained), "--sample", "--top-p", "2", check=False)
    assert bad.returncode == 2 and "top_p must be in (0, 1]" in bad.stderr
    bad = run_cli("generate", "--model", str(trained), "--sample", "--min-p", "0", check=False)
    assert bad.returncode == 2 and "min_p must be in (0, 1]" in bad.stderr


@pytest.mark.parametrize(
    "flag, value", [("--checkpoint-minutes", "-1"), ("--checkpoint-minutes", "inf"), ("--checkpoint-steps", "0")]
)
def test_checkpoint_flags_are_checked(flag, value, capsys):
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["train", "--data", "a.txt", "--out", "m", flag, value])
    assert exit.value.code == 2 and flag in capsys.readouterr().err


def test_checkpoint_flags_default_to_every_5_minutes():
    args = build_parser().parse_args(["train", "--data", "a.txt", "--out", "m"])
    assert (args.checkpoint_minutes, args.checkpoint_steps) == (5.0, None)


def test_kill_9_during_training_loses_at_most_the_steps_since_the_last_timed_checkpoint(tmp_path):
    """`kill -9` mid-epoch: the newest checkpoint (written on the clock, long before the epoch ends)
    loads, no folder is half-written, and `--resume` continues from it."""
    corpus = tmp_path / "source.txt"
    corpus.write_text(inspect.getsource(textwrap), encoding="utf-8")  # real text, about 20 KB: 4,000+ steps
    out = tmp_path / "model"
    shape = ("--vocab-size", "257", "--context", "16", "--emb", "16", "--heads", "2", "--layers", "1")
    command = [sys.executable, "-m", "gpt", "train", "--data", str(corpus), "--out", str(out), *shape]
    command += ["--batch-size", "4", "--threads", "1", "--checkpoint-minutes", "0.01"]  # every 0.6 s
    log = (tmp_path / "train.log").open("w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    training = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while len(checkpoint.list_checkpoints(out / "checkpoints")) < 2 and training.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(training.pid, signal.SIGKILL)
    finally:
        training.kill()
        training.wait(timeout=30)
    assert training.returncode == -signal.SIGKILL, (tmp_path / "train.log").read_text()[-3000:]
    assert "estimated peak memory" in (tmp_path / "train.log").read_text()

    saved = checkpoint.list_checkpoints(out / "checkpoints")
    for folder in saved:  # whole folders or none: an interrupted write stays under a temporary name
        assert {"config.json", "model.safetensors", "trainer_state.json", "rng.safetensors"} <= {
            p.name for p in folder.iterdir()
        }
    latest = saved[-1]
    step = json.loads((latest / checkpoint.TRAINER_STATE_FILE).read_text())["step"]
    assert latest.name == checkpoint.step_dir_name(step) and 0 < step < 4000
    assert GPT.load(latest).tokenizer is not None

    resumed = run_cli(
        "train", "--data", str(corpus), "--out", str(out), "--resume", "--steps", str(step + 3), "--batch-size", "4"
    )
    assert f"done: {step + 3} steps" in resumed.stdout
    assert f"resumed from {latest} (epoch 1, step {step})" in resumed.stderr
    assert GPT.load(out).config == GPT.load(latest).config
