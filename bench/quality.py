"""Model quality in nanoGPT's documented CPU budget on Shakespeare, with the project's default `fit`.

Budget: 4 layers, 4 heads, emb 128, context 64, batch 12, 2000 steps, dropout 0; first 90% of
data/shakespeare.txt (the full text, shipped with the repository) trains, the last 10% validates. Rows:
- `default`: byte-level tokenizer (no merges), `fit` with its default settings (Muon, and the
  model validated is the average of its weights, `ema_decay=0.99`) on `make_loaders`' default
  windows (they do not overlap and shift each epoch);
- `adamw`: the default row with `optimizer="adamw"` (AdamW everywhere, the original design);
- `nanoGPT config`: the same, with nanoGPT's own optimisation settings (the reference row; no
  weight average) and, as nanoGPT, windows at random positions (`train_stride=1`);
- `default, BPE`: the project's default BPE tokenizer, same budget; its validation loss is also
  given per byte (total nats / bytes), so the tokenizers compare fairly;
- `default, bf16`: the default row with bf16 autocast forced on (fp32 master weights), to show
  what bf16 costs in quality.

    python bench/quality.py [--steps 2000] [--rows default,adamw,nanogpt,bpe,bf16] [--threads 1] [--repeats 1] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import statistics
import time

import torch

from bench.common import QUICK_TEXT_CHARS, environment_lines, fixed_grid_loader, print_table, set_threads, training_text
from bench.trial_patches import PATCHES
from gpt import GPT, Tokenizer, make_loaders
from gpt.training import evaluate

SHAPE = dict(max_seq_len=64, emb_size=128, num_heads=4, num_layers=4, dropout=0.0)
BATCH = 12
QUICK_STEPS = 10  # --quick: a smoke run of every row, not a figure
NANOGPT = dict(
    optimizer="adamw",
    learning_rate=1e-3,
    min_lr_ratio=0.1,
    warmup_steps=100,
    betas=(0.9, 0.99),
    weight_decay=0.1,
    grad_clip=1.0,
    ema_decay=None,
)
ROWS = {
    "default": ("bytes", {}),
    "adamw": ("bytes", {"optimizer": "adamw"}),
    "nanogpt": ("bytes", NANOGPT),
    "bpe": ("bpe", {}),
    "bf16": ("bytes", {"precision": "bf16"}),
}
ROW_STRIDES = {"nanogpt": 1}
"""Rows whose train windows are not `make_loaders`' default: nanoGPT samples windows at random
positions, as a window at every position shuffled does."""
LABELS = {
    "default": "default fit (Muon + AdamW), bytes",
    "adamw": "default fit with optimizer='adamw', bytes",
    "nanogpt": "nanoGPT config, bytes",
    "bpe": "default fit, BPE 4096",
    "bf16": "default fit, bf16 autocast, bytes",
}


def run(
    row: str,
    text: str,
    steps: int,
    seed: int,
    fit_overrides: dict | None = None,
    model_overrides: dict | None = None,
    batch: int = BATCH,
    stride: int | None = None,
    patch: str | None = None,
    fixed_grid: bool = False,
) -> dict:
    """One training run and its validation. The context is `model_overrides`' `max_seq_len` (else
    SHAPE's); the validation evaluates each held-out token once, in windows of that context. Train
    windows start every `stride` tokens (`make_loaders`' `train_stride`; None: its default), from an
    offset that changes each epoch, or with `fixed_grid` from the text's start every epoch (the
    fourth round's "disjoint windows"); `patch` names a `bench.trial_patches.PATCHES` change applied
    to the model before training."""
    tokenizer_kind, options = ROWS[row]
    stride = ROW_STRIDES.get(row) if stride is None else stride
    seq_len = {**SHAPE, **(model_overrides or {})}["max_seq_len"]
    split = int(len(text) * 0.9)
    train_text, valid_text = text[:split], text[split:]
    tokenizer = Tokenizer() if tokenizer_kind == "bytes" else Tokenizer.train(train_text)
    train_ids = torch.tensor(tokenizer.encode(train_text))
    valid_ids = torch.tensor(tokenizer.encode(valid_text))
    ids = torch.cat([train_ids, valid_ids])
    valid_fraction = len(valid_ids) / len(ids)
    train_loader, valid_loader = make_loaders(ids, seq_len, batch, valid_fraction, seed=seed, train_stride=stride)
    if fixed_grid:
        train_loader = fixed_grid_loader(train_loader, stride)
    torch.manual_seed(seed)
    model = GPT(vocab_size=tokenizer.vocab_size, **{**SHAPE, **(model_overrides or {})})
    if patch is not None:
        PATCHES[patch](model)
    started = time.perf_counter()
    options = {"num_epoch": None, **options, **(fit_overrides or {})}  # None: the epochs `steps` need
    model.fit(train_loader, max_steps=steps, progress=False, log_every=None, **options)
    seconds = time.perf_counter() - started
    valid_loss = evaluate(model, valid_loader)
    # The validation windows cover all but the last (len - 1) % seq_len tokens: scale nats per token to bytes.
    covered = (len(valid_ids) - 1) // seq_len * seq_len
    covered_bytes = len(tokenizer.decode(valid_ids[1 : covered + 1].tolist()).encode())
    return dict(
        train=model.history.loss[-1],
        train_epoch=model.train_loss[-1],
        valid=valid_loss,
        valid_per_byte=valid_loss * covered / covered_bytes,
        tokens=model.history.tokens_seen,
        seconds=seconds,
        parameters=model.num_parameters(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: %(default)s)")
    parser.add_argument(
        "--rows", default="default,adamw,nanogpt,bpe,bf16", help="comma-separated rows: " + ", ".join(ROWS)
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="seeds per row; the table gives medians (default: %(default)s)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_STEPS} steps on the text's first {QUICK_TEXT_CHARS:,} characters (a smoke run)",
    )
    parser.add_argument(
        "--fit",
        type=json.loads,
        default={},
        help="fit options for every row, as JSON (for sweeps): '{\"learning_rate\": 3e-3}'",
    )
    parser.add_argument(
        "--model",
        type=json.loads,
        default={},
        help="GPTConfig fields for every row, as JSON: '{\"tie_embeddings\": false}'",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    steps = QUICK_STEPS if args.quick else args.steps
    text = training_text(args.quick)
    rows = args.rows.split(",")
    results: dict[str, list[dict]] = {row: [] for row in rows}
    for seed in range(args.repeats):  # interleaved: every row once per seed
        for row in rows:
            results[row].append(run(row, text, steps, seed, args.fit, args.model))
    table = []
    for row in rows:
        med = {key: statistics.median(r[key] for r in results[row]) for key in results[row][0]}
        span = (
            f"{min(r['valid_per_byte'] for r in results[row]):.3f}-{max(r['valid_per_byte'] for r in results[row]):.3f}"
        )
        table.append(
            [
                LABELS[row],
                f"{med['train']:.3f}",
                f"{med['valid']:.3f}",
                f"{med['valid_per_byte']:.3f}",
                span,
                f"{med['tokens']:,.0f}",
                f"{med['seconds']:.0f}",
            ]
        )
    print(f"Quality, {steps} steps, batch {BATCH}, context {SHAPE['max_seq_len']}, {args.repeats} seed(s)")
    print_table(
        [
            "run",
            "train loss (last step)",
            "valid loss / token",
            "valid nats / byte",
            "min-max",
            "tokens seen",
            "seconds",
        ],
        table,
    )
    print("\n".join(environment_lines(args.threads)))


if __name__ == "__main__":
    main()
