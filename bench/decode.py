"""Greedy decoding speed: batch 1, a 32-token prompt + 200 new tokens, at shapes S, M and L.

Rows (random weights; every model of a shape has the same shape):
- `torch, no cache`: recompute the whole context for every new token (the loop in this file,
  nanoGPT-style: LM head on the last position only);
- `torch, KV cache`: our `model.generate(ids, 200)` (the shared decoding loop + `decode_step`);
- `HF generate`: `GPT2LMHeadModel.generate(use_cache=True, do_sample=False)` (sdpa), the reference;
- `onnxruntime fp32` / `int8`: `export.to_onnx(model, dir, precision=...)` (built for the CPU provider) then
  `OnnxGPT.load(dir, threads=t).generate(ids, 200)` on the CPU execution provider;
- batch 8 at M (torch KV, HF, onnxruntime fp32 and int8): tokens/s counts all 8 rows;
- CUDA (torch KV cache, HF generate, onnxruntime CUDA with IOBinding, the fp32 graph exported for
  the CUDA provider) only when a GPU is present.

S and M are built with context 256 for decoding (performance.md), L with 512. tokens/s =
batch x new tokens / seconds of the whole call (prefill included). The export time is the whole
`to_onnx` call (export, checks, int8 quantization, parity run). Every round runs every row once
per thread count (interleaved, the order rotating); medians (min-max) over rounds; ratios are
medians of per-round ratios.

    python bench/decode.py [--shapes S,M,L] [--threads 1,2] [--repeats 3] [--new-tokens 200] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import tempfile
import time
import warnings
from collections.abc import Callable

import torch

from bench.common import (
    DECODE_CONTEXT,
    SHAPES,
    environment_lines,
    hf_gpt2,
    median_span,
    mib,
    model_kwargs,
    parse_threads,
    print_table,
    ratio_span,
    set_threads,
)
from gpt import GPT, Tokenizer

PROMPT = 32
CPU_ROWS = ("nocache", "kv", "hf", "ort-fp32", "ort-int8")
BATCH8_ROWS = ("kv", "hf", "ort-fp32", "ort-int8")
CUDA_ROWS = ("cuda-kv", "cuda-hf", "cuda-ort")
LABELS = {
    "nocache": "torch, no cache (recompute)",
    "kv": "torch, KV cache (ours `generate`)",
    "hf": "HF `generate(use_cache=True)`",
    "ort-fp32": "onnxruntime fp32 (CPU)",
    "ort-int8": "onnxruntime int8 (CPU)",
    "cuda-kv": "torch CUDA, KV cache (ours)",
    "cuda-hf": "HF generate, CUDA",
    "cuda-ort": "onnxruntime CUDA fp32 (IOBinding)",
}


@torch.inference_mode()
def generate_without_cache(model: GPT, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding that runs the whole (cropped) context through the model for every token."""
    context = model.max_seq_len
    for _ in range(new_tokens):
        logits = model(ids[:, -context:], last_logits_only=True)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def hf_generate(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )
    if out.shape[1] != ids.shape[1] + new_tokens:
        raise RuntimeError(f"HF generate stopped early: {out.shape[1] - ids.shape[1]} of {new_tokens} tokens")
    return out


def export(model: GPT, folder: Path, precision: str, provider: str = "cpu") -> tuple[float, int]:
    """`to_onnx` for `provider` into `folder`; its seconds and the size of `model.onnx` (+ external data, if any)."""
    from export import to_onnx

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        to_onnx(model, folder, precision=precision, provider=provider, portable=False, web=False)
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in folder.glob("model_fast.onnx*"))
    return seconds, size


def random_ids(vocab: int, batch: int) -> torch.Tensor:
    """A `[batch, PROMPT]` random prompt, the same for every model of a shape."""
    return torch.randint(0, vocab, (batch, PROMPT), generator=torch.Generator().manual_seed(batch))


def timed(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> float:
    started = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - started


def measure_shape(
    shape: str, rows: list[str], args: argparse.Namespace, repeats: int, new_tokens: int, tmp: Path
) -> list[list[str]]:
    """The table rows of one shape: every CPU row at every thread count, then the CUDA rows."""
    has_gpu = torch.cuda.is_available()
    table = []
    context = DECODE_CONTEXT[shape]
    torch.manual_seed(0)
    ours = GPT(**model_kwargs(shape, context), dropout=0.0).eval()
    ours.tokenizer = Tokenizer()  # to_onnx writes one; byte-level ids fit every vocabulary here
    hf = hf_gpt2(shape, context).eval()
    batches = [1, 8] if shape == "M" and not args.no_batch8 else [1]
    vocab = SHAPES[shape]["vocab_size"]
    prompts = {b: random_ids(vocab, b) for b in batches}

    exports: dict[str, tuple[float, int]] = {}
    sessions: dict[tuple[str, int], object] = {}
    for precision in ("fp32", "int8"):
        if f"ort-{precision}" in rows:
            set_threads(args.threads[0])
            exports[precision] = export(ours, tmp / f"{shape}-{precision}", precision)
    from export import OnnxGPT

    for precision in exports:
        for t in args.threads:
            sessions[precision, t] = OnnxGPT.load(tmp / f"{shape}-{precision}", threads=t)

    def runner(row: str, batch: int, t: int, tokens: int = new_tokens) -> Callable[[], object]:
        ids = prompts[batch]
        if row == "nocache":
            return lambda: generate_without_cache(ours, ids, tokens)
        if row == "kv":
            return lambda: ours.generate(ids, tokens)
        if row == "hf":
            return lambda: hf_generate(hf, ids, tokens)
        session = sessions[row.removeprefix("ort-"), t]
        return lambda: session.generate(ids, tokens)

    cases = [(1, row) for row in rows] + [(8, row) for row in BATCH8_ROWS if row in rows and 8 in batches]
    speed: dict[tuple[int, int, str], list[float]] = {(t, b, r): [] for t in args.threads for b, r in cases}
    for t in args.threads:  # warm-up: one short call each
        set_threads(t)
        for batch, row in cases:
            runner(row, batch, t, tokens=4)()
    for round_ in range(repeats):
        for t in args.threads:
            set_threads(t)
            k = round_ % len(cases)
            for batch, row in cases[k:] + cases[:k]:
                seconds = timed(runner(row, batch, t))
                speed[t, batch, row].append(batch * new_tokens / seconds)

    fp32_size = exports.get("fp32", (0, 0))[1]
    for batch in batches:
        for t in args.threads:
            for b, row in cases:
                if b != batch:
                    continue
                values = speed[t, batch, row]
                ref = speed.get((t, batch, "hf"))
                vs_hf = "1" if row == "hf" else ratio_span(values, ref) if ref else "-"
                vs_fp32, export_s, size = "-", "-", "-"
                if row.startswith("ort-"):
                    precision = row.removeprefix("ort-")
                    export_s = f"{exports[precision][0]:.1f}"
                    size = mib(exports[precision][1])
                    if precision == "int8" and ("ort-fp32" in rows):
                        vs_fp32 = ratio_span(values, speed[t, batch, "ort-fp32"])
                        size += f" ({fp32_size / exports['int8'][1]:.2f}x smaller)"
                row_cells = [shape, str(batch), str(t), LABELS[row], median_span(values), vs_hf, vs_fp32]
                table.append(row_cells + [export_s, size])

    if has_gpu:
        cuda_dir = tmp / f"{shape}-cuda"  # the fp32 graph built for the CUDA provider
        export(ours, cuda_dir, "fp32", provider="cuda")
        table.extend(cuda_rows(shape, ours, hf, cuda_dir, prompts[1], new_tokens, repeats))
    else:
        for row in CUDA_ROWS:
            table.append([shape, "1", "-", LABELS[row], "no GPU", "-", "-", "-", "-"])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="S,M,L", help="comma-separated shapes from S, M, L (default: %(default)s)")
    parser.add_argument("--threads", type=parse_threads, default=[1, 2], help="thread counts, e.g. 1,2 (default: 1,2)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens generated per call (default: %(default)s)")
    parser.add_argument("--rows", default=",".join(CPU_ROWS), help="CPU rows: " + ", ".join(CPU_ROWS))
    parser.add_argument("--no-batch8", action="store_true", help="skip the batch-8 rows at M")
    parser.add_argument("--quick", action="store_true", help="shape S only, 1 round of 20 tokens (a smoke run)")
    args = parser.parse_args()
    shapes = ["S"] if args.quick else args.shapes.split(",")
    repeats = 1 if args.quick else args.repeats
    new_tokens = 20 if args.quick else args.new_tokens
    rows = [r for r in args.rows.split(",") if r]
    for name in rows:
        if name not in CPU_ROWS:
            parser.error(f"unknown row {name!r}; choose from {', '.join(CPU_ROWS)}")
    for shape in shapes:
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    logging.getLogger("export").setLevel(logging.WARNING)
    set_threads(args.threads[0])

    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        table = [row for shape in shapes for row in measure_shape(shape, rows, args, repeats, new_tokens, Path(tmp))]

    print(
        f"Greedy decode, {PROMPT}-token prompt + {new_tokens} new tokens, random weights, "
        f"{repeats} interleaved rounds; tokens/s = batch x new tokens / seconds (prefill included)"
    )
    print_table(
        ["shape", "batch", "threads", "run", "tokens/s median (min-max)", "÷ HF generate", "÷ ORT fp32", "export s"]
        + [".onnx size"],
        table,
    )
    print("\n".join(environment_lines(",".join(map(str, args.threads)))))


def cuda_rows(
    shape: str,
    ours: GPT,
    hf: torch.nn.Module,
    onnx_dir: Path | None,
    ids: torch.Tensor,
    new_tokens: int,
    repeats: int,
    device: str = "cuda",
) -> list[list[str]]:
    """torch CUDA (ours, HF) and onnxruntime CUDA with IOBinding, interleaved, batch 1.
    (`device` is a parameter only so that the code path can be smoke-tested on the CPU.)"""
    from export import OnnxGPT, ProviderError

    sync = torch.cuda.synchronize if device == "cuda" else None
    gpu_ours = GPT(**ours.config.to_dict()).to(device).eval()
    gpu_ours.load_state_dict(ours.state_dict())
    gpu_hf = hf.to(device)
    gpu_ids = ids.to(device)
    runs: dict[str, Callable[[], object]] = {
        "cuda-kv": lambda: gpu_ours.generate(gpu_ids, new_tokens),
        "cuda-hf": lambda: hf_generate(gpu_hf, gpu_ids, new_tokens),
    }
    notes = {}
    if onnx_dir is not None:
        try:
            session = OnnxGPT.load(onnx_dir, provider="cuda")
            runs["cuda-ort"] = lambda: session.generate(ids, new_tokens)
        except ProviderError as err:
            notes["cuda-ort"] = f"unavailable: {str(err).split(':')[0]}"
    speed: dict[str, list[float]] = {row: [] for row in runs}
    for fn in runs.values():
        fn()
    if sync is not None:
        sync()
    names = list(runs)
    for round_ in range(repeats):
        k = round_ % len(names)
        for row in names[k:] + names[:k]:
            speed[row].append(new_tokens / timed(runs[row], sync))
    hf.to("cpu")
    out = []
    for row in CUDA_ROWS:
        if row in speed:
            vs_hf = "1" if row == "cuda-hf" else ratio_span(speed[row], speed["cuda-hf"])
            out.append([shape, "1", "-", LABELS[row], median_span(speed[row]), vs_hf, "-", "-", "-"])
        else:
            out.append([shape, "1", "-", LABELS[row], notes.get(row, "not run"), "-", "-", "-", "-"])
    return out


if __name__ == "__main__":
    main()
