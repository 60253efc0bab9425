"""Web app target: "while one session trains, another session's generation request is answered
within 2x its idle latency".

The app (`webapp.app.build_demo`) runs in this process on 127.0.0.1 (a free port, `prevent_thread_lock=True`);
two `gradio_client` sessions talk to it over loopback only. The run is kept apart from anything else on the
machine (another instance of the app, its load test, the shell's settings): the app's artifact folder, Gradio's
file cache and the system temporary folder (where the app keeps its download zips) are folders of this run;
`GRADIO_*` and `SIMPLE_LLM_*` variables of the outer environment are set aside (except
`SIMPLE_LLM_TRAIN_THREADS`, see below); a launch that fails (the port taken between choosing and binding it,
or Gradio's fixed 3 s readiness check timing out on a busy machine) is retried on a fresh port; and the clients
check that the server answering is this process's app (its `app_id`). Every request has a timeout, and one
that runs out says which request it was.

- client A trains a small model on the built-in Python-stdlib sample (the app's "tiny" preset,
  a few steps) and saves it; client B loads that saved model (each session has its own model);
- client B's latency is the wall time of one `/generate` request (greedy, fixed prompt, torch
  backend, `--max-new-tokens` tokens) as `Client.submit(...).result()` sees it;
- phases alternate in blocks: idle (no training anywhere), busy (client A runs a long training
  of the `--train-preset` preset, started with `submit`, measured once it has done a few steps,
  then cancelled as the Stop button does and waited for), idle, busy, ... Each phase gets
  `--repeats` requests in all, spread over `--blocks` blocks.

Generation uses `--threads` torch threads (the app's `SIMPLE_LLM_GENERATE_THREADS`); training
uses the app's own `SIMPLE_LLM_TRAIN_THREADS` (default: CPU cores - 1). The ratio is busy median
÷ idle median; the target is met when it is at most 2.

    python bench/webapp_latency.py [--repeats 10] [--blocks 5] [--threads 1] [--max-new-tokens 64]
                                   [--train-preset tiny] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import re
import secrets
import socket
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from bench.common import environment_lines, median_span, print_table, ratio_span, set_threads

PROMPT = "def "
TARGET = 2.0
REQUEST_TIMEOUT_S = 300.0  # one generation request, or the first training
STOP_TIMEOUT_S = 180.0  # a cancelled training reaching its clean step
CONNECT_TIMEOUT_S = 30.0  # a TCP connection on loopback (the kernel answers it even when the server is busy)
WARM_STEPS = 5  # training steps done before a busy block measures (data prepared, loop running)
LAUNCH_ATTEMPTS = 3
KEPT_SETTINGS = ("SIMPLE_LLM_TRAIN_THREADS",)  # the one app setting this benchmark takes from the environment


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="generation requests per phase (default 10)")
    parser.add_argument("--blocks", type=int, default=5, help="idle/busy block pairs (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of a generation (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per request (default 64)")
    parser.add_argument(
        "--train-preset",
        default="tiny",
        choices=("tiny", "small", "medium"),
        help="preset of client A's background training (default tiny, the app's default)",
    )
    parser.add_argument("--quick", action="store_true", help="2 requests per phase in 1 block (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.blocks = min(args.repeats, 2), min(args.blocks, 1)
    if args.repeats < 1 or args.blocks < 1 or args.threads < 1 or args.max_new_tokens < 1:
        parser.error("--repeats, --blocks, --threads and --max-new-tokens must be positive")
    args.blocks = min(args.blocks, args.repeats)
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def finish(job: Any, timeout: float, what: str) -> Any:
    """`job.result(timeout)`, with a message that names the request when it fails or runs out of time."""
    try:
        return job.result(timeout=timeout)
    except TimeoutError:  # concurrent.futures.TimeoutError is this one (Python >= 3.11): it has no message
        job.cancel()
        raise TimeoutError(
            f"{what} did not finish within {timeout:.0f} s (load average {os.getloadavg()[0]:.1f})"
        ) from None
    except Exception as err:
        raise RuntimeError(f"{what} failed: {type(err).__name__}: {err}") from err


@contextlib.contextmanager
def isolated_environment(tmp: Path) -> Iterator[None]:
    """This run's own folders and settings, whatever the shell or another app instance on the machine uses.

    Outer `GRADIO_*` / `SIMPLE_LLM_*` variables are set aside (a `GRADIO_SERVER_NAME`, `GRADIO_ROOT_PATH`,
    `GRADIO_SSR_MODE`, a short `SIMPLE_LLM_SESSION_TTL_MINUTES` or `SIMPLE_LLM_MAX_STEPS` set for another
    instance would change what this run measures or break it); the app's artifacts, Gradio's file cache and
    the system temporary folder (the app's download zips live under it) become folders of `tmp`; loopback
    never goes through a proxy. Everything is restored on exit.
    """
    saved_env = dict(os.environ)
    saved_tempdir = tempfile.tempdir
    for name in list(os.environ):
        if name.startswith("GRADIO_") or (name.startswith("SIMPLE_LLM_") and name not in KEPT_SETTINGS):
            del os.environ[name]
    folders = {name: tmp / name for name in ("artifacts", "gradio", "tmp")}
    for folder in folders.values():
        folder.mkdir()
    os.environ["SIMPLE_LLM_ARTIFACTS"] = str(folders["artifacts"])
    os.environ["GRADIO_TEMP_DIR"] = str(folders["gradio"])
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["TMPDIR"] = str(folders["tmp"])
    tempfile.tempdir = str(folders["tmp"])
    for name in ("NO_PROXY", "no_proxy"):
        os.environ[name] = ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"]))
    try:
        yield
    finally:
        tempfile.tempdir = saved_tempdir
        os.environ.clear()
        os.environ.update(saved_env)


def close_quietly(demo: Any) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # Gradio prints "Closing server running on port ..."
        demo.close()


def launch(build: Callable[[], Any], launch_kwargs: Callable[[Any], dict]) -> tuple[Any, str]:
    """A freshly built demo serving on 127.0.0.1 and its URL, as `launch()` reports it.

    Gradio binds the port it is given, so a free port is chosen first; another process (another app
    instance, a test) can take it before Gradio binds it, and then `launch()` raises "Cannot find empty
    port". `launch()` also gives up when its own readiness check (`HEAD /`, a fixed 3 s timeout in
    `gradio.networking.url_ok`) is slow, which happens on a loaded machine ("When localhost is not
    accessible ..."). Both are retried on a fresh port; the kernel never lets two servers listen on one
    port, so a launch that returns serves this demo.
    """
    failures = []
    for attempt in range(1, LAUNCH_ATTEMPTS + 1):
        demo = build()
        port = free_port()
        try:
            _, url, _ = demo.launch(
                server_name="127.0.0.1",
                server_port=port,
                prevent_thread_lock=True,
                quiet=True,
                **launch_kwargs(demo),
            )
        except (OSError, ValueError) as err:
            failures.append(f"attempt {attempt}, port {port}: {type(err).__name__}: {err}")
            close_quietly(demo)
            continue
        if url != f"http://127.0.0.1:{port}/" or demo.local_url != url:
            close_quietly(demo)
            raise RuntimeError(f"the app was launched on port {port} but reports {url!r} / {demo.local_url!r}")
        if failures:
            print(f"(launch retried: {'; '.join(failures)})", file=sys.stderr)
        return demo, url
    raise RuntimeError(f"could not start the app on 127.0.0.1 in {LAUNCH_ATTEMPTS} attempts: " + "; ".join(failures))


def split(total: int, parts: int) -> list[int]:
    """`total` requests spread over `parts` blocks as evenly as possible."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def train_args(preset: Any, steps: int) -> list:
    """`/train` inputs: the built-in Python-stdlib sample with a preset's settings."""
    return [
        "sample",
        None,
        "python-stdlib",
        preset.num_layers,
        preset.num_heads,
        preset.emb_size,
        preset.context,
        preset.vocab_size,
        preset.learning_rate,
        preset.batch_size,
        steps,
        preset.dropout,
        preset.rotary,
        "cpu",
        "new",  # start from a new model
        None,
    ]


def generate_args(max_new_tokens: int) -> list:
    # prompt, max new tokens, mode, temperature, top-k, top-p, min-p, repetition penalty, stop strings, seed, backend
    return [PROMPT, max_new_tokens, "greedy", 1.0, 0, 1.0, 0.0, 1.0, "", "", "torch"]


def ms_span(seconds: list[float]) -> str:
    return median_span([s * 1e3 for s in seconds])


def decode_seconds(stats: str) -> float | None:
    """Decoding time the app measured itself, from its English stats line (`N tokens · **R tokens/s**`)."""
    tokens = re.search(r"(\d+) tokens(?!/)", stats)
    rate = re.search(r"([\d.]+) tokens/s", stats)
    if tokens is None or rate is None or float(rate.group(1)) <= 0:
        return None
    return int(tokens.group(1)) / float(rate.group(1))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    set_threads(args.threads)

    with (
        tempfile.TemporaryDirectory(prefix="simple-llm-webapp-latency-") as tmp,
        isolated_environment(Path(tmp)),
    ):
        # imported here, inside this run's environment: gradio reads its variables on import, and
        # webapp.app's module-level `demo` reads the app's settings
        import httpx
        from gradio_client import Client

        from webapp import training
        from webapp.app import build_demo, launch_kwargs
        from webapp.settings import Settings

        settings = dataclasses.replace(Settings.from_env(), generate_threads=args.threads)
        if args.max_new_tokens > settings.max_new_tokens:
            raise SystemExit(f"--max-new-tokens is over the app's limit ({settings.max_new_tokens})")
        demo, url = launch(lambda: build_demo(settings), lambda d: launch_kwargs(settings, d))
        sessions = demo.simple_llm.services.sessions
        clients: list[Client] = []

        def client(name: str) -> Client:
            c = Client(
                url,
                verbose=False,
                download_files=str(Path(tmp) / "downloads"),
                analytics_enabled=False,
                # non-queued calls (`/stop_training` waits for a clean step) default to httpx's 5 s
                httpx_kwargs={"timeout": httpx.Timeout(STOP_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)},
            )
            clients.append(c)
            if c.config.get("app_id") != demo.app_id:  # the kernel rules this out; say so if it ever happens
                raise RuntimeError(f"client {name}: {url} is answered by another Gradio app, not this run's")
            return c

        def check_session(name: str, c: Client) -> None:
            """The app closes a session whose heartbeat connection drops (unload): say so at once."""
            if c.session_hash not in sessions:
                raise RuntimeError(f"client {name}'s session was closed by the app (its heartbeat connection dropped?)")

        try:
            a, b = client("A"), client("B")
            tiny = training.MODEL_PRESETS["tiny"]
            background = training.MODEL_PRESETS[args.train_preset]
            background_steps = min(background.steps * 100, settings.max_steps)  # never finishes within a block

            # client B needs its own model: A trains a short run and saves it, B loads it
            first_steps = 30 if args.quick else 100
            finish(
                a.submit(*train_args(tiny, first_steps), api_name="/train"),
                REQUEST_TIMEOUT_S,
                f"client A's first /train ({first_steps} steps of `tiny`)",
            )
            owner = secrets.token_urlsafe(32)  # one owner for both clients: saved models are their owner's alone
            finish(a.submit("webapp-latency", owner, api_name="/save_model"), REQUEST_TIMEOUT_S, "client A's /save_model")
            finish(b.submit("webapp-latency", owner, api_name="/load_model"), REQUEST_TIMEOUT_S, "client B's /load_model")

            decode: dict[str, list[float]] = {"idle": [], "busy": []}  # server-side decoding seconds

            def generate_once(what: str, phase: str | None = None) -> float:
                started = time.perf_counter()
                text, stats = finish(
                    b.submit(*generate_args(args.max_new_tokens), api_name="/generate"),
                    REQUEST_TIMEOUT_S,
                    f"client B's /generate ({what})",
                )
                seconds = time.perf_counter() - started
                if not text.startswith(PROMPT):
                    raise RuntimeError(f"unexpected generation output ({what}): {text[:80]!r}")
                server = decode_seconds(stats)
                if phase is not None and server is not None:
                    decode[phase].append(server)
                return seconds

            for i in range(2):  # warm-up: first requests pay for lazy set-up on both sides
                generate_once(f"warm-up {i + 1}")

            check_session("A", a)
            a_session = sessions.get(a.session_hash)
            latencies: dict[str, list[float]] = {"idle": [], "busy": []}
            block_medians: dict[str, list[float]] = {"idle": [], "busy": []}
            train_steps, train_seconds = 0, 0.0  # client A's training progress during the busy blocks
            for n, count in enumerate(split(args.repeats, args.blocks), start=1):
                # idle block: nothing trains
                if a_session.training:
                    raise RuntimeError(f"a training is still running in idle block {n}")
                idle = [generate_once(f"idle block {n}, request {i + 1}", "idle") for i in range(count)]

                # busy block: A trains in the background while B generates
                previous = a_session.job
                job = a.submit(*train_args(background, background_steps), api_name="/train")

                def training_runs(job: Any = job, previous: Any = previous) -> bool:
                    if job.done():  # refused or failed: say why now rather than after the timeout
                        raise RuntimeError(f"client A's training ended early: {job.exception() or job.result()}")
                    check_session("A", a)
                    current = a_session.job
                    return current is not previous and current is not None and current.steps_done >= WARM_STEPS

                wait_for(training_runs, REQUEST_TIMEOUT_S, f"client A's training to run (busy block {n})")
                run = a_session.job
                step0, t0 = run.steps_done, time.perf_counter()
                busy = []
                for i in range(count):
                    busy.append(generate_once(f"busy block {n}, request {i + 1}", "busy"))
                    if not run.running:
                        check_session("A", a)
                        raise RuntimeError(f"client A's training ended during busy block {n} (error: {run.error})")
                train_steps += run.steps_done - step0
                train_seconds += time.perf_counter() - t0
                job.cancel()  # as the Stop button does: the handler closes and stops at a clean step
                # waits for the run to stop (if the cancel has not yet)
                finish(a.submit(api_name="/stop_training"), STOP_TIMEOUT_S, f"client A's /stop_training (block {n})")
                wait_for(run.done.is_set, STOP_TIMEOUT_S, f"client A's training to stop (block {n})")
                wait_for(job.done, STOP_TIMEOUT_S, f"client A's cancelled /train to end (block {n})")

                for phase, values in (("idle", idle), ("busy", busy)):
                    latencies[phase] += values
                    block_medians[phase].append(statistics.median(values))
        finally:
            for c in clients:
                with contextlib.suppress(Exception):  # closing is best effort
                    c.close()
            close_quietly(demo)

    idle_median = statistics.median(latencies["idle"])
    busy_median = statistics.median(latencies["busy"])
    ratio = busy_median / idle_median
    print(
        f"## Web app: generation latency of one session while another trains "
        f"({args.max_new_tokens} new tokens, greedy, torch)\n"
    )
    print_table(
        ["phase", "latency ms, median (min-max)", "ratio busy ÷ idle", "requests"],
        [
            ["idle (no training)", ms_span(latencies["idle"]), "1.00", str(len(latencies["idle"]))],
            [
                f"busy (another session trains `{args.train_preset}`)",
                ms_span(latencies["busy"]),
                f"{ratio:.2f}",
                str(len(latencies["busy"])),
            ],
        ],
    )
    print()
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"- target busy ≤ {TARGET:g} x idle: {verdict} ({ratio:.2f}x)")
    if all(decode.values()):
        idle_decode, busy_decode = statistics.median(decode["idle"]), statistics.median(decode["busy"])
        print(
            f"- server-side decoding alone (the app's own tokens/s): idle {ms_span(decode['idle'])} ms, "
            f"busy {ms_span(decode['busy'])} ms ({busy_decode / idle_decode:.2f}x); "
            f"the rest of a request is the Gradio round trip"
        )
    print(
        f"- {len(block_medians['busy'])} interleaved block pairs (idle, busy, ...); per-pair ratio of block medians: "
        f"{ratio_span(block_medians['busy'], block_medians['idle'])}"
    )
    print(
        f"- client A's training while B generated: {train_steps} steps in {train_seconds:.1f} s "
        f"({train_steps / train_seconds:.1f} steps/s; `{args.train_preset}`, "
        f"batch {background.batch_size} x context {background.context})"
    )
    print(
        f"- app settings: generate threads {settings.generate_threads}, train threads {settings.train_threads}, "
        f"generate concurrency {settings.generate_concurrency}, train concurrency {settings.train_concurrency}; "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at the end"
    )
    for line in environment_lines(f"generate {settings.generate_threads}, train {settings.train_threads}"):
        print(f"- {line}")


if __name__ == "__main__":
    main()
