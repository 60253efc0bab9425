"""Per-browser-session state: each session has its own model, training run, exports and folders.

Sessions are keyed by Gradio's `session_hash` (one per page load, one per `gradio_client.Client`),
kept in a process-wide registry, closed when the page unloads, and swept when idle (never while
training). A session's folders (`<artifacts>/sessions/<pid>/<id>/` and its download folder) are
deleted with it; saved models (`webapp.library`) stay. A registry starts by deleting what
dead server processes left behind (`webapp.storage.clean_stale`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webapp import storage
from webapp.settings import Settings

if TYPE_CHECKING:
    from gpt import GPT
    from webapp.training import TrainingJob

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class Session:
    id: str
    folder: Path  # uploads, training runs and ONNX exports
    downloads: Path  # zips offered for download (under the system temporary folder)
    model: GPT | None = None
    model_label: str = ""  # where the current model came from, for the UI
    model_name: str = "model"  # a folder-safe name for its downloads
    model_version: int = 0  # bumped whenever the model changes: exports of an older version are stale
    job: TrainingJob | None = None  # the current or last training run
    exports: dict[str, Path] = field(default_factory=dict)  # precision -> ONNX folder of the current model
    onnx_models: dict[tuple[str, str], Any] = field(default_factory=dict)  # (folder, provider) -> OnnxGPT
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # the Models tab's results, oldest first
    pieces: list[Any] = field(default_factory=list)  # the last generation's `insight.TokenPiece`s
    last_seen: float = field(default_factory=time.monotonic)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _counter: int = 0

    @property
    def training(self) -> bool:
        return self.job is not None and self.job.running

    def set_model(self, model: GPT | None, label: str, name: str = "model") -> None:
        """Replace the current model; its exports and loaded ONNX sessions no longer apply."""
        with self.lock:
            self.model = model
            self.model_label = label
            self.model_name = name
            self.model_version += 1
            self.exports.clear()
            self.onnx_models.clear()

    def kept_folders(self) -> list[Path]:
        """Folders that pruning must keep: the last run (Resume needs it) and the current exports."""
        with self.lock:
            kept = list(self.exports.values())
            if self.job is not None:
                kept.append(self.job.checkpoint_dir.parent)
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
        self.model = None
        self.onnx_models.clear()
        for folder in (self.folder, self.downloads):
            shutil.rmtree(folder, ignore_errors=True)


class SessionRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
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
                session = Session(
                    id=key,
                    folder=self.folder / key,
                    downloads=self.downloads / key,
                )
                self._sessions[key] = session
            session.last_seen = time.monotonic()
            return session

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
