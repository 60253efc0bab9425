"""Per-browser-session state: each session has its own model, training run, exports and folders.

Sessions are keyed by Gradio's `session_hash` (one per page load, one per `gradio_client.Client`,
a new one per plain REST call), kept in a process-wide registry, closed when the page unloads, and
swept when idle (never while training). The registry is bounded as a whole: at most
`max_sessions` live sessions (the longest idle are closed first), and the models they hold count
against the server's memory (`webapp.capacity`): when room is needed, idle sessions' models are
dropped, and reloaded from their checkpoint the next time their session uses them. A session's
folders (`<artifacts>/sessions/<pid>/<id>/` and its download folder) are deleted with it; saved
models (`webapp.library`) stay. A registry starts by deleting what
dead server processes left behind (`webapp.storage.clean_stale`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webapp import storage
from webapp.capacity import Capacity
from webapp.i18n import UserError
from webapp.settings import MB, Settings

if TYPE_CHECKING:
    from gpt import GPT
    from webapp.training import TrainingJob

log = logging.getLogger(__name__)

MIN_IDLE_S = 5.0  # a session seen this recently keeps its model in memory and is not closed for room

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class Session:
    id: str
    folder: Path  # uploads, training runs and ONNX exports
    downloads: Path  # zips offered for download (under the system temporary folder)
    capacity: Capacity | None = None  # the server's, which counts the memory of this session's models
    model: GPT | None = None
    model_source: Path | None = None  # a checkpoint folder the model reloads from after it was dropped
    model_label: str = ""  # where the current model came from, for the UI
    model_name: str = "model"  # a folder-safe name for its downloads
    saved_name: str | None = None  # the name the model is saved under, None when it is not saved
    model_version: int = 0  # bumped whenever the model changes: exports of an older version are stale
    job: TrainingJob | None = None  # the current or last training run
    exports: dict[str, Path] = field(default_factory=dict)  # precision -> ONNX folder of the current model
    onnx_models: dict[tuple[str, str], Any] = field(default_factory=dict)  # (folder, provider) -> OnnxGPT
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # the Models tab's results, oldest first
    pieces: list[Any] = field(default_factory=list)  # the last generation's `insight.TokenPiece`s
    suggested_prompt: str = ""  # the prompt the Generate tab last suggested (`GenerateHandlers.suggested_prompt`)
    last_seen: float = field(default_factory=time.monotonic)
    lock: threading.RLock = field(default_factory=threading.RLock)
    closed: bool = False
    loader: Callable[[Path], GPT] | None = None  # loads a checkpoint folder (with the server's checks)
    _onnx_bytes: dict[tuple[str, str], int] = field(default_factory=dict)
    _counter: int = 0

    @property
    def training(self) -> bool:
        return self.job is not None and self.job.running

    def set_model(
        self,
        model: GPT | None,
        label: str,
        name: str = "model",
        source: Path | None = None,
        force: bool = False,
        saved: bool = False,
    ) -> None:
        """Replace the current model (reloadable from checkpoint folder `source`, when given); its
        exports and loaded ONNX sessions no longer apply. `saved`: the model is a saved one, `name`.
        Raises `UserError` when the server has no memory left for it (the previous model stays
        then), unless `force` (`Capacity.hold`)."""
        with self.lock:
            self._hold(model_bytes(model) if model is not None else 0, force)
            self.model = model
            self.model_source = source
            self.model_label = label
            self.model_name = name
            self.saved_name = name if saved else None
            self.model_version += 1
            self.exports.clear()
            self.onnx_models.clear()

    def current_model(self) -> GPT | None:
        """The model, reloaded from its checkpoint when the server dropped it to make room."""
        with self.lock:
            if self.model is None and self.model_source is not None and self.loader is not None:
                model = self.loader(self.model_source)
                self._hold(model_bytes(model))
                self.model = model
                log.info("session %s: model reloaded from its checkpoint", self.id)
            return self.model

    def add_onnx_model(self, key: tuple[str, str], onnx: Any, size: int) -> None:
        """Keep a loaded ONNX session of the current model (`size` bytes of memory)."""
        with self.lock:
            self._hold(self.held_bytes() + size)
            self.onnx_models[key] = onnx
            self._onnx_bytes[key] = size

    def held_bytes(self) -> int:
        model = model_bytes(self.model) if self.model is not None else 0
        return model + sum(self._onnx_bytes.get(key, 0) for key in self.onnx_models)

    def drop_model(self) -> int:
        """Drop the model and its ONNX sessions from memory when it can be reloaded and the session
        is idle; returns the bytes freed (0 when it kept them)."""
        if not self.lock.acquire(blocking=False):  # in use right now
            return 0
        try:
            reloadable = self.model_source is not None and self.loader is not None
            if self.training or not reloadable or time.monotonic() - self.last_seen < MIN_IDLE_S:
                return 0
            freed = self.held_bytes()
            self.model = None
            self.onnx_models.clear()
            self._onnx_bytes.clear()
            if self.capacity is not None:
                self.capacity.release(self.id)
            log.info("session %s: model dropped from memory (%.0f MB)", self.id, freed / MB)
            return freed
        finally:
            self.lock.release()

    def _hold(self, size: int, force: bool = False) -> None:
        if self.capacity is None:
            return
        if size:
            self.capacity.hold(self.id, size, force)
        else:
            self.capacity.release(self.id)

    def kept_folders(self) -> list[Path]:
        """Folders that pruning must keep: the last run (Resume needs it) and the current exports."""
        with self.lock:
            kept = list(self.exports.values())
            if self.job is not None:
                kept.append(self.job.checkpoint_dir.parent)
            if self.model_source is not None and self.model_source.is_relative_to(self.folder):
                kind, name = self.model_source.relative_to(self.folder).parts[:2]  # e.g. runs/run-001
                kept.append(self.folder / kind / name)
            return kept

    def new_folder(self, kind: str) -> Path:
        """A fresh subfolder `kind/<kind>-<n>` of the session folder."""
        with self.lock:
            while True:
                self._counter += 1
                path = self.folder / kind / f"{kind}-{self._counter:03d}"
                if not path.exists():
                    path.mkdir(parents=True)
                    return path

    def close(self) -> None:
        """Stop training, drop the model and delete the session's folders."""
        job = self.job
        if job is not None and job.running:
            job.stop("session closed")
            job.wait(timeout=60)
        self.closed = True
        self.model = None
        self.model_source = None
        self.onnx_models.clear()
        if self.capacity is not None:
            self.capacity.release(self.id)
        for folder in (self.folder, self.downloads):
            shutil.rmtree(folder, ignore_errors=True)


def model_bytes(model: GPT) -> int:
    """Memory a model holds: its fp32 weights and the decoding's copy of the LM head."""
    config = model.config
    return 4 * (model.num_parameters() + config.vocab_size * config.emb_size)


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class SessionRegistry:
    def __init__(self, settings: Settings, loader: Callable[[Path], GPT] | None = None) -> None:
        self.settings = settings
        self.loader = loader  # reloads a dropped model from its checkpoint folder
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.capacity = Capacity(
            settings.memory_mb * MB,
            cpu_slots=settings.cpus,
            models_bytes=settings.max_models_memory_mb * MB,
            baseline_bytes=resident_bytes(),  # the server itself: Python, torch, Gradio
            evict=self.drop_idle_models,
        )
        storage.clean_stale(settings)
        instance = storage.instance_name()  # this server's folders: what a dead server left is cleaned
        self.folder = settings.sessions_dir / instance
        self.downloads = settings.downloads_dir / instance

    def get(self, session_hash: str | None) -> Session:
        """The session of `session_hash`, created on first use; idle ones are swept on the way."""
        key = folder_name(session_hash or "anonymous")
        self.sweep()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                if len(self._sessions) >= self.settings.max_sessions:
                    self._close_for_room()
                session = Session(
                    id=key,
                    folder=self.folder / key,
                    downloads=self.downloads / key,
                    capacity=self.capacity,
                    loader=self.loader,
                )
                self._sessions[key] = session
            session.last_seen = time.monotonic()
            return session

    def _close_for_room(self) -> None:
        """Close the longest idle session that is not training, to admit a new one (lock held);
        refuse the new session when every one is busy."""
        now = time.monotonic()
        idle = [s for s in self._sessions.values() if not s.training and now - s.last_seen >= MIN_IDLE_S]
        if not idle:
            raise UserError("error.too_many_sessions", limit=self.settings.max_sessions)
        oldest = min(idle, key=lambda s: s.last_seen)
        del self._sessions[oldest.id]
        log.info("closing idle session %s: %d sessions is the limit", oldest.id, self.settings.max_sessions)
        threading.Thread(target=oldest.close, name="simple-llm-close-session", daemon=True).start()

    def drop_idle_models(self, need: int, spare: str | None) -> int:
        """Drop idle sessions' models (least recently used first, never `spare`'s) until `need` bytes
        are freed; returns the bytes freed. The capacity controller calls this when it needs room."""
        with self._lock:
            candidates = sorted(
                (s for s in self._sessions.values() if s.id != spare and s.model is not None),
                key=lambda s: s.last_seen,
            )
        freed = 0
        for session in candidates:
            if freed >= need:
                break
            freed += session.drop_model()
        return freed

    def close(self, session_hash: str | None) -> None:
        key = folder_name(session_hash or "anonymous")
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            session.close()

    def sweep(self) -> None:
        """Close sessions idle for longer than the TTL, unless they are training."""
        limit = self.settings.session_ttl_minutes * 60
        now = time.monotonic()
        with self._lock:
            idle = [s for s in self._sessions.values() if now - s.last_seen > limit and not s.training]
            for session in idle:
                del self._sessions[session.id]
        for session in idle:
            log.info("closing idle session %s", session.id)
            session.close()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_hash: str) -> bool:
        return folder_name(session_hash) in self._sessions


def folder_name(session_hash: str) -> str:
    """A session id that is safe as a folder name (Gradio's hash is client-supplied)."""
    if _SAFE_ID.fullmatch(session_hash):
        return session_hash
    return "h" + hashlib.sha256(session_hash.encode("utf-8", "replace")).hexdigest()[:32]
