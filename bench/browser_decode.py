"""Greedy decoding in the visitor's browser: the export's web page (onnxruntime-web, WebAssembly)
in headless Chromium, beside native onnxruntime on the same graph, at shapes S and M, fp32 and int8.

Rows per shape and precision (random weights, the byte-level tokenizer; a 32-token prompt + N new tokens):
- `onnxruntime (native), 1 thread`: `OnnxGPT.load(folder, threads=1).generate(ids, N)`, the reference;
- `browser, 1 thread`: the page served without cross-origin isolation (as `python -m http.server`
  serves it): onnxruntime-web runs single-threaded;
- `browser, all threads`: the page served with the COOP/COEP headers and opened with
  `?threads=N` (the machine's cores, at most 4), so onnxruntime-web runs N WebAssembly threads
  whatever the page's own choice (`DEFAULT_THREADS` in page.mjs: one).
- with `--before REF`, `browser, 1 thread, page of REF`: the same export's fast graph
  (`model_fast.onnx`, which pages ran before the browser got its own graph) under the page files of
  git revision REF (index.html, page.mjs, simple_llm.mjs), for a before/after in one run; "÷ before"
  is the median of per-round ratios of each browser row to it.
- "÷ fp32": a browser row of another precision against the same row at fp32, the median of
  per-round ratios (every round runs every precision, so the pairs share the machine's load).
tokens/s = new tokens / seconds of `generateTokens` (prefill included), timed inside the page;
page load = from opening the page to the model being ready (runtime, graph and tokenizer, from
localhost, or with `--network-mbps` at that rate as a first visit). Every round runs every row once (interleaved); medians (min-max) over rounds; the
ratio is the median of per-round ratios to native onnxruntime.

Needs the JavaScript runtime (`ONNXRUNTIME_NODE_INSTALL=skip npm ci`), Playwright for Python and
Debian's Chromium at /usr/bin/chromium.

    python bench/browser_decode.py [--shapes S,M] [--repeats 3] [--new-tokens 200] [--prompt-tokens 32]
                                   [--idle-seconds 0] [--network-mbps N] [--quick] [--before REF]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import functools
import http.server
import json
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

import torch

from bench.common import DECODE_CONTEXT, REPO, environment_lines, median_span, model_kwargs, print_table
from export import OnnxGPT, to_onnx
from export.webpage import RUNTIME
from gpt import GPT, Tokenizer

PROMPT = 32
CHROMIUM = Path("/usr/bin/chromium")
ROWS = ("native", "browser-1", "browser-all")
ALL_THREADS = min(4, os.cpu_count() or 1)
LABELS = {
    "native": "onnxruntime (native), 1 thread",
    "browser-1": "browser, 1 thread",
    "browser-all": "browser, all threads",
}
_DECODE_JS = """
async ([ids, newTokens]) => {
  const { model, threads } = await window.simpleLLM.ready;
  const started = performance.now();
  let count = 0;
  for await (const _ of model.generateTokens(ids, { maxNewTokens: newTokens })) count += 1;
  return { seconds: (performance.now() - started) / 1000, count, threads };
}
"""


class _Handler(http.server.SimpleHTTPRequestHandler):
    isolated = False

    def end_headers(self) -> None:
        if self.isolated:  # cross-origin isolation: SharedArrayBuffer, so WebAssembly threads
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args: object) -> None:
        pass


def serve(root: Path, isolated: bool) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = type("Handler", (_Handler,), {"isolated": isolated})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def export(shape: str, precision: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model = GPT(**model_kwargs(shape, DECODE_CONTEXT[shape]), dropout=0.0).eval()
    model.tokenizer = Tokenizer()
    return to_onnx(model, folder, precision=precision, portable=False, threads=1)


def native_decode(folder: Path, ids: list[int], new_tokens: int) -> float:
    model = OnnxGPT.load(folder, threads=1)
    model.generate([ids], 4)  # warm-up
    started = time.perf_counter()
    model.generate([ids], new_tokens)
    return new_tokens / (time.perf_counter() - started)


def browser_decode(
    chromium,
    url: str,
    ids: list[int],
    new_tokens: int,
    warm: int = 4,
    idle: float = 0.0,
    network_mbps: float | None = None,
) -> tuple[float, float, int]:
    """(tokens/s, page load seconds, threads) of one fresh page, `idle` seconds after it is ready (a
    visitor typing a prompt) and after `warm` tokens it generates first. With `network_mbps`, the
    page (a new browser context: nothing cached) downloads at that rate, 20 ms away (Chromium's
    network emulation, which its worker's requests go through too)."""
    page = chromium.new_page()
    page.set_default_timeout(600_000)
    if network_mbps:
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        rate = network_mbps * 1e6 / 8  # bytes a second
        conditions = dict(offline=False, latency=20, downloadThroughput=rate, uploadThroughput=rate)
        cdp.send("Network.emulateNetworkConditions", conditions)
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_function("document.querySelector('#status').textContent.includes('Ready')")
    load = time.perf_counter() - started
    page.wait_for_timeout(idle * 1000)
    page.evaluate(_DECODE_JS, [ids, warm])  # warm-up
    result = page.evaluate(_DECODE_JS, [ids, new_tokens])
    page.close()
    return result["count"] / result["seconds"], load, result["threads"]


def page_of(folder: Path, revision: str, precision: str) -> Path:
    """A copy of export `folder` whose page is git revision `revision`'s, running the fast graph."""
    old = folder.with_name(folder.name + "-before")
    shutil.copytree(folder, old)
    (old / "web" / "worker.mjs").unlink(missing_ok=True)
    html = (folder / "web" / "index.html").read_text(encoding="utf-8")
    tags = html[
        html.index('<script type="importmap">') : html.index("</script>", html.index('id="simple-llm-runtime"')) + 9
    ]
    for name in ("index.html", "page.mjs", "simple_llm.mjs"):
        source = subprocess.run(
            ["git", "show", f"{revision}:export/web/{name}"], cwd=REPO, capture_output=True, check=True, text=True
        ).stdout
        (old / "web" / name).write_text(
            source.replace("<!-- RUNTIME -->", tags), encoding="utf-8"
        )  # the export's runtime
    (old / "web" / "model.json").write_text(json.dumps({"graph": "model_fast.onnx", "precision": precision}))
    return old


def measure(
    chromium,
    shapes: list[str],
    precisions: list[str],
    repeats: int,
    new_tokens: int,
    tmp: Path,
    before: str | None = None,
    prompt: int = PROMPT,
    warm: int = 4,
    idle: float = 0.0,
    network_mbps: float | None = None,
) -> list[list[str]]:
    """The table's rows: per shape, every round runs every precision's every row once (interleaved), so
    that "÷ fp32" (another precision's row against fp32's same row) pairs runs of the same rounds."""
    plain, plain_url = serve(tmp, isolated=False)
    isolated, isolated_url = serve(tmp, isolated=True)
    rows = (*ROWS, "before") if before else ROWS
    table = []
    try:
        for shape in shapes:
            pages = {}  # precision -> row -> (server, page folder, query)
            for precision in precisions:
                name = f"{shape}-{precision}"
                folder = export(shape, precision, tmp / name)
                pages[precision] = {
                    "native": folder,
                    "browser-1": (plain_url, name, ""),
                    "browser-all": (isolated_url, name, f"?threads={ALL_THREADS}"),
                }
                if before:
                    pages[precision]["before"] = (plain_url, page_of(folder, before, precision).name, "")
            ids = torch.randint(0, 256, (prompt,), generator=torch.Generator().manual_seed(1)).tolist()
            rates = {(p, row): [] for p in precisions for row in rows}
            loads = {(p, row): [] for p in precisions for row in rows[1:]}
            threads = {}
            for round_ in range(repeats):
                turn = round_ % len(precisions)  # each precision goes first in turn: no order bias
                for precision in precisions[turn:] + precisions[:turn]:
                    for row in rows:
                        if row == "native":
                            rates[precision, row].append(native_decode(pages[precision][row], ids, new_tokens))
                            continue
                        base, page, query = pages[precision][row]
                        rate, load, used = browser_decode(
                            chromium, f"{base}/{page}/web/index.html{query}", ids, new_tokens, warm, idle, network_mbps
                        )
                        rates[precision, row].append(rate)
                        loads[precision, row].append(load)
                        threads[precision, row] = used
            for precision in precisions:
                for row in rows:
                    table.append(_row(shape, precision, row, rates, loads, threads, before))
    finally:
        plain.shutdown()
        isolated.shutdown()
    return table


def _row(
    shape: str, precision: str, row: str, rates: dict, loads: dict, threads: dict, before: str | None
) -> list[str]:
    """One line of the table (see `main`'s headers) from every round's figures."""

    def versus(other: tuple[str, str]) -> str:
        if row == "native" or other == (precision, row) or other not in rates:
            return "-"
        return f"{statistics.median(r / o for r, o in zip(rates[precision, row], rates[other])):.2f}"

    label = LABELS.get(row, f"browser, 1 thread, page of {before}")
    label = label if row == "native" else f"{label} ({threads[precision, row]})"
    line = [
        shape,
        precision,
        label,
        median_span(rates[precision, row], "{:,.1f}"),
        f"{statistics.median(r / n for r, n in zip(rates[precision, row], rates[precision, 'native'])):.2f}",
        *([versus((precision, "before"))] if before else []),
        versus(("fp32", row)),
        median_span(loads[precision, row], "{:.2f}") if row != "native" else "-",
    ]
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="S,M", help="comma-separated shapes from S, M, L (default: %(default)s)")
    parser.add_argument("--precisions", default="fp32,int8", help="exports to run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens generated per call (default: %(default)s)")
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT, help="the prompt's length (default: %(default)s)")
    parser.add_argument(
        "--warm-tokens",
        type=int,
        default=4,
        help="tokens a page generates before it is timed (default: %(default)s; hundreds: V8 has tiered up "
        "onnxruntime-web's WebAssembly to optimized code)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=0.0,
        help="seconds a page waits once ready, as a visitor typing a prompt (default: %(default)s; the worker "
        "warms the model up meanwhile)",
    )
    parser.add_argument(
        "--network-mbps",
        type=float,
        default=None,
        help="pages download at this rate, 20 ms away, as a first visit over a network (default: localhost)",
    )
    parser.add_argument("--quick", action="store_true", help="shape S, 1 round of 10 tokens (a smoke run)")
    parser.add_argument("--before", metavar="REF", help="add the page of git revision REF on the fast graph")
    args = parser.parse_args()
    shapes = ["S"] if args.quick else args.shapes.split(",")
    repeats = 1 if args.quick else args.repeats
    new_tokens = 10 if args.quick else args.new_tokens
    if not CHROMIUM.is_file():
        raise SystemExit(f"{CHROMIUM} not found: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    logging.disable(logging.INFO)  # the exports' optimizer passes log at INFO
    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp, sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        try:
            table = measure(
                chromium,
                shapes,
                args.precisions.split(","),
                repeats,
                new_tokens,
                Path(tmp),
                args.before,
                args.prompt_tokens,
                args.warm_tokens,
                args.idle_seconds,
                args.network_mbps,
            )
        finally:
            chromium.close()
    print(
        f"Greedy decode in headless Chromium (onnxruntime-web {RUNTIME['packages']['onnxruntime-web']['version']}, "
        f"WebAssembly) and native onnxruntime, {args.prompt_tokens}-token prompt + {new_tokens} new tokens "
        f"(a page's after its first {args.warm_tokens}, {args.idle_seconds:g} s after it is ready), random weights, "
        f"pages from {f'{args.network_mbps:g} Mbit/s, 20 ms away' if args.network_mbps else 'localhost'}, "
        f"{repeats} interleaved round(s)"
    )
    headers = ["shape", "precision", "run (threads)", "tokens/s median (min-max)", "÷ native", "÷ fp32", "page load s"]
    if args.before:
        headers.insert(5, "÷ before")
    print_table(headers, table)
    print("\n".join(environment_lines(1)))


if __name__ == "__main__":
    main()
