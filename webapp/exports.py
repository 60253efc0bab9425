"""ONNX exports of a session's current model, every one through one gate.

Export, onnxruntime generation, Compare and the browser backend all reach `export_model`, which:
- returns the session's export of the current model version and precision when it exists;
- runs at most one export per session, model version and precision: a second caller waits for the
  first one's result. Each export runs in its own thread (a "flight") that callers wait on; a
  caller that cancels leaves, the export goes on for the others, and when the last one leaves the
  export's child process is killed (and that caller waits until it is gone);
- takes one of the server's `export_concurrency` export slots, then admits the export through the
  server's `Capacity` (job "export": its estimated peak memory, one CPU slot per thread), so at most
  that many export children exist at once, whatever the entry point;
- runs `python -m export` in a child process (`webapp.export_process`) that is killed when its
  resident memory passes its reservation by `RSS_MARGIN`.

`in_worker` lets a generator handler wait for such work while Gradio can still cancel it: closing
the generator (Stop, a closed page) cancels the work.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gpt import CONFIG_FILE, TOKENIZER_FILE
from webapp import storage
from webapp.capacity import Cancelled, Capacity
from webapp.export_process import ChildExportError, export_in_child
from webapp.i18n import Msg, UserError
from webapp.settings import MB, Settings

if TYPE_CHECKING:
    from gpt import GPT
    from webapp.sessions import Session

log = logging.getLogger(__name__)

T = TypeVar("T")

# Peak resident memory of the export child (`python -m export`, 1 thread), measured with
# /usr/bin/time -v: 454-457 MB at 8 k parameters, 498 MB at 2.0 M, 902-906 MB at 19.6 M (fp32 and
# int8), i.e. about 456 MB + 23 bytes a parameter; the estimate adds headroom to both
# (docs/decisions.md, "Web app").
EXPORT_BASE_BYTES = 512 * MB  # python, torch, onnx, onnxruntime and the exporter, for any model
EXPORT_BYTES_PER_PARAM = 32  # weights in the exporter, the graphs, their optimised and quantised copies
RSS_MARGIN = 1.25  # the child is killed when its resident memory passes its reservation times this
SLOT_WAIT_S = 600.0  # an export waits in line this long for a slot (exports take up to about a minute each)
POLL_S = 0.1  # how often a waiting caller checks for cancellation
LAST_WAIT_S = 60.0  # the last caller to cancel waits this long for the child to be killed


def export_memory(params: int) -> int:
    """Estimated peak memory (bytes) of the export child for a `params`-parameter model."""
    return EXPORT_BASE_BYTES + EXPORT_BYTES_PER_PARAM * params


def memory_limit(reserved: int) -> int:
    """The resident memory above which an export child that reserved `reserved` bytes is killed."""
    return int(reserved * RSS_MARGIN)


def export_model(
    session: Session, model: GPT, precision: str, settings: Settings, cancelled: Callable[[], bool] | None = None
) -> Path:
    """The folder of `model`'s (the session's current model's) export in `precision`, made on first
    use through the gate (see the module docstring). `cancelled` is polled while this caller waits;
    the session closing cancels too. Raises `UserError`."""
    with session.lock:
        version = session.model_version
        existing = session.exports.get(precision)
        if existing is not None and existing.is_dir():
            return existing
    gate = _gate(session, settings)
    key = (str(session.folder), version, precision)
    flight = gate.join(key, lambda f: _export(session, model, version, precision, settings, gate, f))
    left = False
    try:
        while not flight.done.wait(POLL_S):
            if (cancelled is not None and cancelled()) or session.closed:
                left = True
                break
    finally:
        if gate.leave(flight):  # the last one to leave: its child is being killed; wait until it is gone
            flight.done.wait(LAST_WAIT_S)
    if left:
        raise UserError("error.export_failed", detail=Msg("export.cancelled"))
    if flight.error is not None:
        raise _fresh(flight.error)
    return flight.folder


def browser_files(session: Session, folder: Path, settings: Settings) -> list[Path]:
    """The files the browser backend fetches from the export `folder`: the graph its page runs, the
    configs and tokenizer, and `web/model.json` (which names them), placed among the session's
    downloads (which the app may serve) in `<downloads>/<export>/browser/`, pruned with the export.
    They are hard links to the export's files where the file system allows (no more disk), else
    copies, for which room is made under the session's disk cap."""
    page = folder / "web" / "model.json"
    if not page.is_file():
        raise UserError("error.no_web_page")
    graph = json.loads(page.read_text(encoding="utf-8"))["graph"]
    target = session.downloads / folder.name / "browser"
    target.mkdir(parents=True, exist_ok=True)
    found = []
    for source in (
        folder / graph,
        *(folder / name for name in (CONFIG_FILE, TOKENIZER_FILE, "tokenizer_config.json")),
        page,
    ):
        served = target / source.name
        if not served.exists():
            part = target / f".{source.name}.{threading.get_ident()}"
            part.unlink(missing_ok=True)
            try:
                os.link(source, part)
            except OSError:  # another file system, or no hard links: a copy, counted in the session's disk
                keep = [folder, *session.kept_folders()]
                storage.make_room(session.folder, settings, source.stat().st_size, keep, session.downloads)
                shutil.copyfile(source, part)
            os.replace(part, served)
        found.append(served)
    return found


def in_worker(
    work: Callable[[threading.Event], T], tick: Callable[[float], Any], poll_s: float = 0.5, stop_wait_s: float = 120.0
) -> Generator[Any, None, T]:
    """Run `work(cancel)` in a worker thread; while it runs, yield `tick(seconds elapsed)` about every
    `poll_s`; then return its result (or raise its error): `result = yield from in_worker(...)`.
    Closing this generator (a Gradio cancel: Stop, a closed page) sets `cancel` and waits up to
    `stop_wait_s` for the work to end, so an export's child is gone when the handler is."""
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work(cancel)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=run, name="simple-llm-export-wait", daemon=True)
    started = time.monotonic()
    worker.start()
    try:
        while True:
            worker.join(poll_s)
            if not worker.is_alive():
                break
            yield tick(time.monotonic() - started)
    finally:
        if worker.is_alive():
            cancel.set()
            worker.join(stop_wait_s)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# The gate -------------------------------------------------------------------------------------
class Flight:
    """One export in progress, and how many callers wait for it."""

    def __init__(self, key: tuple) -> None:
        self.key = key
        self.waiters = 0
        self.abandoned = threading.Event()  # every caller left: kill the child
        self.done = threading.Event()
        self.folder: Path | None = None
        self.error: BaseException | None = None


class ExportGate:
    """One server's export slots (`export_concurrency`) and its exports in flight."""

    def __init__(self, capacity: Capacity, concurrency: int) -> None:
        self.capacity = capacity
        self.concurrency = max(1, int(concurrency))
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._lock = threading.Lock()
        self._flights: dict[tuple, Flight] = {}

    def join(self, key: tuple, run: Callable[[Flight], Path]) -> Flight:
        """The flight of `key` with one more waiter: the running one, or a new one started with `run`."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is None or flight.abandoned.is_set():
                flight = self._flights[key] = Flight(key)
                threading.Thread(target=self._fly, args=(flight, run), name="simple-llm-export", daemon=True).start()
            flight.waiters += 1
            return flight

    def leave(self, flight: Flight) -> bool:
        """One waiter less; True when it was the last and the export was still running (now abandoned)."""
        with self._lock:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.done.is_set():
                log.info("every caller of export %s left: stopping it", flight.key[1:])
                flight.abandoned.set()
                return True
            return False

    def _fly(self, flight: Flight, run: Callable[[Flight], Path]) -> None:
        """The export thread: it starts the child and waits for it, so it outlives it (the child's
        PR_SET_PDEATHSIG is tied to this thread)."""
        try:
            flight.folder = run(flight)
        except BaseException as err:  # noqa: BLE001 - handed to every waiter
            flight.error = err
        finally:
            with self._lock:
                if self._flights.get(flight.key) is flight:
                    del self._flights[flight.key]
            flight.done.set()

    @contextmanager
    def slot(self, cancelled: Callable[[], bool]):
        """Hold one of the export slots; wait in line for one at most `SLOT_WAIT_S` (the caller may cancel)."""
        deadline = time.monotonic() + SLOT_WAIT_S
        while not self._slots.acquire(timeout=POLL_S):
            if cancelled():
                raise Cancelled("export")
            if time.monotonic() > deadline:
                raise UserError("error.exports_busy", limit=self.concurrency)
        try:
            yield
        finally:
            self._slots.release()


_GATES: weakref.WeakKeyDictionary[Capacity, ExportGate] = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


def _gate(session: Session, settings: Settings) -> ExportGate:
    """The export gate of the server `session` belongs to (one per `Capacity`)."""
    capacity = session.capacity
    if capacity is None:  # a session made outside a registry (tests): a server of its own
        capacity = session.capacity = Capacity(settings.memory_mb * MB, settings.cpus, settings.max_models_memory_mb * MB)
    with _GATES_LOCK:
        gate = _GATES.get(capacity)
        if gate is None:
            gate = _GATES[capacity] = ExportGate(capacity, settings.export_concurrency)
        return gate


def _export(
    session: Session, model: GPT, version: int, precision: str, settings: Settings, gate: ExportGate, flight: Flight
) -> Path:
    """Run in the flight's thread: take a slot, admit the export, make room on disk, run the child."""

    def cancelled() -> bool:
        return flight.abandoned.is_set() or session.closed

    params = model.num_parameters()
    reserved = export_memory(params)
    threads = settings.generate_threads
    try:
        keep = session.kept_folders()
        disk = storage.reserve(session.folder, settings, storage.export_bytes(params), keep, session.downloads)
        with gate.slot(cancelled), gate.capacity.admit("export", reserved, cpus=threads, cancelled=cancelled), disk:
            folder = session.new_folder("exports")
            try:
                export_in_child(
                    model, folder, precision, threads=threads, cancelled=cancelled, memory_limit=memory_limit(reserved)
                )
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
    except Cancelled:
        raise UserError("error.export_failed", detail=Msg("export.cancelled")) from None
    except ChildExportError as err:
        raise UserError("error.export_failed", detail=err.detail) from None
    except UserError:
        raise
    except Exception as err:  # saving the checkpoint or starting the child failed: the app keeps serving
        raise UserError("error.export_failed", detail=_short(err)) from err
    with session.lock:
        if session.model_version == version:
            session.exports[precision] = folder
    return folder


def _fresh(err: BaseException) -> BaseException:
    """A copy of a flight's error for one waiter (one exception object is not raised in many threads)."""
    if isinstance(err, UserError):
        return UserError(err.key, **err.values)
    return UserError("error.export_failed", detail=_short(err))


def _short(err: BaseException, limit: int = 400) -> str:
    text = str(err).strip() or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
