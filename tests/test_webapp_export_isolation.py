"""The app's ONNX exports run in child processes: `torch.export` in the server crashed trainings that
ran beside it (`KeyError: 'custom'` in torch.fx, errors in the optimizer). Exports beside a training,
a failing export, a timeout, and a cancelled one (handler closed, session closed) leave no process
and no temporary folder behind.
"""

import copy
import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import gradio as gr
import pytest
import torch
from webapp_common import TINY

import export
import export.onnx_export
from gpt import GPT, Callback, Tokenizer, make_loaders
from webapp import corpus, export_process, models
from webapp.handlers import Handlers
from webapp.i18n import UserError
from webapp.settings import Settings


class Request:
    """Stands in for `gr.Request`: a session id and an Accept-Language header."""

    def __init__(self, session: str) -> None:
        self.session_hash = session
        self.headers = {"accept-language": "en"}


@pytest.fixture(scope="module")
def loaders():
    text = "".join(corpus.sample_corpus(corpus.STDLIB_SAMPLE).texts)[:40_000]
    tokenizer = Tokenizer.train(text, vocab_size=TINY["vocab_size"])
    return tokenizer, make_loaders(tokenizer.encode(text), TINY["context"], TINY["batch_size"], seed=0)


def new_model(tokenizer: Tokenizer) -> GPT:
    torch.manual_seed(0)
    model = GPT(
        vocab_size=TINY["vocab_size"],
        max_seq_len=TINY["context"],
        emb_size=TINY["emb_size"],
        num_heads=TINY["num_heads"],
        num_layers=TINY["num_layers"],
    )
    model.tokenizer = tokenizer
    return model


@pytest.fixture(scope="module")
def trained(loaders) -> GPT:
    """A tiny model trained 20 steps on the built-in Python sample."""
    tokenizer, (train, valid) = loaders
    model = new_model(tokenizer)
    model.fit(train, valid, max_steps=20, progress=False, log_every=None)
    return model.eval()


@pytest.fixture
def handlers(tmp_path) -> Handlers:
    return Handlers(Settings(artifacts=tmp_path / "artifacts", generate_threads=1, train_threads=1))


@pytest.fixture
def children(monkeypatch) -> list[subprocess.Popen]:
    """Every child process started while the test runs."""
    started = []

    class Recording(subprocess.Popen):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    return started


def leftovers(handlers: Handlers) -> list[str]:
    """Work folders (and anything else hidden) left in any session's exports folder."""
    return [p.name for p in handlers.settings.sessions_dir.glob("**/exports/.*")]


def assert_gone(child: subprocess.Popen) -> None:
    assert child.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.killpg(child.pid, 0)  # nothing of its process group is left either


class StopWhen(Callback):
    """Stops training once `event` is set and at least `min_steps` steps are done; until then each step
    pauses a little, so that on 2 shared cores the exports' child processes get most of the CPU."""

    def __init__(self, event: threading.Event, min_steps: int) -> None:
        self.event, self.min_steps = event, min_steps

    def on_batch_end(self, trainer) -> None:
        if self.event.is_set() and trainer.step >= self.min_steps:
            trainer.request_stop("exports done")
        elif not self.event.is_set():
            self.event.wait(0.01)


def test_exports_beside_a_training_run_in_child_processes(trained, loaders, handlers, monkeypatch, children):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.export ran in the server process")

    monkeypatch.setattr(torch.export, "export", refuse)
    monkeypatch.setattr(export.onnx_export, "to_onnx", refuse)
    monkeypatch.setattr(export, "to_onnx", refuse)

    tokenizer, (train, valid) = loaders
    exports_done = threading.Event()
    training_errors: list[Exception] = []
    runner = new_model(tokenizer)

    def training() -> None:
        try:  # runs until every export is over: each one overlaps the training from start to end
            runner.fit(train, valid, max_steps=5000, callbacks=[StopWhen(exports_done, 100)], progress=False)
        except Exception as err:  # noqa: BLE001 - the assertions below report it
            training_errors.append(err)

    sessions = {name: handlers.session(Request(name)) for name in ("a", "b")}
    for name, session in sessions.items():
        session.set_model(copy.deepcopy(trained), name, name)
    jobs = [("a", "fp32"), ("b", "fp32"), ("a", "int8")]
    folders: dict[tuple[str, str], Path] = {}
    export_errors: list[Exception] = []

    def exporting(name: str, precision: str) -> None:
        try:
            folders[name, precision] = models.export_current(sessions[name], precision, handlers.settings)
        except Exception as err:  # noqa: BLE001 - the assertions below report it
            export_errors.append(err)

    trainer = threading.Thread(target=training)
    trainer.start()
    workers = [threading.Thread(target=exporting, args=job) for job in jobs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    exports_done.set()
    trainer.join()

    assert not training_errors, training_errors
    assert not export_errors, export_errors
    assert runner.history.to_dict() and torch.isfinite(torch.tensor(runner.train_loss))
    assert len(children) == len(jobs)
    for (name, precision), folder in folders.items():
        report = json.loads((folder / "export_report.json").read_text(encoding="utf-8"))
        assert report["precision"] == precision and report["parity"]["passed"]
        assert folder.parent == sessions[name].folder / "exports"
        assert sessions[name].exports[precision] == folder
    assert models.export_current(sessions["a"], "fp32", handlers.settings) == folders["a", "fp32"]  # cached
    assert len(children) == len(jobs) and not leftovers(handlers)


def test_a_failing_export_says_why_without_server_paths(trained, handlers, children):
    session = handlers.session(Request("broken"))
    broken = copy.deepcopy(trained)
    with torch.no_grad():
        broken.transformer.ln_f.weight.fill_(float("nan"))  # NaN logits: the child's parity run refuses them
    session.set_model(broken, "broken", "broken")
    with pytest.raises(UserError) as info:
        models.export_current(session, "fp32", handlers.settings)
    message = info.value.message("en")
    assert message.startswith("The ONNX export failed: model_fast.onnx (fp32) does not match the torch model"), message
    assert not re.search(r"(^|[\s'\"])/", message) and str(handlers.settings.artifacts) not in message
    assert children[0].returncode == 1
    assert session.exports == {} and not any((session.folder / "exports").iterdir())


def test_an_export_over_its_time_limit_is_killed(trained, handlers, children):
    session = handlers.session(Request("slow"))
    folder = session.new_folder("exports")
    with pytest.raises(export_process.ChildExportError, match="took longer than 0 s"):
        export_process.export_in_child(trained, folder, "fp32", threads=1, timeout_s=0.01)
    assert_gone(children[0])
    assert not leftovers(handlers) and not any(folder.iterdir())


@pytest.mark.parametrize("how", ["handler closed", "session closed"])
def test_a_cancelled_export_kills_its_child(trained, handlers, children, how):
    request = Request("cancel")
    session = handlers.session(request)
    session.set_model(copy.deepcopy(trained), "tiny", "tiny")
    stream = handlers.export("fp32", request=request)
    for _ in range(200):  # each step waits up to `handlers.POLL_S` for the export
        if children:
            break
        next(stream)
    assert children and children[0].poll() is None  # the export is running in its child
    if how == "handler closed":
        stream.close()  # what a Gradio cancel (Stop, page closed) does to the handler
        assert session.exports == {} and not any((session.folder / "exports").iterdir())
    else:
        handlers.unload(request=request)
        with pytest.raises(gr.Error) as info:
            list(stream)
        assert "cancelled" in info.value.message
        assert not session.folder.exists()
    assert_gone(children[0])
    assert not leftovers(handlers)
