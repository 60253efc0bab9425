"""The web app's model presets trained the way the app trains them, with today's training defaults
against those before the ablation (docs/decisions.md), in the same steps.

For each preset (`webapp.training.MODEL_PRESETS`) and sample corpus, the app's own data path
(`prepare_data`: a BPE tokenizer trained on the text, its last 10% held out) and model
(`build_model`) train for the preset's steps with the app's `fit` options (learning rate, evaluations
every `eval_interval` steps on `EVAL_BATCHES` batches) and its checkpoints: the model a run ends
with is its best evaluation's (`ModelCheckpoint(restore_best=True)`), as in the app, where a long
run on a small text overfits. Every round trains each variant once (interleaved, the order
rotating; round r uses seed `--first-seed` + r), then measures the final model on the whole
held-out split. Variants (`VARIANTS`):
- `before`: `fit`'s defaults before the ablation: one learning rate for Muon and AdamW, no weight
  average, a training window at every position (`train_stride=1`);
- `now`: today's app: today's defaults (Muon at 3x, the weight average 0.99, windows that do not
  overlap and shift each epoch), and the run stops once `EARLY_STOP_EVALUATIONS` evaluations in a
  row found no lower validation loss; `now (every step)` trains all the preset's steps; `now (fused
  qkv)` is the app before Muon took the query, key and value weights apart (`muon_qkv_apart=False`),
  and `now (beta1 0.9)` the app before AdamW's beta1 0.8 beside Muon;
- `window at every position`, `fixed disjoint windows`: today's `fit` on the windows before, and
  on windows that do not overlap but start from the text's start every epoch.

The table gives the median held-out loss (nats per token of the preset's tokenizer, the same for
every variant) and the median wall time of the training, and "vs before" the median of the
per-round differences.

    python bench/presets.py [--presets tiny,small] [--corpus shakespeare] [--rounds 3] [--first-seed 0] [--threads 1] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import dataclasses
import statistics
import tempfile
import time
from typing import NamedTuple

from bench.common import environment_lines, fixed_grid_loader, median_span, print_table, set_threads
from gpt import EarlyStopping, ModelCheckpoint, make_loaders
from gpt.training import evaluate
from webapp.corpus import sample_corpus, samples
from webapp.settings import Settings
from webapp.training import (
    EARLY_STOP_EVALUATIONS,
    EVAL_BATCHES,
    MODEL_PRESETS,
    VALID_FRACTION,
    TrainConfig,
    build_model,
    checkpoint_interval,
    eval_interval,
    prepare_data,
)

BETA1_0_9 = {"betas": (0.9, 0.99)}
BEFORE = {"muon_lr_scale": 1.0, "ema_decay": None, "muon_qkv_apart": False, **BETA1_0_9}
"""`fit`'s defaults before the ablation of docs/decisions.md (d997162)."""


class Variant(NamedTuple):
    fit_options: dict
    train_stride: int | None  # None: make_loaders' default; 0: the context
    fixed_grid: bool = False  # windows from the text's start every epoch
    early_stop: bool = False  # stop as the app does (`EARLY_STOP_EVALUATIONS`)


VARIANTS: dict[str, Variant] = {
    "before": Variant(BEFORE, 1),
    "now": Variant({}, None, early_stop=True),  # today's app
    "now (every step)": Variant({}, None),  # today's defaults, without the app's early stop
    "now (fused qkv)": Variant({"muon_qkv_apart": False, **BETA1_0_9}, None, early_stop=True),  # before 24d49b5
    "now (beta1 0.9)": Variant(BETA1_0_9, None, early_stop=True),  # the app before AdamW's beta1 0.8
    "window at every position": Variant({}, 1),  # today's fit, the windows before
    "fixed disjoint windows": Variant({}, 0, fixed_grid=True),  # today's fit, windows that do not overlap nor shift
}


def train_once(config: TrainConfig, corpus_name: str, variant: str, seed: int) -> tuple[float, float]:
    """(held-out loss, training seconds) of one app-style training run of `config`."""
    fit_options, stride, fixed_grid, early_stop = VARIANTS[variant]
    data = prepare_data(sample_corpus(corpus_name), config)
    ids = [*_ids(data.train_loader), *_ids(data.valid_loader)]
    stride = config.context if stride == 0 else stride
    train_loader, valid_loader = make_loaders(
        ids, config.context, config.batch_size, VALID_FRACTION, seed=seed, train_stride=stride
    )
    if fixed_grid:
        train_loader = fixed_grid_loader(train_loader, stride)
    model = build_model(config, data.tokenizer, Settings(artifacts=Path("unused")), seed=seed)
    # As the app: checkpoints every `checkpoint_interval` steps, and the model ends with the best one.
    saver = ModelCheckpoint(every_n_steps=checkpoint_interval(config.steps), keep_last=2, restore_best=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        model.fit(
            train_loader,
            valid_loader,
            num_epoch=None,  # as the app: the epochs the steps need
            learning_rate=config.learning_rate,
            callbacks=[saver, *([EarlyStopping(patience=EARLY_STOP_EVALUATIONS)] if early_stop else [])],
            checkpoint_dir=folder,
            max_steps=config.steps,
            eval_interval=eval_interval(config.steps),
            eval_batches=EVAL_BATCHES,
            progress=False,
            log_every=None,
            **fit_options,
        )
    seconds = time.perf_counter() - started
    print(f"  kept step {saver.best_step}, stopped at step {model.history.steps[-1]} of {config.steps}", flush=True)
    return evaluate(model, valid_loader), seconds


def _ids(loader) -> list[int]:
    """The token ids behind a loader `make_loaders` built (its dataset's whole split)."""
    return loader.dataset.data.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small", help="comma-separated: " + ", ".join(MODEL_PRESETS))
    parser.add_argument("--corpus", default="shakespeare", help="a sample corpus: " + ", ".join(samples()))
    parser.add_argument("--variants", default="before,now", help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds, one seed each (default: %(default)s)"
    )
    parser.add_argument("--first-seed", type=int, default=0, help="round r uses seed first-seed + r (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead of the preset's")
    parser.add_argument("--quick", action="store_true", help="the tiny preset, 5 steps, 1 round (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.presets, args.steps, args.rounds = "tiny", 5, 1
    set_threads(args.threads)
    variants = args.variants.split(",")
    rows = []
    for preset in args.presets.split(","):
        config = MODEL_PRESETS[preset]
        if args.steps is not None:
            config = dataclasses.replace(config, steps=args.steps)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            seed = args.first_seed + round_
            for name in variants[round_ % len(variants) :] + variants[: round_ % len(variants)]:
                loss, seconds = train_once(config, args.corpus, name, seed=seed)
                results[name].append((loss, seconds))
                print(f"{preset} {name} seed {seed}: {loss:.4f} nats/token in {seconds:.1f} s", flush=True)
        base = [loss for loss, _ in results[variants[0]]]
        for name in variants:
            losses = [loss for loss, _ in results[name]]
            rows.append(
                [
                    preset,
                    name,
                    median_span(losses, "{:.3f}"),
                    f"{statistics.median(b - a for a, b in zip(base, losses)):+.3f}",
                    median_span([s for _, s in results[name]], "{:.0f}"),
                ]
            )
    steps = "the preset's" if args.steps is None else args.steps
    print(f"\ncorpus: {args.corpus}, steps: {steps}, {args.rounds} rounds")
    print_table(["preset", "variant", "held-out nats/token", f"vs {variants[0]}", "seconds"], rows)
    print("\n".join(environment_lines(args.threads)))


if __name__ == "__main__":
    main()
