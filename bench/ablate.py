"""One change at a time against `fit`'s defaults, in nanoGPT's CPU budget (`bench/quality.py`).

Each run trains the byte-level model of `bench/quality.py` (4 layers, 4 heads, emb 128, context
64, batch 12, 2,000 steps, held-out plays) with one named variant (`VARIANTS`: `GPTConfig` fields
and `fit` options on top of the defaults) and one seed, and prints validation nats/byte, training
tokens/s and parameters. Runs are appended as JSON lines to `--log`, so a sweep can be stopped and
continued and the table (`--table`) summarises every run logged so far: mean, standard deviation and
min-max over seeds, and the difference from the `--baseline` variant's mean.

    python bench/ablate.py --variants default,relu2 --seeds 0,1,2 [--log runs/ablate.jsonl] [--threads 1]
    python bench/ablate.py --table [--log runs/ablate.jsonl]
    python bench/ablate.py --variants custom --model '{"tie_embeddings": false}' --fit '{"learning_rate": 6e-3}'
    python bench/ablate.py --speed --variants default,relu2 [--rounds 5] [--speed-steps 100]

`--speed` measures training tokens/s alone, without the validation: every round trains each
variant for `--speed-steps` steps (a fresh model, same budget shape and data), interleaved with the
order rotating, so the variants share the machine's load; it prints medians and the median of the
per-round ratios to the first variant. The quality runs' own tokens/s are timed one run after
another and, on a shared machine, are only indicative.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import statistics
import subprocess
import time

import torch

from bench.common import (
    QUICK_TEXT_CHARS,
    REPO,
    environment_lines,
    fixed_grid_loader,
    median_span,
    print_table,
    ratio_span,
    set_threads,
    shakespeare_text,
    training_text,
)
from bench.quality import BATCH, QUICK_STEPS, SHAPE, run
from gpt import GPT, Tokenizer, make_loaders

NO_EMA = {"ema_decay": None}
"""`fit`'s defaults of the second and third rounds (2026-12-07) differ from today's in this: no weight average."""
ONE_LR = {**NO_EMA, "muon_lr_scale": 1.0, "embedding_lr_scale": 1.0}
"""`fit`'s defaults before the first round: one learning rate for every parameter (d997162)."""

VARIANTS: dict[str, tuple[dict, dict]] = {
    # name: (GPTConfig fields, fit options), on top of today's defaults. Each row keeps the
    # defaults it was measured against (ONE_LR, NO_EMA), so a rerun repeats its logged figure.
    # First round: one thing changed from the defaults before it ("one lr").
    "default": ({}, {}),
    "custom": ({}, {}),  # --model / --fit only
    "one lr": ({}, ONE_LR),
    "adamw": ({}, {**ONE_LR, "optimizer": "adamw"}),
    "lr 6e-3": ({}, {**ONE_LR, "learning_rate": 6e-3}),
    "lr 9e-3": ({}, {**ONE_LR, "learning_rate": 9e-3}),
    "lr 1.5e-3": ({}, {**ONE_LR, "learning_rate": 1.5e-3}),
    "cosine to 0": ({}, {**ONE_LR, "min_lr_ratio": 0.0}),
    "warmup 20": ({}, {**ONE_LR, "warmup_steps": 20}),
    "wd 0": ({}, {**ONE_LR, "weight_decay": 0.0}),
    "untied head": ({"tie_embeddings": False}, ONE_LR),
    "relu2": ({"activation": "relu2"}, ONE_LR),
    "zero-init proj": ({"zero_init_proj": True}, ONE_LR),
    "qk-norm": ({"qk_norm": True}, ONE_LR),
    "softcap 30": ({"logit_softcap": 30.0}, ONE_LR),
    "muon lr x2": ({}, {**ONE_LR, "muon_lr_scale": 2.0}),
    "muon lr x3": ({}, {**ONE_LR, "muon_lr_scale": 3.0}),
    "muon lr x6": ({}, {**ONE_LR, "muon_lr_scale": 6.0}),
    "embedding lr x3": ({}, {**ONE_LR, "embedding_lr_scale": 3.0}),
    "embedding lr x10": ({}, {**ONE_LR, "embedding_lr_scale": 10.0}),
    "muon x3 + embedding x3": ({}, {**NO_EMA, "muon_lr_scale": 3.0, "embedding_lr_scale": 3.0}),
    "muon momentum 0.9": ({}, {**ONE_LR, "muon_momentum": 0.9}),
    # Second and third rounds: one thing changed from the defaults then (Muon 3x, no average, "no ema").
    "no ema": ({}, NO_EMA),
    "cosine to 0 (muon x3)": ({}, {**NO_EMA, "min_lr_ratio": 0.0}),
    "warmup 20 (muon x3)": ({}, {**NO_EMA, "warmup_steps": 20}),
    "warmup 300 (muon x3)": ({}, {**NO_EMA, "warmup_steps": 300}),
    "wd 0 (muon x3)": ({}, {**NO_EMA, "weight_decay": 0.0}),
    "wd 0.3 (muon x3)": ({}, {**NO_EMA, "weight_decay": 0.3}),
    "adamw-side lr x2 (muon x3)": ({}, {**NO_EMA, "learning_rate": 6e-3, "muon_lr_scale": 1.5}),
    "muon momentum 0.9 (muon x3)": ({}, {**NO_EMA, "muon_momentum": 0.9}),
    "batch 6 x 128": ({"max_seq_len": 128}, NO_EMA, {"batch": 6}),
    "batch 3 x 256": ({"max_seq_len": 256}, NO_EMA, {"batch": 3}),
    "batch 24 x 32": ({"max_seq_len": 32}, NO_EMA, {"batch": 24}),
    "untied head (muon x3)": ({"tie_embeddings": False}, NO_EMA),
    # The weight average, measured then with `WeightEMA` (a constant decay) and now `fit`'s default
    # (`ema_decay=0.99`, its decay warming up over the first steps): "ema 0.99" is "default".
    "ema 0.99": ({}, {"ema_decay": 0.99}),
    "ema 0.995": ({}, {"ema_decay": 0.995}),
    # Fourth round: one thing changed from today's defaults (EMA 0.99); architecture changes as
    # bench-local patches (bench/trial_patches.py), built into gpt/ only if they pay.
    "disjoint windows": ({}, {"num_epoch": 2}, {"stride": 64, "fixed_grid": True}),  # 1,176 steps an epoch
    "rmsnorm": ({}, {}, {"patch": "rmsnorm"}),
    "rotary (trial patch)": ({}, {}, {"patch": "rotary"}),
    "rotary": ({"rotary": True}, {}),
    "rotary + qk-norm": ({"rotary": True, "qk_norm": True}, {}),
    "rotary + lr 6e-3": ({"rotary": True}, {"learning_rate": 6e-3}),
    "rotary + disjoint windows": ({"rotary": True}, {"num_epoch": 2}, {"stride": 64, "fixed_grid": True}),
    "value embeddings": ({}, {}, {"patch": "value embeddings"}),
}
"""The first four rounds' variants, measured with a window at every position (`make_loaders`' default
then): `variant` runs them so, unless they name their own stride."""

FIFTH_ROUND: dict[str, tuple] = {
    # On today's defaults: windows that do not overlap, shifted each epoch (`make_loaders`' default).
    "default": ({}, {}),
    "window at every position": ({}, {}, {"stride": 1}),  # the fourth round's default
    "rotary (shifting windows)": ({"rotary": True}, {}),
}
SIXTH_ROUND: dict[str, tuple] = {
    # On the defaults then (Muon on the fused query-key-value matrices), GPT-2's layout kept: a
    # position table that starts (or stays) sinusoidal, training settings not measured on top of
    # Muon, and Muon on the query, key and value weights apart, today's default.
    "default (fused qkv)": ({}, {}),  # the default until Muon took the query, key and value weights apart
    "sinusoidal positions": ({}, {}, {"patch": "sinusoidal positions"}),
    "sinusoidal positions (frozen)": ({}, {}, {"patch": "sinusoidal positions (frozen)"}),
    "sinusoidal positions x5": ({}, {}, {"patch": "sinusoidal positions x5"}),
    "sinusoidal positions x5 (frozen)": ({}, {}, {"patch": "sinusoidal positions x5 (frozen)"}),
    "no clipping": ({}, {"grad_clip": None}),
    "adamw beta2 0.95": ({}, {"betas": (0.9, 0.95)}),
    "muon lr x4": ({}, {"muon_lr_scale": 4.0}),
    "ema 0.995 (shifting windows)": ({}, {"ema_decay": 0.995}),
    "token table std 0.06": ({}, {}, {"patch": "token table std 0.06"}),
    "muon on q k v apart": ({}, {}, {"patch": "muon on q, k, v apart"}),
    "cooldown 30%": ({}, {}, {"patch": "cooldown 30%"}),
    "cooldown 50%": ({}, {}, {"patch": "cooldown 50%"}),
}
SEVENTH_ROUND: dict[str, tuple] = {
    # On today's defaults (Muon on q, k and v apart), GPT-2's layout kept: the optimizer's share of
    # each matrix and each table.
    "embeddings without decay": ({}, {}, {"patch": "embeddings without decay"}),
    "muon wd 0": ({}, {}, {"patch": "muon wd 0"}),
    "muon wd 0.2": ({}, {}, {"patch": "muon wd 0.2"}),
    "position table lr x3": ({}, {}, {"patch": "position table lr x3"}),
    "muon momentum warmup": ({}, {}, {"patch": "muon momentum warmup"}),
    "muon q k v per head": ({}, {}, {"patch": "muon q k v per head"}),
    "muon per head": ({}, {}, {"patch": "muon per head"}),
    "muon mlp in square blocks": ({}, {}, {"patch": "muon mlp in square blocks"}),
    "position table lr x10": ({}, {}, {"patch": "position table lr x10"}),
    "position table lr x30": ({}, {}, {"patch": "position table lr x30"}),
    "cosine to 0.3": ({}, {"min_lr_ratio": 0.3}),
    "cosine to 0 (today)": ({}, {"min_lr_ratio": 0.0}),
    "muon lr x2 (today)": ({}, {"muon_lr_scale": 2.0}),
    "embedding lr x3 (today)": ({}, {"embedding_lr_scale": 3.0}),
    "untied head (today)": ({"tie_embeddings": False}, {}),
    "zero-init proj (today)": ({"zero_init_proj": True}, {}),
    "orthogonal init": ({}, {}, {"patch": "orthogonal init"}),
    "muon without nesterov": ({}, {}, {"patch": "muon without nesterov"}),
    "adamw beta1 0.8": ({}, {"betas": (0.8, 0.99)}),
    "adamw beta1 0.7": ({}, {"betas": (0.7, 0.99)}),
    "adamw betas 0.8 0.95": ({}, {"betas": (0.8, 0.95)}),
    "default (beta1 0.9)": ({}, {}),  # the default until AdamW took beta1 0.8 beside Muon
}
ON_SHIFTING_WINDOWS = {**FIFTH_ROUND, **SIXTH_ROUND, **SEVENTH_ROUND}
ON_TODAYS_DEFAULTS = {"default", "custom", *SEVENTH_ROUND}
VARIANTS.update(ON_SHIFTING_WINDOWS)
"""The ablation's variants: (GPTConfig fields, fit options[, run options]), each on top of the
defaults. Run options (`bench.quality.run`): `batch` (sequences a step; with `max_seq_len` in the
GPTConfig fields it trades batch for context at the same tokens a step), `stride` (train windows
start every `stride` tokens: the context's length reads each token once an epoch; `make_loaders`
shifts them each epoch, `fixed_grid` does not) and `patch` (an
architecture change of `bench.trial_patches`)."""


FUSED_QKV = {"muon_qkv_apart": False}
"""`fit`'s default until the sixth round: Muon orthogonalised each block's query-key-value matrix whole."""
BETA1_0_9 = {"betas": (0.9, 0.99)}
"""`fit`'s default until the seventh round: AdamW's beta1 0.9 beside Muon too."""


def variant(name: str) -> tuple[dict, dict, dict]:
    """`VARIANTS[name]` as (GPTConfig fields, fit options, run options). Each variant but "default"
    (and "custom": today's defaults with --model / --fit) runs on the defaults it was measured
    against: AdamW's beta1 0.9 (`BETA1_0_9`) unless it sets its own, and before the seventh round
    Muon on the fused query-key-value matrices (`FUSED_QKV`)."""
    model, fit, *rest = VARIANTS[name]
    run = rest[0] if rest else {}
    if name not in ("default", "custom"):
        fit = {**BETA1_0_9, **fit}
    if name not in ON_TODAYS_DEFAULTS:
        fit = {**FUSED_QKV, **fit}
    if name not in ON_SHIFTING_WINDOWS:
        run = {"stride": 1, **run}
    return model, fit, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="default", help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--log", type=Path, default=REPO / "runs" / "ablate.jsonl", help="JSON lines, appended")
    parser.add_argument("--model", type=json.loads, default={}, help="extra GPTConfig fields, JSON")
    parser.add_argument("--fit", type=json.loads, default={}, help="extra fit options, JSON")
    parser.add_argument("--name", default=None, help="the name logged (default: the variant's)")
    parser.add_argument("--table", action="store_true", help="only print the table of --log")
    parser.add_argument("--baseline", default="default", help="the variant the table compares with")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_STEPS} steps, one seed, the text's first {QUICK_TEXT_CHARS:,} characters; "
        "with --speed: 1 round of 5 steps (a smoke run)",
    )
    parser.add_argument("--speed", action="store_true", help="interleaved training tokens/s only (see above)")
    parser.add_argument("--rounds", type=int, default=5, help="--speed: interleaved rounds (default: %(default)s)")
    parser.add_argument("--speed-steps", type=int, default=100, help="--speed: steps a variant a round")
    args = parser.parse_args()
    if args.speed:
        set_threads(args.threads)
        rounds, steps = (1, 5) if args.quick else (args.rounds, args.speed_steps)
        print_speed(args.variants.split(","), rounds, steps, args.model, args.fit)
        print("\n".join(environment_lines(args.threads)))
        return
    if not args.table:
        set_threads(args.threads)
        text = training_text(args.quick)
        steps = QUICK_STEPS if args.quick else args.steps
        seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
        commit = _commit()
        for seed in seeds:  # interleaved: every variant once per seed
            for name in args.variants.split(","):
                if name not in VARIANTS:
                    raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
                model, fit, data = variant(name)
                model, fit = {**model, **args.model}, {**fit, **args.fit}
                batch, seq_len = data.get("batch", BATCH), {**SHAPE, **model}["max_seq_len"]
                result = run(
                    "default", text, steps, seed, fit, model, batch, data.get("stride"), data.get("patch"),
                    data.get("fixed_grid", False),
                )  # fmt: skip
                if result["tokens"] != steps * batch * seq_len:  # stopped early (Ctrl-C, SIGTERM)
                    raise SystemExit(f"{name} seed {seed} stopped before step {steps}: not logged")
                record = dict(
                    variant=args.name or name, seed=seed, steps=steps, model=model, fit=fit, commit=commit, **result
                )
                if data:
                    record["run"] = data
                print(
                    f"{record['variant']} seed {seed}: {result['valid_per_byte']:.4f} nats/byte, "
                    f"{result['tokens'] / result['seconds']:,.0f} tokens/s, {result['parameters']:,} parameters",
                    flush=True,
                )
                args.log.parent.mkdir(parents=True, exist_ok=True)
                with args.log.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
    print_summary(args.log, args.baseline)
    print("\n".join(environment_lines(args.threads)))


def print_summary(log: Path, baseline: str = "default") -> None:
    """The table of every run in `log`, one row per variant name and step count, in logged order;
    "vs" is the difference of the mean from `baseline`'s mean, then (in brackets) the mean of the
    differences from `baseline`'s runs of the same seeds."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        runs.setdefault((record["variant"], record["steps"]), []).append(record)
    base = {s: statistics.mean(r["valid_per_byte"] for r in rs) for (v, s), rs in runs.items() if v == baseline}
    base_seed = {(s, r["seed"]): r["valid_per_byte"] for (v, s), rs in runs.items() if v == baseline for r in rs}
    rows = []
    for (variant, steps), rs in runs.items():
        losses = [r["valid_per_byte"] for r in rs]
        mean = statistics.mean(losses)
        sd = statistics.stdev(losses) if len(losses) > 1 else 0.0
        delta = f"{mean - base[steps]:+.3f}" if steps in base else "-"
        paired = [r["valid_per_byte"] - base_seed[steps, r["seed"]] for r in rs if (steps, r["seed"]) in base_seed]
        delta += f" ({statistics.mean(paired):+.3f})" if paired else ""
        speed = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        rows.append(
            [
                variant,
                str(steps),
                str(len(rs)),
                f"{mean:.3f}",
                f"{sd:.3f}",
                f"{min(losses):.3f}-{max(losses):.3f}",
                delta,
                f"{speed:,.0f}",
                f"{rs[0]['parameters']:,}",
            ]  # fmt: skip
        )
    header = ["variant", "steps", "seeds", "nats/byte mean", "sd", "min-max", f"vs {baseline} (same seeds)", "tokens/s"]
    header.append("parameters")
    print_table(header, rows)


def print_speed(names: list[str], rounds: int, steps: int, model_extra: dict, fit_extra: dict) -> None:
    """Training tokens/s of each variant, interleaved over `rounds` (the order rotating each round)."""
    ids = torch.tensor(Tokenizer().encode(shakespeare_text().read_text(encoding="utf-8")[:200_000]))
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            model_fields, fit_options, data = variant(name)
            model_fields = {**SHAPE, **model_fields, **model_extra}
            batch, seq_len = data.get("batch", BATCH), model_fields["max_seq_len"]
            loader, _ = make_loaders(ids, seq_len, batch, 0.1, seed=0, train_stride=data.get("stride"))
            if data.get("fixed_grid"):
                loader = fixed_grid_loader(loader, data["stride"])
            torch.manual_seed(r)
            model = GPT(vocab_size=Tokenizer().vocab_size, **model_fields)
            options = {"progress": False, "log_every": None, **fit_options, "num_epoch": None, **fit_extra}
            model.fit(loader, max_steps=2, **options)  # warm-up
            started = time.perf_counter()
            model.fit(loader, max_steps=steps, **options)
            speeds[name].append(steps * batch * seq_len / (time.perf_counter() - started))
    rows = [[name, median_span(speeds[name]), ratio_span(speeds[name], speeds[names[0]])] for name in names]
    print(f"Training tokens/s, {rounds} interleaved rounds of {steps} steps, batch {BATCH} x {SHAPE['max_seq_len']}")
    print_table(["variant", "tokens/s median (min-max)", f"÷ {names[0]}"], rows)


def _commit() -> str:
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return git.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
