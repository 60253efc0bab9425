"""The app's ONNX exports run in child processes: `torch.export` in the server crashed trainings that
ran beside it (`KeyError: 'custom'` in torch.fx, errors in the optimizer). Exports beside a training,
a failing export, a timeout, and a cancelled one (handler closed, session closed) leave no process
and no temporary folder behind.
"""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import gradio as gr
import pytest
import torch
from webapp_common import TINY, Request, app_settings, export_children, generate, wait_for

import export
import export.onnx_export
from gpt import GPT, Callback, Tokenizer, make_loaders
from webapp import backends, corpus, export_child, export_process, exports, models
from webapp.app import SimpleLLM
from webapp.i18n import UserError
from webapp.settings import MB, Settings


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
    model.fit(train, valid, num_epoch=None, max_steps=20, progress=False, log_every=None)
    return model.eval()


@pytest.fixture
def handlers(tmp_path) -> SimpleLLM:
    """Handlers of each test's own: its exports, children and leftovers are the test's alone."""
    return SimpleLLM.create(app_settings(tmp_path / "artifacts", generate_threads=1))


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


def leftovers(handlers: SimpleLLM) -> list[str]:
    """Work folders (and anything else hidden) left in any session's exports folder."""
    return [p.name for p in handlers.services.settings.sessions_dir.glob("**/exports/.*")]


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


@pytest.mark.slow  # several export processes at once: not in the fast tier
def test_exports_beside_a_training_run_in_child_processes(trained, loaders, tmp_path, monkeypatch, children):
    jobs = [("a", "fp32"), ("b", "int8")]  # two sessions, two precisions, both exporting at once
    handlers = SimpleLLM.create(
        Settings(artifacts=tmp_path / "artifacts", generate_threads=1, train_threads=1, export_concurrency=len(jobs))
    )

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
            runner.fit(
                train, valid, num_epoch=None, max_steps=5000, callbacks=[StopWhen(exports_done, 100)], progress=False
            )
        except Exception as err:  # noqa: BLE001 - the assertions below report it
            training_errors.append(err)

    sessions = {name: handlers.services.session(Request(name)) for name in ("a", "b")}
    for name, session in sessions.items():
        session.set_model(copy.deepcopy(trained), name, name)
    folders: dict[tuple[str, str], Path] = {}
    export_errors: list[Exception] = []

    def exporting(name: str, precision: str) -> None:
        try:
            folders[name, precision] = models.export_current(sessions[name], precision, handlers.services.settings)
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
    assert runner.history.to_dict() and torch.isfinite(torch.tensor(runner.train_loss)).all()
    assert len(children) == len(jobs)
    for (name, precision), folder in folders.items():
        report = json.loads((folder / "export_report.json").read_text(encoding="utf-8"))
        assert report["precision"] == precision and report["parity"]["passed"]
        assert folder.parent == sessions[name].folder / "exports"
        assert sessions[name].exports[precision] == folder
    assert models.export_current(sessions["a"], "fp32", handlers.services.settings) == folders["a", "fp32"]  # cached
    assert len(children) == len(jobs) and not leftovers(handlers)


@pytest.mark.slow  # an ONNX export of its own, in a child process: not in the fast tier
def test_a_failing_export_says_why_without_server_paths(trained, handlers, children):
    session = handlers.services.session(Request("broken"))
    broken = copy.deepcopy(trained)
    with torch.no_grad():
        broken.transformer.ln_f.weight.fill_(float("nan"))  # NaN logits: the child's parity run refuses them
    session.set_model(broken, "broken", "broken")
    with pytest.raises(UserError) as info:
        models.export_current(session, "fp32", handlers.services.settings)
    message = info.value.message("en")
    assert message.startswith(
        "The ONNX export failed: model_fast.onnx (fp32) does not match the torch model: prefill logits outside atol"
    ), message  # the reason, not a headline cut at its colon
    assert "\nresult           FAIL: prefill logits outside atol" in message  # and the parity table under it
    assert not re.search(r"(^|[\s'\"])/", message) and str(handlers.services.settings.artifacts) not in message
    assert children[0].returncode == 1
    assert session.exports == {} and not any((session.folder / "exports").iterdir())


def test_the_childs_whole_error_message_reaches_the_user(tmp_path):
    output = (
        "exporting to /srv/work/onnx (int8, opset 20)\n"
        "error: model_fast.onnx (int8) does not match the torch model: top-1 agreement 93.8% < 95%\n"
        "provider         CPUExecutionProvider\n"
        "top-1 agreement  93.8% of decode steps\n"
        "result           FAIL: top-1 agreement 93.8% < 95%\n"
    )
    reason = export_process._reason(output, 1, {Path("/srv/work/onnx"): "the export folder"})
    assert reason.splitlines() == [
        "model_fast.onnx (int8) does not match the torch model: top-1 agreement 93.8% < 95%",
        "provider         CPUExecutionProvider",
        "top-1 agreement  93.8% of decode steps",
        "result           FAIL: top-1 agreement 93.8% < 95%",
    ]
    last = export_process._reason("loading\nerror: first\nerror: /srv/x/config.json: bad\n", 2, {})
    assert last == "config.json: bad"  # the last error, without the server's path
    assert export_process._reason("a\nKilled\n", -9, {}).startswith("the export process was killed by signal 9")


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_an_int8_export_that_fails_for_the_browser_points_to_fp32(handlers, monkeypatch, lang):
    """The browser backend's int8 export failing its parity gate says why, and to pick fp32 (its default)."""
    from webapp import browser

    detail = "model_fast.onnx (int8) does not match the torch model: top-1 agreement 93.8% < 95%"

    def failing(session, precision, settings, cancelled=None):
        raise UserError("error.export_failed", detail=detail)

    monkeypatch.setattr(models, "export_current", failing)
    with pytest.raises(UserError) as info:
        models.browser_files(handlers.services.session(Request("int8")), "int8", handlers.services.settings)
    message = info.value.message(lang)
    assert detail in message and "fp32" in message, message
    assert ("choose fp32" if lang == "en" else "выберите fp32") in message
    assert browser.PRECISIONS[0] == "fp32"  # the default
    with pytest.raises(UserError) as info:  # fp32 failing: nothing to point to
        models.browser_files(handlers.services.session(Request("fp32")), "fp32", handlers.services.settings)
    assert info.value.key == "error.export_failed"


def test_an_export_over_its_time_limit_is_killed(trained, handlers, children):
    session = handlers.services.session(Request("slow"))
    folder = session.new_folder("exports")
    with pytest.raises(export_process.ChildExportError, match="took longer than 0 s"):
        export_process.export_in_child(trained, folder, "fp32", threads=1, timeout_s=0.01)
    assert_gone(children[0])
    assert not leftovers(handlers) and not any(folder.iterdir())


@pytest.mark.parametrize("how", ["handler closed", "session closed"])
def test_a_cancelled_export_kills_its_child(trained, handlers, children, how):
    request = Request("cancel")
    session = handlers.services.session(request)
    session.set_model(copy.deepcopy(trained), "tiny", "tiny")
    stream = handlers.models.export("fp32", request=request)
    for _ in range(200):  # each step waits up to `handlers.POLL_S` for the export
        if children:
            break
        next(stream)
    assert children and children[0].poll() is None  # the export is running in its child
    if how == "handler closed":
        stream.close()  # what a Gradio cancel (Stop, page closed) does to the handler
        assert session.exports == {} and not any((session.folder / "exports").iterdir())
    else:
        handlers.services.unload(request=request)
        with pytest.raises(gr.Error) as info:
            list(stream)
        assert "cancelled" in info.value.message
        assert not session.folder.exists()
    assert_gone(children[0])
    assert not leftovers(handlers)


# One gate for the server's exports -------------------------------------------------------------------
class Peak:
    """Counts this process's export children every 20 ms while it runs (`with Peak() as peak:`)."""

    def __init__(self) -> None:
        self.most, self._stop = 0, threading.Event()

    def __enter__(self) -> "Peak":
        self._thread = threading.Thread(target=self._watch)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.most = max(self.most, len(export_children()))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow  # several export processes at once: not in the fast tier
def test_exports_from_every_entry_point_run_at_most_export_concurrency_children(trained, tmp_path, children):
    """Every entry point at once, in three sessions: the three fp32 callers of session "shared" wait
    on one export, so an entry point that went around the gate would start a fourth export child."""
    handlers = SimpleLLM.create(Settings(artifacts=tmp_path / "artifacts", generate_threads=1, export_concurrency=2))
    calls = {  # entry point: (session, call)
        "export": ("shared", lambda r: list(handlers.models.export("fp32", request=r))[-1][0]),
        "generate": ("shared", lambda r: generate(handlers, r, backend=backends.ORT_CPU)[1]),
        "compare": ("shared", lambda r: list(handlers.generate.compare("the cat", 4, backends.ORT_CPU, request=r))[-1]),
        "browser_model": ("browser", lambda r: list(handlers.generate.browser_model("fp32", request=r))[-1][-1]),
        "browser_reference": (
            "reference",
            lambda r: list(handlers.generate.browser_reference("the", 4, "browser", "int8", request=r))[-1],
        ),
    }
    for session in {session for session, _ in calls.values()}:
        handlers.services.session(Request(session)).set_model(copy.deepcopy(trained), session, session)
    results: dict[str, object] = {}

    def call(name: str) -> None:
        session, entry_point = calls[name]
        try:
            results[name] = entry_point(Request(session))
        except Exception as err:  # noqa: BLE001 - the assertions below report it
            results[name] = err

    workers = [threading.Thread(target=call, args=(name,)) for name in calls]
    with Peak() as peak:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert not [r for r in results.values() if isinstance(r, Exception)], results
    assert len(children) == 3  # one export per session and precision, whichever entry point asked
    assert peak.most == 2  # 3 exports, 2 at a time
    assert "(fp32)" in results["generate"] and "PASS" in results["compare"]
    assert not export_children() and not leftovers(handlers)


@pytest.mark.slow  # several export processes at once: not in the fast tier
def test_the_same_model_and_precision_is_exported_once_for_every_caller(trained, handlers, children):
    session = handlers.services.session(Request("shared"))
    session.set_model(copy.deepcopy(trained), "tiny", "tiny")
    first_cancel, outcomes = threading.Event(), {}

    def call(name: str, precision: str, cancel: threading.Event | None = None) -> None:
        try:
            outcomes[name] = models.export_current(session, precision, handlers.services.settings, cancel and cancel.is_set)
        except Exception as err:  # noqa: BLE001 - the assertions below report it
            outcomes[name] = err

    first = threading.Thread(target=call, args=("first", "fp32", first_cancel))
    first.start()
    assert wait_for(lambda: children, "an export child", 60)
    usage = exports._gate(session, handlers.services.settings).capacity.usage()  # admitted: its memory is reserved
    assert usage.running == ("export",) and usage.jobs == exports.export_memory(trained.num_parameters())
    second = threading.Thread(target=call, args=("second", "fp32"))
    second.start()
    first_cancel.set()  # the first caller leaves: the export goes on for the second
    first.join()
    second.join()
    assert isinstance(outcomes["first"], UserError) and "cancelled" in outcomes["first"].message("en")
    assert len(children) == 1 and children[0].returncode == 0
    assert outcomes["second"] == session.exports["fp32"]

    cancels = [threading.Event(), threading.Event()]  # two callers of an int8 export, both leave
    both = [threading.Thread(target=call, args=(f"int8-{n}", "int8", cancels[n])) for n in range(2)]
    for worker in both:
        worker.start()
    assert wait_for(lambda: len(children) == 2, "two export children", 60)
    for cancel in cancels:
        cancel.set()
    for worker in both:
        worker.join()
    assert len(children) == 2
    assert_gone(children[1])  # gone by the time the last caller returns
    assert "int8" not in session.exports and not leftovers(handlers)


def test_cancelling_browser_model_kills_its_export_child(trained, handlers, children):
    request = Request("stop-browser")
    session = handlers.services.session(request)
    session.set_model(copy.deepcopy(trained), "tiny", "tiny")
    stream = handlers.generate.browser_model("int8", request=request)
    for _ in range(200):
        if children:
            break
        next(stream)
    assert children and children[0].poll() is None
    niced = min(19, os.nice(0) + export_child.NICE)
    assert wait_for(lambda: _nice(children[0].pid) == niced, "the child's niceness", 30)  # it yields the CPU
    stream.close()  # the page's Stop: Gradio closes the handler
    assert_gone(children[0])
    assert session.exports == {} and not leftovers(handlers) and not export_children()


def test_an_export_over_its_memory_limit_is_killed_with_a_clear_message(trained, handlers, children, monkeypatch):
    monkeypatch.setattr(exports, "memory_limit", lambda reserved: 50 * MB)
    session = handlers.services.session(Request("greedy"))
    session.set_model(copy.deepcopy(trained), "tiny", "tiny")
    with pytest.raises(UserError) as info:
        models.export_current(session, "fp32", handlers.services.settings)
    assert re.fullmatch(
        r"The ONNX export failed: it used [\d ,]+ MB of memory, over its limit of 50 MB, and was stopped",
        info.value.message("en"),
    ), info.value.message("en")
    assert "лимита 50 МБ" in info.value.message("ru")
    assert_gone(children[0])
    assert session.exports == {} and not leftovers(handlers)


PARENT = """
import sys, threading
from pathlib import Path
from gpt import GPT
from webapp.export_process import export_in_child
model, folder = GPT.load(sys.argv[1]), Path(sys.argv[2])
folder.mkdir()
export_in_child(model, folder, "fp32", threads=1)
"""


@pytest.mark.slow  # several export processes at once: not in the fast tier
def test_an_export_child_dies_with_its_server(trained, tmp_path):
    trained.save(tmp_path / "model")
    server = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "model"), str(tmp_path / "export")],
        cwd=export_process.REPO_ROOT,
        env=export_process._child_env(),
    )
    try:
        child = wait_for(lambda: _children_of(server.pid), "the server's export child", 120)[0]
        threading.Event().wait(2)  # well inside the export by now
        assert _alive(child)
    finally:
        server.kill()  # kill -9: no handler, no `finally` runs in the server
        server.wait()
    assert wait_for(lambda: not _alive(child), "the child's end", 10)


def test_a_restarted_server_kills_the_export_children_a_dead_server_left(tmp_path):
    settings = Settings(artifacts=tmp_path / "artifacts")
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()  # a server pid that no longer runs
    exports_folder = settings.sessions_dir / f"{gone.pid}-1" / "visitor" / "exports"
    orphan_work, other_work = exports_folder / ".exports-001.x.work", exports_folder / ".exports-002.y.work"
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    orphan = subprocess.Popen([*sleep, "--model", str(orphan_work / "model")], start_new_session=True)
    stranger = subprocess.Popen([*sleep, "--model", "/elsewhere/model"], start_new_session=True)  # a reused pid
    try:
        for work, process in ((orphan_work, orphan), (other_work, stranger)):
            work.mkdir(parents=True)
            (work / export_process.CHILD_RECORD).write_text(str(process.pid))
            # Popen returns once the exec began; its arguments appear in /proc a moment later (empty
            # before: a loaded machine stretched that moment past the new server's look)
            wait_for(lambda: b"--model" in Path(f"/proc/{process.pid}/cmdline").read_bytes(), "the arguments", 10)
        SimpleLLM.create(settings)  # a new server: cleans what dead ones left
        assert orphan.wait(10) == -signal.SIGKILL
        assert stranger.poll() is None  # not ours: left alone
        assert not exports_folder.exists()
    finally:
        for process in (orphan, stranger):
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser_sized_export(trained, tmp_path_factory) -> Path:
    """A real fp32 export of `trained` (made once for the module) whose browser graph is enlarged
    to 6 MB, so that a few versions of it fill a session's disk cap. Read it; never write into it."""
    real = tmp_path_factory.mktemp("browser-sized") / "onnx"
    real.mkdir()
    export_process.export_in_child(trained, real, "fp32", threads=1)
    (real / json.loads((real / "web" / "model.json").read_text())["graph"]).write_bytes(bytes(6 * MB))
    return real


@pytest.mark.slow  # an ONNX export of its own, in a child process: not in the fast tier
def test_browser_model_cycles_keep_the_session_within_its_disk_cap(
    trained, browser_sized_export, tmp_path, monkeypatch, links
):
    """10 new model versions, each fetched by /browser_model: exports, their zips and browser files
    stay within the session's cap (the export is faked: a real one's files, the browser's graph 6 MB)."""

    def fake(model, folder, precision, **kwargs):
        shutil.copytree(browser_sized_export, folder, dirs_exist_ok=True)
        return folder

    monkeypatch.setattr(export_process, "export_in_child", fake)
    monkeypatch.setattr(exports, "export_in_child", fake)
    if links == "copies":
        monkeypatch.setattr(exports.os, "link", lambda *a: (_ for _ in ()).throw(OSError("no hard links")))
    cap = 64
    handlers = SimpleLLM.create(Settings(artifacts=tmp_path / "artifacts", max_session_disk_mb=cap, min_free_disk_mb=1))
    request = Request("cycles")
    session = handlers.services.session(request)
    for cycle in range(10):
        session.set_model(copy.deepcopy(trained), f"v{cycle}", f"v{cycle}")
        files = list(handlers.generate.browser_model("fp32", request=request))[-1]
        assert Path(files[0]).stat().st_size == 6 * MB
        used = disk_used(session.folder, session.downloads)
        assert used <= cap * MB, f"cycle {cycle}: {used / MB:.1f} MB in a session capped at {cap} MB"


@pytest.fixture(params=["hard links", "copies"])
def links(request) -> str:
    return request.param


def disk_used(*folders: Path) -> int:
    """Bytes under `folders`, a file hard-linked more than once counted once."""
    seen, total = set(), 0
    for folder in folders:
        for path in folder.rglob("*"):
            stat = path.lstat()
            if path.is_file() and (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def _children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _nice(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return None
