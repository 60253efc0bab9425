"""What the web app tests share: a tiny training setup, a small mixed-language vocabulary, helpers
that call the handlers directly as a browser session would, the one launcher of the app (in this
process: `launch`; as `python webapp/app.py`: `start_server`) and the outside user's API calls
(`client`, `train_args`).

The tests' `handlers` is a `webapp.app.SimpleLLM` (what `build_demo` puts on `demo.simple_llm`):
each tab's handlers as `handlers.train`, `handlers.generate`, `handlers.models`, and the shared
sessions and settings as `handlers.services`."""

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file

from webapp import corpus
from webapp.app import SimpleLLM, build_demo, launch_kwargs
from webapp.settings import Settings
from webapp.training import SETTING_FIELDS

ROOT = Path(__file__).resolve().parents[1]
DOWNLOADS = Path(tempfile.gettempdir()) / "simple-llm-test-downloads"


def app_settings(artifacts: Path, **overrides) -> Settings:
    """The tests' server settings: artifacts in `artifacts`, one training thread, no free-disk floor
    to trip on a full test machine, then `overrides` (a module's caps)."""
    return Settings(**{"artifacts": artifacts, "train_threads": 1, "min_free_disk_mb": 1, **overrides})


TINY = dict(
    num_layers=1,
    num_heads=2,
    emb_size=16,
    context=16,
    vocab_size=300,
    learning_rate=1e-2,
    batch_size=8,
    dropout=0.0,
    rotary=False,
    device="cpu",
)
WORDS = "the cat sat on a mat and the dog ran to the sun while birds sang кот сидел на ковре".split()


class Request:
    """Stands in for `gr.Request`: a session id and an Accept-Language header."""

    def __init__(self, session: str, lang: str = "en") -> None:
        self.session_hash = session
        self.headers = {"accept-language": lang}


def text(count: int = 1500, seed: int = 0, words: list[str] = WORDS) -> str:
    """`count` words drawn from `words`, 12 to a line."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(count // 12)]
    return "\n".join(lines) + "\n"


def train(
    handlers: SimpleLLM, request: Request, files: list[Path] | None = None, steps: int = 30, **overrides
) -> list[tuple]:
    values = {**TINY, "steps": steps, **overrides}
    source = "upload" if files is not None else "sample"
    return list(
        handlers.train.train(
            source,
            [str(f) for f in files or []],
            corpus.STDLIB_SAMPLE,
            *(values[name] for name in SETTING_FIELDS),
            values["device"],
            values.get("start", "new"),
            values.get("start_model"),
            values.get("owner_key"),
            request=request,
        )
    )


GENERATE_DEFAULTS = dict(
    max_new_tokens=20,
    mode="greedy",
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    repetition_penalty=1.0,
    stop_strings="",
    seed="",
)
"""The /generate inputs after the prompt and before the backend, in their API order."""


def generate_args(prompt: str = "the cat", backend: str = "torch", **options) -> list:
    """The /generate endpoint's inputs, in order: `options` override `GENERATE_DEFAULTS`."""
    values = {**GENERATE_DEFAULTS, **options}
    return [prompt, *values.values(), backend]


def generate(
    handlers: SimpleLLM,
    request: Request,
    prompt: str = "the cat",
    backend: str = "torch",
    mode: str = "greedy",
    **options,
) -> tuple[str, str]:
    *_, last = handlers.generate.generate(*generate_args(prompt, backend, mode=mode, **options), request=request)
    return last


def plain(markdown: str) -> str:
    return markdown.replace("**", "")


def error_of(call) -> str:
    with pytest.raises(gr.Error) as info:
        call()
    return info.value.message


def wait_for(condition, what: str, seconds: float = 120):
    """Poll `condition` until it returns something truthy and return that; fail naming `what`
    after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {seconds:g} s waiting for {what}"
        time.sleep(0.05)
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(settings: Settings) -> tuple[gr.Blocks, str]:
    """The app on a free loopback port, in this process, as `python webapp/app.py` launches it:
    (the demo, its URL ending in "/"). Close it with `demo.close()`."""
    demo = build_demo(settings)
    _, url, _ = demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        **launch_kwargs(settings, demo),
    )
    return demo, url


def start_server(artifacts: Path, port: int, extra: dict[str, str] | None = None) -> subprocess.Popen:
    """`python webapp/app.py` as a user or a Space runs it (webapp/, not the root, first on sys.path),
    with `extra` environment variables. Stop it with `terminate()`."""
    env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(port),
        "SIMPLE_LLM_ARTIFACTS": str(artifacts),
        "SIMPLE_LLM_TRAIN_THREADS": "1",
        "SIMPLE_LLM_TRAIN_CONCURRENCY": "2",
        "SIMPLE_LLM_MIN_FREE_DISK_MB": "1",
        "PYTHONPATH": "",
        **(extra or {}),
    }
    return subprocess.Popen(
        [sys.executable, "webapp/app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def client(url: str, lang: str = "en-US") -> Client:
    """A new browser-like session through the public API (each `Client` is its own Gradio session)."""
    return Client(url, verbose=False, headers={"Accept-Language": lang}, download_files=str(DOWNLOADS))


def connect(url: str, process: subprocess.Popen, timeout: float = 180) -> Client:
    """A `client` of the server `process` started, once it answers."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "the server exited"
        try:
            return client(url)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def train_args(file: Path, steps: int, owner_key: str | None = None, **overrides) -> list:
    """The /train inputs for an uploaded `file`; the owner key (the last) only when given: clients
    may leave it out."""
    values = {**TINY, "steps": steps, "start": "new", "start_model": None, **overrides}
    key = [] if owner_key is None else [owner_key]
    fields = (*SETTING_FIELDS, "device", "start", "start_model")
    return ["upload", [handle_file(str(file))], "python-stdlib", *(values[k] for k in fields), *key]


def export_children(parent: int | None = None) -> list[int]:
    """Pids of the live ONNX export children (`python -m webapp.export_child`) of process `parent`
    (default: this one), read from /proc."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        ours = int(fields[1]) == parent and fields[0] != "Z"
        if ours and b"-m" in arguments and b"export" in b" ".join(arguments):
            found.append(int(entry.name))
    return found
