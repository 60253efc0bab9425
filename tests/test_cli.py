"""`python -m gpt`: tokenizer, train (with resume, --init-from, --tokenizer), generate and eval, as a user runs them."""

import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from in_process import CliRun, run_main

from gpt import GPT, Tokenizer, checkpoint, evaluate_text
from gpt.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
TEXT = "Привет, мир! Hello world. 世界 🙂\n" * 40 + "The quick brown fox jumps over the lazy dog.\n" * 60


def run_cli(*args: str, check: bool = True) -> CliRun:
    """`python -m gpt ARGS`, run in this process (`test_kill_9_...` and the shared `tiny_checkpoint`
    run the real one)."""
    result = run_main(main, *args)
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
    assert model.training_record["prompt"] == TEXT.splitlines()[0]  # the web app's prompt for it: its text's start


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


def test_a_checkpoint_of_muon_on_fused_matrices_resumes_with_its_flag(tmp_path, corpus):
    common = ("train", "--data", str(corpus), "--out", str(tmp_path / "m"), "--batch-size", "8", "--threads", "1")
    run_cli(*common, "--steps", "3", "--muon-fused-qkv")
    refused = run_cli(*common, "--steps", "5", "--resume", check=False)
    assert refused.returncode == 2 and "muon_qkv_apart=False" in refused.stderr, refused.stderr
    assert "done: 5 steps" in run_cli(*common, "--steps", "5", "--resume", "--muon-fused-qkv").stdout


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
    "flag, value",
    [
        ("--checkpoint-minutes", "-1"),
        ("--checkpoint-minutes", "inf"),
        ("--checkpoint-steps", "0"),
        ("--ema-decay", "1"),
        ("--ema-decay", "-0.1"),
    ],
)
def test_checkpoint_flags_are_checked(flag, value, capsys):
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["train", "--data", "a.txt", "--out", "m", flag, value])
    assert exit.value.code == 2 and flag in capsys.readouterr().err


def test_checkpoint_flags_default_to_every_5_minutes():
    args = build_parser().parse_args(["train", "--data", "a.txt", "--out", "m"])
    assert (args.checkpoint_minutes, args.checkpoint_steps) == (5.0, None)


def test_ema_decay_0_trains_without_a_weight_average(trained, corpus, tmp_path):
    averaged = checkpoint.latest_checkpoint(trained / "checkpoints")  # the default, 0.99
    assert (averaged / checkpoint.TRAINING_WEIGHTS_FILE).is_file()
    out = tmp_path / "raw"
    run_cli("train", "--data", str(corpus), "--out", str(out), "--init-from", str(trained), "--steps", "2",
            "--batch-size", "8", "--threads", "1", "--ema-decay", "0")  # fmt: skip
    raw = checkpoint.latest_checkpoint(out / "checkpoints")
    assert raw.name == "step-00000002" and not (raw / checkpoint.TRAINING_WEIGHTS_FILE).exists()


@pytest.mark.slow  # a training process killed and restarted: not in the fast tier
def test_kill_9_during_training_loses_at_most_the_steps_since_the_last_timed_checkpoint(tmp_path):
    """`kill -9` mid-run: the newest checkpoint (written on the clock, long before the run ends)
    loads, no folder is half-written, and `--resume` continues from it."""
    corpus = tmp_path / "source.txt"
    corpus.write_text(inspect.getsource(textwrap), encoding="utf-8")  # real text, about 20 KB
    out = tmp_path / "model"
    shape = ("--vocab-size", "257", "--context", "16", "--emb", "16", "--heads", "2", "--layers", "1")
    command = [sys.executable, "-m", "gpt", "train", "--data", str(corpus), "--out", str(out), *shape]
    command += ["--batch-size", "4", "--steps", "100000", "--threads", "1"]  # far longer than the test
    command += ["--checkpoint-minutes", "0.01"]  # every 0.6 s
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
    assert latest.name == checkpoint.step_dir_name(step) and 0 < step < 100_000
    assert GPT.load(latest).tokenizer is not None

    resumed = run_cli(
        "train", "--data", str(corpus), "--out", str(out), "--resume", "--steps", str(step + 3), "--batch-size", "4"
    )
    assert f"done: {step + 3} steps" in resumed.stdout
    assert re.search(rf"resumed from {re.escape(str(latest))} \(epoch \d+, step {step}\)", resumed.stderr)
    assert GPT.load(out).config == GPT.load(latest).config


# --- going on from a saved model, and a saved tokenizer ---------------------------------------------

NEW_TEXT = "Whan that Aprille with his shoures soote the droghte of March hath perced to the roote.\n" * 40


@pytest.fixture(scope="module")
def new_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("new") / "chaucer.txt"
    path.write_text(NEW_TEXT, encoding="utf-8")
    return path


def _fit_args(out: Path, *extra: str) -> tuple[str, ...]:
    return ("--out", str(out), "--batch-size", "8", "--steps", "4", "--threads", "1", *extra)


def test_init_from_goes_on_training_a_saved_model_on_new_text(trained, new_text, tmp_path):
    out = tmp_path / "tuned"
    result = run_cli("train", "--init-from", str(trained), "--data", str(new_text), *_fit_args(out))
    assert "done: 4 steps" in result.stdout and f"starting from {trained}" in result.stderr
    before, after = GPT.load(trained), GPT.load(out)
    assert after.config == before.config  # its shape and tokenizer, not the defaults of a new model
    assert (out / "tokenizer.json").read_text() == (trained / "tokenizer.json").read_text()
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    record = json.loads((out / "training.json").read_text())
    assert record["texts"] == [str(new_text)] and record["steps"] == 4  # a new run: its own steps
    earlier = json.loads((trained / "training.json").read_text())
    assert record["started_from"] == {"model": str(trained), **earlier}
    # its weights, not a fresh start: the new text's loss starts far below a new model's
    fresh = run_cli("train", "--tokenizer", str(trained), "--data", str(new_text), "--context", "32", "--emb", "32",
                    "--heads", "2", "--layers", "1", "--activation", "gelu", *_fit_args(tmp_path / "fresh"))  # fmt: skip
    assert evaluate_text(after, NEW_TEXT[:500]).loss < evaluate_text(GPT.load(tmp_path / "fresh"), NEW_TEXT[:500]).loss
    assert "done: 4 steps" in fresh.stdout


def test_tokenizer_flag_trains_a_new_model_with_a_saved_tokenizer(corpus, new_text, tmp_path):
    run_cli("tokenizer", "--data", str(corpus), "--out", str(tmp_path / "tok.json"), "--vocab-size", "280")
    out = tmp_path / "model"
    run_cli("train", "--tokenizer", str(tmp_path / "tok.json"), "--data", str(new_text), "--context", "16",
            "--emb", "16", "--heads", "2", "--layers", "1", *_fit_args(out))  # fmt: skip
    model = GPT.load(out)
    assert (
        model.config.vocab_size == 280
        and model.tokenizer.to_json_str() == Tokenizer.load(tmp_path / "tok.json").to_json_str()
    )


def test_rotary_flag_trains_a_model_without_a_position_table(trained, new_text, tmp_path):
    out = tmp_path / "rotary"
    run_cli("train", "--tokenizer", str(trained), "--data", str(new_text), "--context", "16", "--emb", "16",
            "--heads", "2", "--layers", "1", "--rotary", *_fit_args(out))  # fmt: skip
    model = GPT.load(out)
    assert model.config.rotary and "transformer.wpe.weight" not in model.state_dict()
    assert "model_type" not in json.loads((out / "config.json").read_text())  # not GPT-2's: transformers says so


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--init-from", "{tmp}/nope"), "checkpoint folder not found"),
        (("--init-from", "{trained}", "--layers", "8"), "--layers: the shape of a new model; --init-from takes"),
        (("--init-from", "{trained}", "--tokenizer", "{trained}"), "not allowed with argument"),
        (("--tokenizer", "{tmp}/none.json"), "tokenizer file not found"),
        (("--tokenizer", "{trained}", "--vocab-size", "500"), "--vocab-size trains a new tokenizer"),
        (("--tokenizer", "{bad_tokenizer}"), "not a valid tokenizer.json"),
        (("--init-from", "{too_big}"), "outside the model's vocabulary of 100: it does not fit this model"),
    ],
)
def test_bad_starting_points_are_refused_before_anything_is_written(trained, new_text, tmp_path, flags, message):
    bad_tokenizer = tmp_path / "bad.json"
    bad_tokenizer.write_text('{"not": "a tokenizer"}')
    too_big = tmp_path / "too_big"  # a checkpoint whose tokenizer has more ids than its model
    GPT(vocab_size=100, max_seq_len=16, emb_size=16, num_heads=2, num_layers=1).save(too_big)
    shutil.copy(trained / "tokenizer.json", too_big / "tokenizer.json")
    values = {"tmp": tmp_path, "trained": trained, "bad_tokenizer": bad_tokenizer, "too_big": too_big}
    args = [flag.format(**values) for flag in flags]
    out = tmp_path / "out"
    result = run_cli("train", *args, "--data", str(new_text), *_fit_args(out), check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()
