"""Tokenizer speed: training a 4096-token byte-level BPE on the first 1 MB of Shakespeare, and encoding.

The text is data/shakespeare.txt (the full text, shipped with the repository: the published
figures); the output names it, and its labels give the size measured.

- ours: `gpt.Tokenizer.train(text, vocab_size=4096)` (Hugging Face `tokenizers` underneath), then
  `encode(text)` of the whole 1 MB string by the freshly trained tokenizer (cold caches: what
  encoding a corpus once costs), `encode(text)` again (warm caches), and `encode_batch(lines)`;
- `tokenizers` alone: a fresh `tokenizers.Tokenizer` loaded from the same trained tokenizer.json,
  `encode(text)` on 1 thread (what `gpt.Tokenizer` wraps; the ids are checked equal);
- reference: the plain-Python BPE below, the algorithm class of the original project (start from
  characters; every merge recounts all adjacent pairs over the whole text, merges the most
  frequent one everywhere, repeat; encoding repeatedly applies the lowest-ranked merge present).
  It is far too slow for 1 MB x 3840 merges, so it trains on a slice with a few merges and the
  time is EXTRAPOLATED linearly in bytes x merges (each merge is one pass over the text; the
  text shrinks as merges apply, so this is an estimate, not a measurement). Its encode speed is
  measured on the slice with the merges learned there (fewer merges than 4096 make it faster).

`--threads` sets the `tokenizers` (rayon) thread pool: training and `encode_batch` are parallel.
Every round runs every measurement once (interleaved); medians (min-max) over rounds.

    python bench/tokenizer.py [--threads 1] [--repeats 3] [--slice-kb 64] [--merges 256] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import statistics
import time
from collections import Counter

MB = 1_000_000
VOCAB = 4096


class ReferenceBPE:
    """Plain-Python character-level BPE: recount every pair for every merge (the original's algorithm class)."""

    def __init__(self) -> None:
        self.merges: dict[tuple[str, str], int] = {}  # pair -> rank

    def train(self, text: str, num_merges: int) -> ReferenceBPE:
        tokens = list(text)
        for rank in range(num_merges):
            counts = Counter(zip(tokens, tokens[1:]))
            if not counts:
                break
            pair, count = max(counts.items(), key=lambda item: item[1])
            if count < 2:
                break
            self.merges[pair] = rank
            tokens = self._merge(tokens, pair)
        return self

    @staticmethod
    def _merge(tokens: list[str], pair: tuple[str, str]) -> list[str]:
        out, i, n = [], 0, len(tokens)
        first, second = pair
        while i < n:
            if i + 1 < n and tokens[i] == first and tokens[i + 1] == second:
                out.append(first + second)
                i += 2
            else:
                out.append(tokens[i])
                i += 1
        return out

    def encode(self, text: str) -> list[str]:
        tokens = list(text)
        while len(tokens) > 1:
            pairs = set(zip(tokens, tokens[1:]))
            pair = min(pairs, key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
                break
            tokens = self._merge(tokens, pair)
        return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="tokenizers (rayon) threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--slice-kb", type=int, default=64, help="reference: slice in kB (default: %(default)s)")
    parser.add_argument("--merges", type=int, default=256, help="reference: merges on the slice (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1 round, a 16 kB slice with 64 merges (a smoke run)")
    args = parser.parse_args()
    # rayon reads these when its pool first starts, i.e. at the first parallel call below
    os.environ["RAYON_NUM_THREADS"] = os.environ["RAYON_RS_NUM_CPUS"] = str(args.threads)

    from tokenizers import Tokenizer as HFTokenizer

    from bench.common import environment_lines, median_span, print_table, set_threads, shakespeare_text
    from gpt import Tokenizer

    data = shakespeare_text()

    set_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    slice_bytes = (16 if args.quick else args.slice_kb) * 1000
    merges = 64 if args.quick else args.merges
    raw = data.read_bytes()[:MB]
    text = raw.decode("utf-8", errors="ignore")  # a cut multi-byte character at the end is dropped
    size = len(text.encode())
    size_label = f"{size / MB:.2g} MB"  # "1 MB": the first 1 MB of the full text
    lines = text.splitlines(keepends=True)
    piece = text[:slice_bytes]
    piece_bytes = len(piece.encode())
    target_merges = VOCAB - 256

    steps = ["train", "ref_train", "encode", "encode_warm", "backend", "batch", "ref_encode"]
    results: dict[str, list[float]] = {k: [] for k in steps}
    tokenizer = None
    reference = None
    for round_ in range(repeats):
        k = round_ % 2  # alternate which trainer runs first
        for step in steps[k : k + 1] + steps[1 - k : 2 - k] + steps[2:]:
            started = time.perf_counter()
            if step == "train":
                tokenizer = Tokenizer.train(text, vocab_size=VOCAB)
                results[step].append(time.perf_counter() - started)
            elif step == "ref_train":
                reference = ReferenceBPE().train(piece, merges)
                results[step].append(time.perf_counter() - started)
            elif step in ("encode", "encode_warm"):
                ids = tokenizer.encode(text)
                results[step].append(size / MB / (time.perf_counter() - started))
            elif step == "backend":
                backend = HFTokenizer.from_str(tokenizer.to_json_str())
                started = time.perf_counter()
                backend_ids = backend.encode(text, add_special_tokens=False).ids
                results[step].append(size / MB / (time.perf_counter() - started))
                if backend_ids != ids:
                    raise SystemExit("gpt.Tokenizer.encode and tokenizers' encode gave different ids")
            elif step == "batch":
                batch_ids = tokenizer.encode_batch(lines)
                results[step].append(size / MB / (time.perf_counter() - started))
            else:
                ref_ids = reference.encode(piece)
                results[step].append(piece_bytes / MB / (time.perf_counter() - started))
    same = sum(len(x) for x in batch_ids) == len(ids)
    learned = len(reference.merges)
    scale = (size / piece_bytes) * (target_merges / learned)
    extrapolated = [t * scale for t in results["ref_train"]]
    bytes_per_token = size / len(ids)

    ref_label = f"reference plain-Python BPE, {piece_bytes / 1000:.0f} kB slice, {learned} merges"
    table = [
        [f"ours `Tokenizer.train`, {size_label}, vocab {VOCAB}", median_span(results["train"], "{:.2f}"), "s", "-"],
        [ref_label, median_span(results["ref_train"], "{:.2f}"), "s", "-"],
        [
            f"reference, EXTRAPOLATED to {size_label} and {target_merges} merges (x{scale:,.0f})",
            median_span(extrapolated, "{:,.0f}"),
            "s (extrapolated)",
            f"{statistics.median(extrapolated) / statistics.median(results['train']):,.0f}x slower than ours",
        ],
        [
            f"ours `encode(text)`, one {size_label} string, fresh tokenizer",
            median_span(results["encode"], "{:.2f}"),
            "MB/s",
            f"{bytes_per_token:.2f} bytes/token; ÷ tokenizers: "
            f"{statistics.median(results['encode']) / statistics.median(results['backend']):.2f}",
        ],
        ["ours `encode(text)` again (warm word cache)", median_span(results["encode_warm"], "{:.2f}"), "MB/s", "-"],
        [
            "`tokenizers` alone: `encode(text)`, fresh, same ids",
            median_span(results["backend"], "{:.2f}"),
            "MB/s",
            "1 thread",
        ],
        [
            f"ours `encode_batch(lines)`, {len(lines):,} lines",
            median_span(results["batch"], "{:.2f}"),
            "MB/s",
            f"÷ encode: {statistics.median(results['batch']) / statistics.median(results['encode']):.2f}"
            + ("" if same else "; token counts differ (line boundaries)"),
        ],
        [
            f"reference `encode`, {piece_bytes / 1000:.0f} kB slice, {learned} merges",
            median_span(results["ref_encode"], "{:.4f}"),
            "MB/s",
            f"{piece_bytes / len(ref_ids):.2f} chars/token",
        ],
    ]
    print(f"Tokenizer, first {size / MB:.2f} MB of {data.name}, vocab {VOCAB}, {repeats} interleaved rounds")
    print_table(["run", "median (min-max)", "unit", "note"], table)
    print("\n".join(environment_lines(args.threads)))


if __name__ == "__main__":
    main()
