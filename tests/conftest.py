"""Shared test settings and the fixtures several modules read.

- `tiny_checkpoint` / `tiny_model` / `tiny_export(precision)`: one small GPT-2-shaped model, trained
  once per session by `python -m gpt train` on the shipped excerpt, and exported once per precision
  (with the portable graphs) for every test that only reads it. Tests that modify a model or an
  export make their own.
Tests marked `slow` (a server, a real browser, a benchmark, a side environment, several processes,
an ONNX export or a measured process of its own, an exhaustive sweep; every test that uses
`chromium` is marked here) are left out of the fast tier, `pytest -m "not slow"`.

The suite runs a worker per core (pytest-xdist, `pyproject.toml`'s addopts; `-n 0`: one process),
each module's tests on one worker (`--dist loadfile`), so a module's fixtures are made once and a
session fixture once per worker. Tests use one torch thread each.

- `chromium`: a headless Chromium (Debian's, driven by Playwright) per module that uses it.
- `settings` / `handlers`: the web app's settings and handlers per module, the module's caps in its
  `APP_SETTINGS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from needs import CHROMIUM, need_chromium
from tiny_training import SHAKESPEARE, TINY_SHAPE, run_module

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(items):
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models on 2 shared cores: a second torch thread only waits for a busy core (docs/decisions.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """`python -m gpt train` on the shipped Shakespeare excerpt: GPT-2-shaped (BPE vocabulary 320,
    context 48, 2 layers of width 32), 100 steps: enough that its greedy text varies, so runtimes that
    agree on it agree on something. Read it; never write into it."""
    out = tmp_path_factory.mktemp("tiny") / "model"
    run_module("gpt", "train", "--data", str(SHAKESPEARE), "--out", str(out), *TINY_SHAPE, "--batch-size", "16",
               "--steps", "100", "--lr", "1e-2", "--eval-interval", "50", "--threads", "1")  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The tiny checkpoint loaded, in eval mode. Shared: do not train or modify it."""
    from gpt import GPT

    return GPT.load(tiny_checkpoint).eval()


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint, tmp_path_factory) -> Callable[[str], Path]:
    """`tiny_export(precision)`: the tiny checkpoint's export folder (named `onnx`, with the portable
    graphs), made once per precision in the session. Read it; never write into it."""
    from export import to_onnx

    made: dict[str, Path] = {}

    def export(precision: str = "fp32") -> Path:
        if precision not in made:
            out = tmp_path_factory.mktemp(f"tiny-{precision}") / "onnx"
            made[precision] = to_onnx(tiny_checkpoint, out, precision=precision, threads=1)
        return made[precision]

    return export


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium for a module's browser tests (skips without it; fails under CI=true). Per
    module, not per session: Playwright's sync API keeps an event loop that the in-process Gradio
    servers of the modules between would share."""
    sync_api = need_chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def settings(request, tmp_path_factory):
    """A module's server settings: the tests' (`webapp_common.app_settings`) with the module's
    `APP_SETTINGS` caps, artifacts in a folder of the module's own."""
    from webapp_common import app_settings

    return app_settings(tmp_path_factory.mktemp("artifacts"), **getattr(request.module, "APP_SETTINGS", {}))


@pytest.fixture(scope="module")
def handlers(settings):
    """The app's handlers on `settings`, without a page (`webapp.app.SimpleLLM`): each tab's as
    `handlers.train`, `handlers.generate`, `handlers.models`, sessions in `handlers.services`."""
    from webapp.app import SimpleLLM

    return SimpleLLM.create(settings)
