"""Server settings, read once from environment variables (all optional).

| variable | default | meaning |
|---|---|---|
| `SIMPLE_LLM_ARTIFACTS` | `<repo>/artifacts` | artifact folder: `owners/<owner>/<name>/` (saved models, each private to its owner unless published), `models/<name>/` (models the operator shares with every visitor, read-only) and `sessions/<id>/` (each browser session's uploads, training checkpoints and ONNX exports, deleted with the session) |
| `SIMPLE_LLM_MAX_UPLOAD_MB` | 100 | largest uploaded file (text or checkpoint zip); also `launch(max_file_size=...)` |
| `SIMPLE_LLM_MAX_TEXT_MB` | 20 | total training text of one run |
| `SIMPLE_LLM_MAX_EVAL_MB` | 2 | text of one evaluation (Models tab) |
| `SIMPLE_LLM_MAX_UNZIP_MB` | 1024 | total unpacked size of an uploaded checkpoint zip |
| `SIMPLE_LLM_MAX_PARAMS` | 20000000 | largest model (parameters) a user may train, load or upload |
| `SIMPLE_LLM_MAX_STEPS` | 20000 | most optimizer steps of one training run |
| `SIMPLE_LLM_MAX_TRAIN_MINUTES` | 60 | wall-clock limit of one training run (it stops cleanly, keeping its checkpoint) |
| `SIMPLE_LLM_MAX_NEW_TOKENS` | 1024 | most tokens of one generation |
| `SIMPLE_LLM_TRAIN_CONCURRENCY` | 1 | trainings and exports that run at once; later ones wait in the queue |
| `SIMPLE_LLM_GENERATE_CONCURRENCY` | 4 | generations that run at once |
| `SIMPLE_LLM_TRAIN_THREADS` | CPU cores - 1 (at least 1) | torch threads of a training run: a free core keeps generation responsive |
| `SIMPLE_LLM_GENERATE_THREADS` | 1 | torch / onnxruntime threads of a generation (batch-1 decoding is latency bound) |
| `SIMPLE_LLM_SESSION_TTL_MINUTES` | 120 | idle sessions (not training) are deleted after this long |
| `SIMPLE_LLM_MAX_TRAIN_MEMORY_MB` | half the machine's memory ÷ training concurrency | estimated peak memory of one training run (weights, optimizer, activations, logits) |
| `SIMPLE_LLM_MAX_SESSION_DISK_MB` | 2048 | disk of one session (uploads, runs, exports); older runs and exports are pruned first |
| `SIMPLE_LLM_MAX_SAVED_MODELS` / `_MAX_SAVED_MB` | 20 / 2048 | saved models of one owner: count and total size |
| `SIMPLE_LLM_MAX_TOTAL_SAVED_MODELS` / `_MAX_TOTAL_SAVED_MB` | 1000 / 16384 | saved models of all owners together: count and total size |
| `SIMPLE_LLM_ANONYMOUS_SAVE_DAYS` | 7 | an anonymous owner's saved model is deleted after this many days without use (a signed-in owner's never) |
| `SIMPLE_LLM_MIN_FREE_DISK_MB` | 1024 | free disk kept on the artifact folder's drive: new work is refused below it |
| `SIMPLE_LLM_MAX_QUEUE` | 64 | requests waiting in the queue; beyond it a request is answered "busy, try again" |

The artifact folder defaults to `artifacts/` at the repository root (git-ignored); on a Hugging Face
Space, whose disk is ephemeral, point it wherever you like. Downloadable zips are written under the
system temporary folder, which Gradio serves without widening `allowed_paths`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from gpt import DEFAULT_DECODE_THREADS

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFIX = "SIMPLE_LLM_"
MB = 1024 * 1024
_KINDS = {"int": int, "float": float}  # field annotations are strings here (postponed evaluation)


@dataclass(frozen=True)
class Settings:
    artifacts: Path
    max_upload_mb: int = 100
    max_text_mb: int = 20
    max_eval_mb: int = 2
    max_unzip_mb: int = 1024
    max_params: int = 20_000_000
    max_steps: int = 20_000
    max_train_minutes: float = 60.0
    max_new_tokens: int = 1024
    train_concurrency: int = 1
    generate_concurrency: int = 4
    train_threads: int = 1
    generate_threads: int = DEFAULT_DECODE_THREADS
    session_ttl_minutes: float = 120.0
    max_train_memory_mb: int = 4096
    max_session_disk_mb: int = 2048
    max_saved_models: int = 20
    max_saved_mb: int = 2048
    max_total_saved_models: int = 1000
    max_total_saved_mb: int = 16384
    anonymous_save_days: float = 7.0
    min_free_disk_mb: int = 1024
    max_queue: int = 64

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings from `environ` (default `os.environ`); a malformed value raises ValueError naming it."""
        env = os.environ if environ is None else environ
        computed = {  # defaults that depend on the machine; the others are the fields' own
            "train_threads": max(1, (os.cpu_count() or 1) - 1),
            "max_train_memory_mb": _default_train_memory_mb(env),
        }
        values = {
            f.name: _number(env, f.name.upper(), computed.get(f.name, f.default), _KINDS[f.type])
            for f in fields(cls)
            if f.name != "artifacts"
        }
        artifacts = Path(env.get(PREFIX + "ARTIFACTS") or REPO_ROOT / "artifacts").expanduser().resolve()
        return cls(artifacts=artifacts, **values)

    @property
    def models_dir(self) -> Path:
        return self.artifacts / "models"

    @property
    def sessions_dir(self) -> Path:
        return self.artifacts / "sessions"

    @property
    def downloads_dir(self) -> Path:
        """Per-session zips offered for download live here (under the system temporary folder), one
        folder per artifact folder, so two servers on one machine never share or clean each other's."""
        digest = hashlib.sha256(str(self.artifacts).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"simple-llm-downloads-{digest}"


def _number(env: dict[str, str], name: str, default: float, kind: type) -> float:
    raw = env.get(PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{name} must be a {kind.__name__} > 0, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{PREFIX}{name} must be > 0, got {raw!r}")
    return value


def _default_train_memory_mb(env: dict[str, str]) -> int:
    """Half the machine's physical memory, shared by the trainings that may run at once."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        total = 8 * 1024 * MB
    concurrency = _number(env, "TRAIN_CONCURRENCY", 1, int)
    return max(256, int(total / 2 / MB / concurrency))
