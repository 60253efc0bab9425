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
| `SIMPLE_LLM_MEMORY_MB` | 80% of the container's memory (cgroup limit, else the machine's) | the whole server's memory budget: the server itself, every heavy job's estimate (training, evaluation, export) and the models sessions hold; work that does not fit waits briefly, then is refused |
| `SIMPLE_LLM_CPUS` | the container's CPUs (cgroup quota and affinity, else the machine's) | CPU slots of heavy jobs: each takes one per thread it runs |
| `SIMPLE_LLM_MAX_MODELS_MEMORY_MB` | a quarter of `SIMPLE_LLM_MEMORY_MB` | models held in memory by all sessions; idle sessions' models are dropped first (reloaded from their checkpoint when used) |
| `SIMPLE_LLM_MAX_SESSIONS` | 256 | live sessions; the longest idle are closed first, never one that is training |
| `SIMPLE_LLM_TRAIN_CONCURRENCY` | 1 | trainings that run at once; later ones wait in the queue |
| `SIMPLE_LLM_EXPORT_CONCURRENCY` | 1 | ONNX exports that run at once, from every entry point (Export, onnxruntime generation, Compare, the browser backend) |
| `SIMPLE_LLM_EVAL_CONCURRENCY` | 1 | evaluations that run at once (outside the generation pool) |
| `SIMPLE_LLM_GENERATE_CONCURRENCY` | 4 | generations that run at once |
| `SIMPLE_LLM_TRAIN_THREADS` | the container's CPUs - 1 (at least 1) | torch threads of a training run: a free core keeps generation responsive |
| `SIMPLE_LLM_GENERATE_THREADS` | 1 | torch / onnxruntime threads of a generation (batch-1 decoding is latency bound) |
| `SIMPLE_LLM_SESSION_TTL_MINUTES` | 120 | idle sessions (not training) are deleted after this long |
| `SIMPLE_LLM_MAX_TRAIN_MEMORY_MB` | half of `SIMPLE_LLM_MEMORY_MB` ÷ training concurrency | estimated peak memory of one training run (weights, optimizer, activations, logits) |
| `SIMPLE_LLM_MAX_SESSION_DISK_MB` | 2048 | disk of one session (uploads, runs, exports, downloads); older runs and exports are pruned first |
| `SIMPLE_LLM_MAX_DISK_MB` | 16384 | disk of all sessions together (their folders and downloads); work that would pass it is refused |
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
from webapp import container

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFIX = "SIMPLE_LLM_"
MB = 1024 * 1024
_KINDS = {"int": int, "float": float}  # field annotations are strings here (postponed evaluation)


@dataclass(frozen=True)
class Settings:
    artifacts: Path
    max_upload_mb: int = 100
    max_text_mb: int = 20
    max_eval_mb: float = 2.0
    max_unzip_mb: int = 1024
    max_params: int = 20_000_000
    max_steps: int = 20_000
    max_train_minutes: float = 60.0
    max_new_tokens: int = 1024
    memory_mb: int = 8192
    cpus: int = 2
    max_models_memory_mb: int = 2048
    max_sessions: int = 256
    train_concurrency: int = 1
    generate_concurrency: int = 4
    export_concurrency: int = 1
    eval_concurrency: int = 1
    train_threads: int = 1
    generate_threads: int = DEFAULT_DECODE_THREADS
    session_ttl_minutes: float = 120.0
    max_train_memory_mb: int = 4096
    max_session_disk_mb: int = 2048
    max_disk_mb: int = 16384
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
        limits = container.detect()  # read the cgroup once
        values = {}
        for f in fields(cls):  # in order: a computed default may use the fields before it
            if f.name != "artifacts":
                default = _computed_default(f.name, values, f.default, limits)
                values[f.name] = _number(env, f.name.upper(), default, _KINDS[f.type])
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


def _computed_default(name: str, values: dict[str, float], default: float, limits: container.Limits) -> float:
    """Defaults that depend on the container's `limits` or on the settings before them."""
    if name == "memory_mb":
        return max(512, int(0.8 * limits.memory_bytes / MB))
    if name == "cpus":
        return limits.cpus
    if name == "max_models_memory_mb":
        return max(128, int(values["memory_mb"] / 4))
    if name == "train_threads":
        return max(1, int(values["cpus"]) - 1)
    if name == "max_train_memory_mb":
        return max(256, int(values["memory_mb"] / 2 / values["train_concurrency"]))
    return default
