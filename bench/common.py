"""What every benchmark shares: thread settings, the machine description, medians and tables."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gpt.data import GetData, collate_batch

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data" / "shakespeare.txt"
"""The whole text (1.1 MB, public domain; data/README.md) the published figures were measured on."""


def shakespeare_text() -> Path:
    """The Shakespeare text every benchmark reads, data/shakespeare.txt. Prints it with its size, so a
    table always says what it was measured on."""
    if not SHAKESPEARE.is_file():
        raise SystemExit(f"{SHAKESPEARE} not found: it ships with the repository")
    print(f"text: {SHAKESPEARE} ({SHAKESPEARE.stat().st_size:,} bytes, the full text)")
    return SHAKESPEARE


QUICK_TEXT_CHARS = 100_000
"""The training benches' `--quick` smoke runs read only this many first characters of the text."""


def training_text(quick: bool = False) -> str:
    """The Shakespeare text (`shakespeare_text()`), or with `quick` its first `QUICK_TEXT_CHARS`
    characters, and a line that says so."""
    text = shakespeare_text().read_text(encoding="utf-8")
    if quick:
        text = text[:QUICK_TEXT_CHARS]
        print(f"quick: its first {len(text):,} characters only")
    return text


def fixed_grid_loader(loader: DataLoader, stride: int) -> DataLoader:
    """`loader` (a train loader of `make_loaders`) with its windows every `stride` tokens from the
    text's start in every epoch (`GetData`), as `make_loaders` built them before its windows
    shifted each epoch: the same shuffle (its generator) and batches."""
    data = loader.dataset
    return DataLoader(
        GetData(data.data, data.seq_len, stride),
        batch_size=loader.batch_size,
        shuffle=True,
        drop_last=True,
        generator=loader.generator,
        collate_fn=collate_batch,
    )


def set_threads(threads: int) -> None:
    """Use `threads` intra-op threads in torch (and one inter-op thread)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_lines(threads: int | str) -> list[str]:
    ort = version("onnxruntime-gpu") if version("onnxruntime-gpu") != "not installed" else version("onnxruntime")
    return [
        f"threads: {threads}; CPU: {cpu_model()} ({torch.get_num_threads()} torch threads now)",
        f"torch {torch.__version__}, onnxruntime {ort}, transformers {version('transformers')}, python {platform.python_version()}",
    ]


def median_span(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """`median (min-max)` of `values`."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Markdown table, ready for README."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


# ---------------------------------------------------------------------------------------------
# Helpers shared by train.py, decode.py, tokenizer.py and memory.py.

SHAPES: dict[str, dict[str, int]] = {
    # performance.md: batch x context = 2,048 tokens a training step
    "S": dict(vocab_size=512, num_layers=4, num_heads=4, emb_size=128, max_seq_len=128, batch=16),
    "M": dict(vocab_size=8192, num_layers=6, num_heads=8, emb_size=384, max_seq_len=256, batch=8),
    "L": dict(vocab_size=8192, num_layers=12, num_heads=12, emb_size=768, max_seq_len=512, batch=1),
}
"""The benchmark shapes of docs/performance.md (L is for decoding only)."""

DECODE_CONTEXT = {"S": 256, "M": 256, "L": 512}
"""Context of the decode models: S and M grow their position table to 256 so that a 32-token
prompt plus 200 new tokens fits without cropping (performance.md)."""


def parse_threads(value: str) -> list[int]:
    """`"1,2"` -> `[1, 2]` (for an argparse `type=`)."""
    try:
        threads = [int(part) for part in str(value).split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"threads must be integers separated by commas, got {value!r}") from None
    if not threads or any(t < 1 for t in threads):
        raise argparse.ArgumentTypeError(f"threads must be positive integers, got {value!r}")
    return threads


def model_kwargs(shape: str, context: int | None = None) -> dict[str, int]:
    """`gpt.GPT(**model_kwargs("M"), dropout=0.0)`: the shape without its batch size."""
    kwargs = {k: v for k, v in SHAPES[shape].items() if k != "batch"}
    if context is not None:
        kwargs["max_seq_len"] = context
    return kwargs


def hf_gpt2(shape: str, context: int | None = None, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """A randomly initialised Hugging Face `GPT2LMHeadModel` of the same shape as `gpt.GPT(**model_kwargs(...))`
    (dropout 0, tied embeddings, gelu_new), with no end-of-text token so `generate` never stops early."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    kw = model_kwargs(shape, context)
    config = GPT2Config(
        vocab_size=kw["vocab_size"],
        n_positions=kw["max_seq_len"],
        n_embd=kw["emb_size"],
        n_layer=kw["num_layers"],
        n_head=kw["num_heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=0,
    )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = GPT2LMHeadModel._from_config(config, attn_implementation=attn_implementation)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = 0
    model.generation_config.pad_token_id = 0
    return model


def flops_per_token(shape: str, context: int | None = None) -> float:
    """Training FLOPs per token, nanoGPT's / PaLM's estimate: `6 * N + 12 * layers * context * emb`,
    where N counts every parameter except the position table (the tied token embedding is the LM
    head's matmul, so it stays) and the attention term counts the full (not causal-halved) T x T
    score and value products, forward + backward."""
    kw = model_kwargs(shape, context)
    C, L, V, T = kw["emb_size"], kw["num_layers"], kw["vocab_size"], kw["max_seq_len"]
    per_layer = 12 * C * C + 13 * C  # qkv + proj + mlp weights and biases, 2 layer norms
    n = L * per_layer + V * C + C * 2  # + token embedding (= LM head) + final layer norm
    return 6 * n + 12 * L * T * C


def matmul_gflops(dtype: torch.dtype = torch.float32, size: int = 2048, min_seconds: float = 0.5) -> float:
    """GFLOP/s of a `size` x `size` matmul in `dtype` on the CPU with the current torch threads
    (one warm-up, then as many products as fit in about `min_seconds`)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.mm(a, b, out=out)
    count, started = 0, time.perf_counter()
    while True:
        torch.mm(a, b, out=out)
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return 2 * size**3 * count / elapsed / 1e9


def ratio_span(numerators: Sequence[float], denominators: Sequence[float], fmt: str = "{:.2f}") -> str:
    """Median (min-max) of the paired ratios `numerators[i] / denominators[i]` (one per interleaved round)."""
    return median_span([a / b for a, b in zip(numerators, denominators)], fmt)


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"
