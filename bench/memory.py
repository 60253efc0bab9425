"""Peak resident memory (RSS) of training at M and of generation at L, each in a fresh process.

Every measurement runs in its own child process (`python bench/memory.py --child KIND`), which
imports the same modules (torch, transformers, onnxruntime, gpt, export), records its RSS after the
imports and a warm-up (a few training and generation steps of tiny models of both kinds, which
loads every lazily imported module), does the work and reports its peak RSS (VmHWM from
/proc/self/status). So no measurement inflates another, and "above imports" compares the work
alone. Children:
- `train-ours` / `train-hf`: our `GPT` / HF `GPT2LMHeadModel` (sdpa) at M, fp32, dropout 0,
  3 steps of forward + backward + AdamW on batch 8 x context 256;
- `train-fit`: our model through the library's `fit` (3 steps);
- `gen-ours` / `gen-hf`: torch, our `generate` / HF `generate(use_cache=True)`, L (context 512),
  batch 1, 32-token prompt + 200 new tokens;
- `gen-ort-fp32` / `gen-ort-int8`: `OnnxGPT.load(...).generate` on an export of the same L model
  (exported beforehand by another child, whose peak is reported too).
Rounds run every child once (the order rotating); the table gives medians (min-max). `--quick`
runs two children at a time (the exports beside the training children): a peak RSS is its own
process's, so that changes no figure.

    python bench/memory.py [--threads 1] [--repeats 2] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

TRAIN_KINDS = ("train-ours", "train-hf", "train-fit")
GEN_KINDS = ("gen-ours", "gen-hf", "gen-ort-fp32", "gen-ort-int8")
LABELS = {
    "imports": "RSS after the imports (torch, transformers, onnxruntime, gpt, export), all children",
    "train-ours": "training, ours fp32 (3 steps, AdamW)",
    "train-hf": "training, HF GPT2LMHeadModel fp32 (3 steps, AdamW)",
    "train-fit": "training, ours via `fit()` (3 steps)",
    "gen-ours": "generation, torch, ours KV cache",
    "gen-hf": "generation, torch, HF `generate(use_cache=True)`",
    "gen-ort-fp32": "generation, onnxruntime fp32",
    "gen-ort-int8": "generation, onnxruntime int8",
    "export-fp32": "export `to_onnx` fp32 (setup, once)",
    "export-int8": "export `to_onnx` int8 (setup, once)",
}
STEPS, PROMPT, NEW_TOKENS = 3, 32, 200


def _status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(kind: str, shape: str, threads: int, folder: str | None) -> None:
    """Run one measurement in this (fresh) process and print `{"imports": bytes, "peak": bytes}`."""
    import warnings

    warnings.simplefilter("ignore")
    import onnxruntime  # noqa: F401
    import torch
    import torch.nn.functional as F
    import transformers.generation.utils  # noqa: F401  (lazy modules loaded before the baseline)
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: F401

    import export
    from bench.common import DECODE_CONTEXT, SHAPES, hf_gpt2, model_kwargs, set_threads
    from gpt import GPT, Tokenizer

    set_threads(threads)
    _warm_up(torch, F, GPT, GPT2Config, GPT2LMHeadModel)
    after_imports = _status_bytes("VmRSS")
    torch.manual_seed(0)
    if kind.startswith("train"):
        s = SHAPES[shape]
        ids = torch.randint(0, s["vocab_size"], (s["batch"], s["max_seq_len"] + 1))
        inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        if kind == "train-fit":
            model = GPT(**model_kwargs(shape), dropout=0.0)
            data = torch.utils.data.TensorDataset(inputs.repeat(STEPS, 1), targets.repeat(STEPS, 1))
            loader = torch.utils.data.DataLoader(data, batch_size=s["batch"], drop_last=True)
            model.fit(loader, max_steps=STEPS, precision="fp32", progress=False, log_every=None)
        else:
            hf = kind == "train-hf"
            model = (hf_gpt2(shape) if hf else GPT(**model_kwargs(shape), dropout=0.0)).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
            for _ in range(STEPS):
                logits = model(input_ids=inputs, use_cache=False).logits if hf else model(inputs)
                F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    else:
        context = DECODE_CONTEXT[shape]
        prompt = torch.randint(0, SHAPES[shape]["vocab_size"], (1, PROMPT))
        if kind.startswith("export"):
            model = GPT(**model_kwargs(shape, context), dropout=0.0).eval()
            model.tokenizer = Tokenizer()
            export.to_onnx(model, folder, precision=kind.removeprefix("export-"), portable=False, web=False)
        elif kind.startswith("gen-ort"):
            model = export.OnnxGPT.load(Path(folder) / kind.removeprefix("gen-ort-"), threads=threads)
            model.generate(prompt, NEW_TOKENS)
        elif kind == "gen-hf":
            model = hf_gpt2(shape, context).eval()
            mask = torch.ones_like(prompt)
            out = model.generate(
                prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, pad_token_id=0
            )
            assert out.shape[1] == PROMPT + NEW_TOKENS
        else:
            model = GPT(**model_kwargs(shape, context), dropout=0.0).eval()
            model.generate(prompt, NEW_TOKENS)
    print(json.dumps({"imports": after_imports, "peak": _status_bytes("VmHWM")}))


def _warm_up(torch, F, GPT, GPT2Config, GPT2LMHeadModel) -> None:  # noqa: ANN001, N803
    """Train and generate a few steps with tiny models of both kinds, so that lazily imported modules
    and kernel caches are in memory before the baseline and count for no measurement."""
    ids = torch.randint(0, 64, (2, 9))
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, eos_token_id=None)
    for model in (GPT(vocab_size=64, max_seq_len=16, emb_size=16, num_heads=2, num_layers=1, dropout=0.0),
                  GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")):  # fmt: skip
        optimizer = torch.optim.AdamW(model.parameters())
        inputs = ids[:, :-1]
        logits = model(inputs) if isinstance(model, GPT) else model(input_ids=inputs, use_cache=False).logits
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        optimizer.step()
        model.eval()
        if isinstance(model, GPT):
            model.generate(ids[:1, :4], 3)
        else:
            mask = torch.ones(1, 4, dtype=torch.long)
            model.generate(ids[:1, :4], attention_mask=mask, max_new_tokens=3, pad_token_id=0)


def measure(kind: str, shape: str, threads: int, folder: str | None = None) -> dict[str, int]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--shape", shape]
    command += ["--threads", str(threads)]
    if folder is not None:
        command += ["--dir", folder]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise SystemExit(f"child {kind} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds (default: %(default)s)")
    parser.add_argument("--train-shape", default="M", help="training shape (default: %(default)s)")
    parser.add_argument("--gen-shape", default="L", help="generation shape (default: %(default)s)")
    parser.add_argument(
        "--quick", action="store_true", help="S, 1 round, no fit() or int8 rows, 2 children at a time (< 1 min)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.shape, args.threads, args.dir)
        return

    from bench.common import SHAPES, environment_lines, median_span, mib, print_table, set_threads

    set_threads(args.threads)

    train_shape, gen_shape = ("S", "S") if args.quick else (args.train_shape, args.gen_shape)
    repeats = 1 if args.quick else args.repeats
    children_at_once = 2 if args.quick else 1
    started = time.perf_counter()
    results: dict[str, list[dict[str, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        precisions = ("fp32",) if args.quick else ("fp32", "int8")
        train_kinds = [k for k in TRAIN_KINDS if not (args.quick and k == "train-fit")]
        gen_kinds = [k for k in GEN_KINDS if k in ("gen-ours", "gen-hf") or k.removeprefix("gen-ort-") in precisions]
        kinds = [*((k, train_shape) for k in train_kinds), *((k, gen_shape) for k in gen_kinds)]
        with ThreadPoolExecutor(max_workers=children_at_once) as pool:
            # first in the queue: one child at a time runs the exports before every other child
            exports = {
                p: pool.submit(measure, f"export-{p}", gen_shape, args.threads, f"{tmp}/{p}") for p in precisions
            }

            def measure_kind(kind_shape: tuple[str, str]) -> dict[str, int]:
                kind, shape = kind_shape
                if kind.startswith("gen-ort-"):
                    exports[kind.removeprefix("gen-ort-")].result()  # waits for the graph it loads
                return measure(kind, shape, args.threads, tmp)

            for round_ in range(repeats):
                k = round_ % len(kinds)
                order = kinds[k:] + kinds[:k]
                for (kind, _), peak in zip(order, pool.map(measure_kind, order)):
                    results.setdefault(kind, []).append(peak)
        for precision, exported in exports.items():
            results[f"export-{precision}"] = [exported.result()]

    def peak(kind: str) -> list[float]:
        return [r["peak"] / 2**20 for r in results[kind]]

    def above(kind: str) -> list[float]:
        return [(r["peak"] - r["imports"]) / 2**20 for r in results[kind]]

    def vs(kind: str, ref: str) -> str:
        a, b = sorted(above(kind))[len(above(kind)) // 2], sorted(above(ref))[len(above(ref)) // 2]
        return f"{a / b:.2f}"

    table = []
    results["imports"] = [{"peak": r["imports"], "imports": r["imports"]} for rs in results.values() for r in rs]
    exports = [(f"export-{precision}", gen_shape) for precision in precisions]
    for kind, shape in [("imports", "-"), *kinds, *exports]:
        ref = "train-hf" if kind.startswith("train") else "gen-hf" if kind.startswith("gen") else None
        ratio = vs(kind, ref) if ref else "-"
        table.append(
            [LABELS[kind], shape, median_span(peak(kind), "{:,.0f}"), median_span(above(kind), "{:,.0f}"), ratio]
        )
    for shape in ("S", "M", "L"):
        s = SHAPES[shape]
        per_token = 2 * s["num_layers"] * s["emb_size"] * 4
        label = f"KV cache fp32: 2 x layers x emb x 4 bytes per token (x {PROMPT + NEW_TOKENS} tokens)"
        table.append([label, shape, f"{per_token:,} B/token", mib(per_token * (PROMPT + NEW_TOKENS)), "-"])
    print(
        f"Peak RSS (VmHWM) per fresh process, MiB; training {STEPS} steps at {train_shape}, generation "
        f"{PROMPT}+{NEW_TOKENS} tokens at {gen_shape}; {repeats} round(s); {time.perf_counter() - started:.0f} s"
    )
    header = ["measurement", "shape", "peak RSS MiB median (min-max)", "above imports MiB", "÷ HF (above imports)"]
    print_table(header, table)
    print("\n".join(environment_lines(args.threads)))


if __name__ == "__main__":
    main()
