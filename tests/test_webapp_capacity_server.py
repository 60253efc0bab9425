"""The server as a whole under load from outside users, through its public API (issue 21): many
plain REST sessions loading a model, concurrent exports from every entry point, concurrent
evaluations at the size limit, and a small generation that keeps answering. The server's memory
(its own RSS plus its export children's) stays within its configured budget plus a stated margin,
and at most the configured number of export children exist at any moment.

The figures it measures go to `$SIMPLE_LLM_CAPACITY_REPORT` when set (docs/performance.md).
"""

import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from webapp_common import client, connect, export_children, free_port, start_server, text

from gpt import GPT, Tokenizer

pytestmark = [
    pytest.mark.slow,  # servers and browsers: not in the fast tier
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

BUDGET_MB = 2500
MODELS_MB = 300
MARGIN = 1.25  # the budget counts estimates; RSS may pass them by this much (allocator, Python objects)
MB = 1024 * 1024


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Monitor(threading.Thread):
    """Samples the server's memory (with its export children's) and its export children, 20 times a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_mb, self.most_children, self.done = pid, 0.0, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            children = export_children(self.pid)
            self.most_children = max(self.most_children, len(children))
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid) + sum(rss_mb(c) for c in children))
            time.sleep(0.05)


def rest_call(url: str, endpoint: str, data: list) -> str:
    """One plain REST call (a new session each time): POST, then read the event's stream."""
    request = urllib.request.Request(
        f"{url}gradio_api/call/{endpoint}",
        data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"},
    )
    event = json.loads(urllib.request.urlopen(request, timeout=120).read())["event_id"]
    return urllib.request.urlopen(f"{url}gradio_api/call/{endpoint}/{event}", timeout=300).read().decode()


def shared_models(artifacts: Path) -> None:
    """The operator's models every visitor may load: a tiny one, and a 3.3 M-parameter one (13 MB)."""
    tokenizer = Tokenizer.train([text(3000)], vocab_size=300)
    for name, width, layers in (("tiny", 16, 1), ("big", 256, 4)):
        model = GPT(vocab_size=300, max_seq_len=64, emb_size=width, num_heads=4, num_layers=layers, dropout=0.0)
        model.tokenizer = tokenizer
        model.save(artifacts / "models" / name)


def test_the_server_stays_within_its_budget_under_load_from_outside(tmp_path):
    artifacts, port = tmp_path / "artifacts", free_port()
    shared_models(artifacts)
    url = f"http://127.0.0.1:{port}/"
    env = {
        "SIMPLE_LLM_MEMORY_MB": str(BUDGET_MB),
        "SIMPLE_LLM_MAX_MODELS_MEMORY_MB": str(MODELS_MB),
        "SIMPLE_LLM_MAX_EVAL_MB": "0.25",
        "SIMPLE_LLM_GENERATE_THREADS": "1",
        "SIMPLE_LLM_MAX_QUEUE": "256",
    }
    process = start_server(artifacts, port, env)
    monitor = Monitor(process.pid)
    latencies, results, errors = [], {}, []
    try:
        probe = connect(url, process)
        probe.predict("tiny", None, api_name="/load_model")
        monitor.start()

        # 1. 64 plain REST sessions each load the 13 MB model (unbounded: 64 x 13 MB held for hours)
        def load(n):
            results[f"rest-{n}"] = rest_call(url, "load_model", ["big", None])

        # 2. exports from every entry point at once, in two sessions: Export, Compare and onnxruntime
        # generation wait for one fp32 export, the browser backend for an int8 one (an entry point that
        # went around the server's export gate would start a second export child)
        exporters = {precision: client(url) for precision in ("fp32", "int8")}
        for exporter in exporters.values():
            exporter.predict("tiny", None, api_name="/load_model")
        export_calls = [
            ("fp32", lambda c: c.predict("fp32", api_name="/export")),
            ("fp32", lambda c: c.predict("the", 8, "ort-cpu", api_name="/compare")),
            ("int8", lambda c: c.predict("int8", api_name="/browser_model")),
            (
                "fp32",
                lambda c: c.predict("the", 8, "greedy", 1.0, 0, 1.0, 0.0, 1.0, "", "", "ort-cpu", api_name="/generate"),
            ),
        ]

        def export_flow(n):
            precision, call = export_calls[n]
            try:
                results[f"export-{n}"] = call(exporters[precision])
            except Exception as err:  # refused ("the server is busy") is an answer too
                errors.append(str(err))

        # 3. evaluations at the size limit
        def evaluate(n):
            try:
                c = client(url)
                c.predict("tiny", None, api_name="/load_model")
                results[f"eval-{n}"] = c.predict("current", None, "a b " * (128 * 1024 // 4), None, None,
                                                 api_name="/evaluate")  # fmt: skip
            except Exception as err:
                errors.append(str(err))

        workers = [threading.Thread(target=load, args=(n,)) for n in range(64)]
        workers += [threading.Thread(target=export_flow, args=(n,)) for n in range(len(export_calls))]
        workers += [threading.Thread(target=evaluate, args=(n,)) for n in range(6)]
        for worker in workers:
            worker.start()
        # 4. meanwhile, a small generation keeps answering
        while any(worker.is_alive() for worker in workers):
            started = time.monotonic()
            out, _ = probe.predict("the", 8, "greedy", 1.0, 0, 1.0, 0.0, 1.0, "", "", "torch", api_name="/generate")
            latencies.append(time.monotonic() - started)
            assert out.startswith("the")
            time.sleep(0.5)
        for worker in workers:
            worker.join()
    finally:
        monitor.done.set()
        process.kill()
        process.wait(timeout=30)

    loaded = [value for key, value in results.items() if key.startswith("rest-")]
    assert len(loaded) == 64 and all("Loaded big" in body or "as many models" in body for body in loaded), loaded[:3]
    assert all("busy" in error or "Queue is full" in error for error in errors), errors
    assert monitor.most_children <= 1, f"{monitor.most_children} export children at once (limit 1)"
    assert monitor.peak_mb <= BUDGET_MB * MARGIN, f"peak {monitor.peak_mb:.0f} MB, budget {BUDGET_MB} MB"
    assert latencies and max(latencies) < 120  # it answers (a liveness bound, not a speed test)
    report = os.environ.get("SIMPLE_LLM_CAPACITY_REPORT")
    if report:
        Path(report).write_text(
            json.dumps(
                {
                    "budget_mb": BUDGET_MB,
                    "peak_mb": round(monitor.peak_mb),
                    "most_export_children": monitor.most_children,
                    "generations": len(latencies),
                    "generation_latency_s": {
                        "median": sorted(latencies)[len(latencies) // 2],
                        "max": max(latencies),
                    },
                    "answers": len(results),
                    "refused": len(errors),
                },
                indent=1,
            )
        )
