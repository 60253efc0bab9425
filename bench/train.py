"""Training throughput: our `GPT` against Hugging Face `GPT2LMHeadModel` (sdpa) at the same shape.

One training step = forward + cross-entropy + backward + AdamW step (fp32 weights, dropout 0) on
batch x context = 2,048 tokens, at shapes S and M of docs/performance.md. Rows:
- `ours` / `HF`: the same hand-written step for both models, `torch.optim.AdamW(params, lr=1e-3,
  betas=(0.9, 0.99), weight_decay=0.1)` with torch's default implementation choice;
- `ours bf16` / `HF bf16`: the same step under `torch.autocast("cpu", dtype=torch.bfloat16)`;
- `ours fit()`: the library's own loop with `optimizer="adamw"` like the other rows (`model.fit`:
  its AdamW (foreach), grad clipping, LR
  schedule, callbacks and data loader), timed between steps by a callback;
- `fp32 / bf16 matmul ceiling`: GFLOP/s of a 2048 x 2048 matmul, measured between the rounds.

FLOPs per token = 6 * N + 12 * layers * context * emb, N = parameters without the position table
(nanoGPT's MFU estimate; the attention term counts the full T x T products). "share" = achieved
FLOP/s / the measured ceiling of the same precision (bf16 rows: of the bf16 ceiling, and of fp32).

Every round runs every row once (interleaved, the order rotating), after warm-up steps; the table
gives medians (min-max) over rounds, and ratios are medians of the per-round ratios.

    python bench/train.py [--shapes S,M] [--threads 1] [--repeats 5] [--steps N] [--rows ...] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.common import (
    SHAPES,
    environment_lines,
    flops_per_token,
    hf_gpt2,
    matmul_gflops,
    median_span,
    model_kwargs,
    parse_threads,
    print_table,
    ratio_span,
    set_threads,
)
from gpt import GPT, Callback

ROWS = ("ours", "hf", "ours-bf16", "hf-bf16", "ours-fit")
LABELS = {
    "ours": "ours fp32",
    "hf": "HF GPT2LMHeadModel fp32 (sdpa)",
    "ours-bf16": "ours bf16 autocast",
    "hf-bf16": "HF bf16 autocast",
    "ours-fit": "ours fp32 via `fit()` (library loop)",
}
LR, BETAS, WEIGHT_DECAY = 1e-3, (0.9, 0.99), 0.1
DEFAULT_STEPS = {"S": 8, "M": 3}


def build(row: str, shape: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if row.startswith("hf"):
        return hf_gpt2(shape).train()
    return GPT(**model_kwargs(shape), dropout=0.0).train()


def batches(shape: str, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` random `(inputs, targets)` batches of the shape's batch x context."""
    s = SHAPES[shape]
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(0, s["vocab_size"], (s["batch"], s["max_seq_len"] + 1), generator=g)
        out.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
    return out


def manual_stepper(row: str, model: torch.nn.Module, data: list) -> Callable[[int], float]:
    """`run(n)`: n training steps, returns their seconds."""
    is_hf, bf16 = row.startswith("hf"), row.endswith("bf16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    position = [0]

    def step() -> None:
        inputs, targets = data[position[0] % len(data)]
        position[0] += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=inputs, use_cache=False).logits if is_hf else model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def run(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            step()
        return time.perf_counter() - started

    return run


class _StepClock(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_begin(self, trainer) -> None:  # noqa: ANN001
        self.times = [time.perf_counter()]

    def on_batch_end(self, trainer) -> None:  # noqa: ANN001
        self.times.append(time.perf_counter())


def fit_stepper(model: GPT, data: list) -> Callable[[int], float]:
    """`run(n)`: one `fit` call of 1 + n steps (a fresh optimizer each call); the seconds of the last n."""
    inputs = torch.cat([x for x, _ in data])
    targets = torch.cat([y for _, y in data])
    batch = data[0][0].shape[0]

    def run(n: int) -> float:
        reps = -(-(n + 1) * batch // len(inputs))
        dataset = torch.utils.data.TensorDataset(inputs.repeat(reps, 1), targets.repeat(reps, 1))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, drop_last=True)
        clock = _StepClock()
        model.fit(
            loader, max_steps=n + 1, learning_rate=LR, betas=BETAS, weight_decay=WEIGHT_DECAY,
            optimizer="adamw", precision="fp32", progress=False, log_every=None, callbacks=[clock],
        )  # fmt: skip
        return clock.times[-1] - clock.times[1]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="S,M", help="comma-separated shapes from S, M (default: %(default)s)")
    parser.add_argument("--threads", type=parse_threads, default=[1], help="torch threads, e.g. 1 or 1,2 (default: 1)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None, help=f"timed steps a row a round (default: {DEFAULT_STEPS})")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row first (default: %(default)s)")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    parser.add_argument("--quick", action="store_true", help="shape S only, 1 round of 2 steps (a smoke run)")
    args = parser.parse_args()
    shapes = ["S"] if args.quick else args.shapes.split(",")
    repeats = 1 if args.quick else args.repeats
    rows = [r for r in args.rows.split(",") if r]
    for name in rows:
        if name not in ROWS:
            parser.error(f"unknown row {name!r}; choose from {', '.join(ROWS)}")
    for shape in shapes:
        if shape not in ("S", "M"):
            parser.error(f"unknown training shape {shape!r}; choose from S, M")
    set_threads(args.threads[0])

    table = []
    for shape in shapes:
        steps = 2 if args.quick else (args.steps or DEFAULT_STEPS[shape])
        tokens_per_step = SHAPES[shape]["batch"] * SHAPES[shape]["max_seq_len"]
        fpt = flops_per_token(shape)
        data = batches(shape, 4)
        models = {row: build(row.removesuffix("-fit"), shape) for row in rows}
        runners = {
            row: fit_stepper(models[row], data) if row == "ours-fit" else manual_stepper(row, models[row], data)
            for row in rows
        }
        speed = {(t, row): [] for t in args.threads for row in rows}
        ceiling = {(t, dtype): [] for t in args.threads for dtype in ("fp32", "bf16")}
        for t in args.threads:  # warm-up: allocator, optimizer state, oneDNN kernels
            set_threads(t)
            for row in rows:
                runners[row](0 if row == "ours-fit" else args.warmup)
        for round_ in range(repeats):
            for t in args.threads:
                set_threads(t)
                order = rows[round_ % len(rows) :] + rows[: round_ % len(rows)]
                for row in order:
                    speed[t, row].append(steps * tokens_per_step / runners[row](steps))
                ceiling[t, "fp32"].append(matmul_gflops(torch.float32, min_seconds=0.3))
                ceiling[t, "bf16"].append(matmul_gflops(torch.bfloat16, min_seconds=0.3))

        for t in args.threads:
            fp32_peak = statistics.median(ceiling[t, "fp32"])
            bf16_peak = statistics.median(ceiling[t, "bf16"])
            for row in rows:
                values = speed[t, row]
                gflops = statistics.median(values) * fpt / 1e9
                if row.endswith("bf16"):
                    share = f"{gflops / bf16_peak:.0%} of bf16 ({gflops / fp32_peak:.0%} of fp32)"
                else:
                    share = f"{gflops / fp32_peak:.0%}"
                if row == "hf":
                    vs_hf = "1"
                else:
                    vs_hf = ratio_span(values, speed[t, "hf"]) if "hf" in rows else "-"
                table.append([shape, str(t), LABELS[row], median_span(values), vs_hf, f"{gflops:,.1f}", share])
            for dtype, values in (("fp32", ceiling[t, "fp32"]), ("bf16", ceiling[t, "bf16"])):
                table.append(
                    [
                        shape,
                        str(t),
                        f"{dtype} matmul ceiling (2048^3), as tokens/s",
                        median_span([v * 1e9 / fpt for v in values]),
                        "-",
                        median_span(values, "{:,.1f}"),
                        "100%",
                    ]
                )
        del models, runners

    print(
        f"Training throughput, fp32 weights, dropout 0, AdamW lr {LR}; batch x context = 2,048 tokens a step; "
        f"{repeats} interleaved rounds; FLOPs/token = 6*N(no wpe) + 12*layers*ctx*emb "
        + ", ".join(f"{s}: {flops_per_token(s) / 1e6:.2f} MFLOP" for s in shapes)
    )
    header = ["shape", "threads", "run", "tokens/s median (min-max)", "÷ HF fp32", "GFLOP/s", "share of ceiling"]
    print_table(header, table)
    print("\n".join(environment_lines(",".join(map(str, args.threads)))))


if __name__ == "__main__":
    main()
