"""Command line: `python -m gpt tokenizer|train|generate|eval ...` (`--help` on each for every flag)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from gpt.callbacks import DEFAULT_CHECKPOINT_MINUTES, ModelCheckpoint
from gpt.checkpoint import CheckpointError, latest_checkpoint
from gpt.config import ACTIVATIONS, GPTConfig
from gpt.data import check_vocabulary, encode_corpus, make_loaders
from gpt.evaluation import DEFAULT_EVAL_BATCH, evaluate_text
from gpt.generation import DEFAULT_DECODE_THREADS, PRESETS
from gpt.memory import MemoryEstimate, estimate_training_memory
from gpt.model import GPT
from gpt.optim import OPTIMIZERS
from gpt.precision import bf16_pays
from gpt.texts import read_text_file, read_texts, text_start
from gpt.tokenizer import Tokenizer
from gpt.training import TrainingOptions

log = logging.getLogger("gpt")


def _add_data_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--data", required=True, nargs="+", help="UTF-8 text files or folders (.txt/.md, searched recursively)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tokenizer_command(commands)
    _add_train_command(commands)
    _add_generate_command(commands)
    _add_eval_command(commands)
    return parser


def _add_tokenizer_command(commands: argparse._SubParsersAction) -> None:
    tok = commands.add_parser(
        "tokenizer",
        help="train a byte-level BPE tokenizer",
        description="Train a byte-level BPE tokenizer and write tokenizer.json.",
    )
    _add_data_argument(tok)
    tok.add_argument("--out", required=True, help="output file or folder for tokenizer.json")
    tok.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        help="target vocabulary size, special tokens included (default: %(default)s)",
    )


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a model on text",
        description="Train a tokenizer and a GPT on text, with checkpoints in OUT/checkpoints; or go on "
        "training a saved model on new text (--init-from), or train a new model with a saved tokenizer (--tokenizer).",
    )
    _add_data_argument(train)
    train.add_argument(
        "--out", required=True, help="folder for the final model (config.json, model.safetensors, tokenizer.json)"
    )
    start = train.add_argument_group("start from").add_mutually_exclusive_group()
    start.add_argument(
        "--init-from",
        metavar="DIR",
        help="a saved model to train further: its weights, shape and tokenizer, with a new optimizer and schedule",
    )
    start.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="tokenizer.json (or its folder) from `python -m gpt tokenizer` for a new model",
    )
    _add_model_arguments(train.add_argument_group("model (a new one)"))
    _add_fit_arguments(train.add_argument_group("training"))


NEW_MODEL_DEFAULTS = {
    "vocab_size": 4096,
    "context": 128,
    "emb": 128,
    "heads": 4,
    "head_size": None,
    "layers": 4,
    "dropout": 0.0,
    "activation": ACTIVATIONS[0],
    "rotary": False,
}
"""`train`'s shape flags and their defaults: they describe a new model, so they cannot go with --init-from."""


def _add_model_arguments(model: argparse._ArgumentGroup) -> None:
    """`train`'s flags for the shape of a new model."""
    default = NEW_MODEL_DEFAULTS
    model.add_argument(
        "--vocab-size",
        type=int,
        default=default["vocab_size"],
        help="tokenizer vocabulary size; 257 = plain bytes (default: %(default)s)",
    )
    model.add_argument(
        "--context",
        type=int,
        default=default["context"],
        help="max_seq_len, tokens the model sees (default: %(default)s)",
    )
    model.add_argument(
        "--emb", type=int, default=default["emb"], help="emb_size, width of the model (default: %(default)s)"
    )
    model.add_argument("--heads", type=int, default=default["heads"], help="num_heads (default: %(default)s)")
    model.add_argument("--head-size", type=int, default=default["head_size"], help="head_size (default: emb / heads)")
    model.add_argument("--layers", type=int, default=default["layers"], help="num_layers (default: %(default)s)")
    model.add_argument("--dropout", type=float, default=default["dropout"], help="dropout (default: %(default)s)")
    model.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default=default["activation"],
        help="MLP activation: gelu_tanh (GPT-2's), gelu (exact; trains faster on CPU, decodes slower) or relu2 (ReLU squared) (default: %(default)s)",
    )
    model.add_argument(
        "--rotary",
        action="store_true",
        help="rotary positions instead of a learned position table: a lower loss in the same steps, but not "
        "GPT-2, so transformers, optimum and transformers.js cannot load it (onnxruntime and the web page can)",
    )


def _add_fit_arguments(fit: argparse._ArgumentGroup) -> None:
    """`train`'s flags for the training run itself."""
    fit.add_argument("--batch-size", type=int, default=16, help="windows per step (default: %(default)s)")
    fit.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="passes over the text (default: as many as --steps needs, else 1)",
    )
    fit.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps")
    fit.add_argument("--max-time", type=float, default=None, help="stop after this many seconds")
    fit.add_argument("--lr", type=float, default=None, help="peak learning rate (default: fit's default)")
    fit.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="last part of the text held out for validation (default: %(default)s)",
    )
    fit.add_argument("--eval-interval", type=int, default=None, help="evaluate every N steps (default: each epoch)")
    fit.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="muon",
        help="muon: Muon for the block matrices, AdamW for the rest; adamw: AdamW everywhere (default: %(default)s)",
    )
    fit.add_argument(
        "--muon-fused-qkv",
        action="store_true",
        help="Muon on each block's fused query-key-value matrix whole (muon_qkv_apart=False), as before "
        "it took them apart: to resume a checkpoint written then",
    )
    fit.add_argument(
        "--ema-decay",
        type=_decay,
        default=TrainingOptions.ema_decay,
        metavar="DECAY",
        help="decay per step of the average of the weights that is evaluated, saved and kept; "
        "0: none, the last weights (default: %(default)s)",
    )
    fit.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="autocast precision (default: %(default)s)",
    )
    fit.add_argument(
        "--checkpoint-minutes",
        type=_minutes,
        default=DEFAULT_CHECKPOINT_MINUTES,
        metavar="MINUTES",
        help="write a checkpoint every this many minutes of training; 0: only at epoch ends (default: %(default)s)",
    )
    fit.add_argument(
        "--checkpoint-steps",
        type=_positive_int,
        default=None,
        metavar="N",
        help="also write a checkpoint every N optimizer steps (default: none)",
    )
    fit.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT/checkpoints")
    fit.add_argument("--seed", type=int, default=0, help="seed for weights and data order (default: %(default)s)")
    fit.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    fit.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _decay(text: str) -> float:
    """A decay in [0, 1) (0 turns the weight average off)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _add_generate_command(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser(
        "generate", help="generate text from a saved model", description="Continue a prompt with a saved model."
    )
    gen.add_argument("--model", required=True, help="model folder written by `train` (or any checkpoint folder)")
    gen.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    add_sampling_arguments(gen)
    gen.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    gen.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: %(default)s)")
    gen.add_argument(
        "--threads", type=int, default=DEFAULT_DECODE_THREADS, help="torch CPU threads (default: %(default)s)"
    )


def _add_eval_command(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser(
        "eval",
        help="score a text: loss per token, perplexity, nats and bits per byte",
        description="How well a saved model predicts a text it may not have seen; per byte compares "
        "models with different tokenizers.",
    )
    ev.add_argument("--model", required=True, help="model folder written by `train` (or any checkpoint folder)")
    add_eval_arguments(ev)
    ev.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: %(default)s)")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every `eval` command (the export CLI reuses them)."""
    parser.add_argument("--data", required=True, help="a UTF-8 text file (.txt/.md) to score")
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_EVAL_BATCH,
        help="windows of max_seq_len tokens scored at once (default: %(default)s)",
    )


def print_evaluation(backend, args: argparse.Namespace) -> None:
    """Score `--data` with any backend and print the figures."""
    text = read_text_file(args.data)
    score = evaluate_text(backend, text, batch_size=args.batch_size, progress=True)
    print(f"{args.data}: {score.format()}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _minutes(text: str) -> float:
    """A number of minutes >= 0 (0 turns the timer off)."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Sampling flags shared by every `generate` command (the export CLI reuses them)."""
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: %(default)s)")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--greedy", dest="do_sample", action="store_false", help="always take the most likely token (default)"
    )
    mode.add_argument("--sample", dest="do_sample", action="store_true", help="sample from the distribution")
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="sampling preset (implies --sample): " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()),
    )
    group.add_argument("--temperature", type=float, default=None, help="softmax temperature; 0 = greedy (default: 1.0)")
    group.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    group.add_argument(
        "--top-p", type=float, default=None, help="sample from the smallest set with this probability mass"
    )
    group.add_argument(
        "--min-p", type=float, default=None, help="sample among tokens at least this fraction as likely as the top one"
    )
    group.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeating tokens (default: %(default)s)"
    )
    group.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)")
    group.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.set_defaults(do_sample=False)


def sampling_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for `stream_text` from the flags of `add_sampling_arguments`."""
    options: dict = dict(PRESETS[args.preset]) if args.preset else {}
    for name in ("temperature", "top_k", "top_p", "min_p"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    options.update(
        do_sample=args.do_sample or args.preset is not None,
        repetition_penalty=args.repetition_penalty,
        stop_strings=args.stop,
        seed=args.seed,
    )
    return options


def print_generation(backend, args: argparse.Namespace) -> None:
    """Generate from `--prompt` with any backend and print it, streamed or at once."""
    pieces = backend.stream_text(args.prompt, args.max_new_tokens, **sampling_options(args))
    print(args.prompt, end="", flush=True)
    if args.stream:
        for piece in pieces:
            print(piece, end="", flush=True)
    else:
        print("".join(pieces), end="")
    print()


def cmd_tokenizer(args: argparse.Namespace) -> None:
    tokenizer = Tokenizer.train(read_texts(args.data), vocab_size=args.vocab_size)
    path = tokenizer.save(args.out)
    print(f"tokenizer: {tokenizer.vocab_size} tokens -> {path}")


def cmd_train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    checkpoints = out / "checkpoints"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    texts = read_texts(args.data)
    resume_from = latest_checkpoint(checkpoints) if args.resume else None
    if args.resume and resume_from is None:
        raise CheckpointError(f"{checkpoints}: no checkpoint to resume from")
    model = _starting_model(args, texts, device, resume_from)
    tokenizer = model.tokenizer
    trained_on = model.training_record.setdefault("texts", [])
    trained_on += [name for name in map(str, args.data) if name not in trained_on]
    model.training_record.setdefault("prompt", text_start(texts))  # the web app's prompt for it
    ids = encode_corpus(texts, tokenizer)
    check_vocabulary(ids, model.config.vocab_size)
    train_loader, valid_loader = make_loaders(
        ids, model.max_seq_len, args.batch_size, args.valid_fraction, seed=args.seed
    )
    print(
        f"{len(ids):,} tokens ({tokenizer.vocab_size} vocab), {model.num_parameters():,} parameters, device {model.device}"
    )
    print(_memory_estimate(model, args).describe(), flush=True)
    saver = ModelCheckpoint(every_n_steps=args.checkpoint_steps, every_n_minutes=args.checkpoint_minutes or None)
    fit_options = dict(
        callbacks=[saver],
        checkpoint_dir=checkpoints,
        max_steps=args.steps,
        max_time=args.max_time,
        eval_interval=args.eval_interval,
        optimizer=args.optimizer,
        muon_qkv_apart=not args.muon_fused_qkv,
        ema_decay=args.ema_decay,
        precision=args.precision,
        resume=resume_from is not None,
    )
    if args.lr is not None:
        fit_options["learning_rate"] = args.lr
    started = time.perf_counter()
    epochs = args.epochs if args.epochs is not None else (None if args.steps else 1)  # None: what --steps needs
    history = model.fit(train_loader, valid_loader, num_epoch=epochs, **fit_options)
    seconds = time.perf_counter() - started
    model.save(out)
    valid = f"{model.validation_loss[-1]:.4f}" if model.validation_loss else "n/a"
    print(
        f"done: {history.steps[-1] if history.steps else 0} steps, train loss {model.train_loss[-1]:.4f}, "
        f"validation loss {valid}, {history.tokens_seen / max(seconds, 1e-9):,.0f} tokens/s, {seconds:.1f} s -> {out}"
    )


def _starting_model(args: argparse.Namespace, texts: list[str], device: str, resume_from: Path | None) -> GPT:
    """The model a run starts from: the run's checkpoint (--resume), a saved model (--init-from),
    or a new one with a new or saved (--tokenizer) tokenizer. Checked before anything is written."""
    given = [name for name, value in NEW_MODEL_DEFAULTS.items() if getattr(args, name) != value]
    if args.init_from is not None and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{flags}: the shape of a new model; --init-from takes the shape of {args.init_from}")
    if args.tokenizer is not None and "vocab_size" in given:
        raise ValueError(f"--vocab-size trains a new tokenizer; --tokenizer {args.tokenizer} has its own vocabulary")
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
        return GPT.load(resume_from, device=device)  # the checkpoint decides shape and tokenizer
    if args.init_from is not None:
        model = GPT.load(args.init_from, device=device)
        if model.tokenizer is None:
            raise CheckpointError(f"{args.init_from}: no tokenizer.json, so it cannot read new text")
        log.info("starting from %s: its weights, shape and tokenizer; a new optimizer and schedule", args.init_from)
        model.begin_run_from(str(args.init_from))
        return model
    if args.tokenizer is not None:
        tokenizer = Tokenizer.load(args.tokenizer)
    else:
        tokenizer = Tokenizer.train(texts, vocab_size=args.vocab_size)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        max_seq_len=args.context,
        emb_size=args.emb,
        num_heads=args.heads,
        head_size=args.head_size,
        num_layers=args.layers,
        dropout=args.dropout,
        activation=args.activation,
        rotary=args.rotary,
    )
    model = GPT(config, device=device)
    model.tokenizer = tokenizer
    return model


def _memory_estimate(model: GPT, args: argparse.Namespace) -> MemoryEstimate:
    """What training `model` with the command's settings will need at its peak."""
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if bf16_pays(model, model.device) else "fp32"
    return estimate_training_memory(
        model.config,
        args.batch_size,
        optimizer=args.optimizer,
        precision=precision,
        device=model.device.type,
        weight_average=bool(args.ema_decay),
    )


def cmd_generate(args: argparse.Namespace) -> None:
    model = GPT.load(args.model, device=args.device)
    print_generation(model, args)


def cmd_eval(args: argparse.Namespace) -> None:
    print_evaluation(GPT.load(args.model, device=args.device), args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    commands = {"tokenizer": cmd_tokenizer, "train": cmd_train, "generate": cmd_generate, "eval": cmd_eval}
    command = commands[args.command]
    try:
        command(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: a clear message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
