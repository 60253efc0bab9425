"""The one checkpoint format: a folder with `config.json`, `model.safetensors`, `tokenizer.json`.

No pickle anywhere. Every file is written under a temporary name and renamed into place, so an
interrupted save never leaves a half-written file where a good one was. Reading a missing,
truncated or mismatched file raises `CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model as save_safetensors

from gpt.config import GPTConfig

if TYPE_CHECKING:
    from torch import nn

    from gpt.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not fit the model."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_model(model: nn.Module, path: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write `model` (a `GPT`) and its tokenizer into folder `path`; weights first, config last."""
    folder = Path(path)
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_safetensors(model, str(tmp), metadata={"format": "pt"}))
    if tokenizer is not None:
        atomic_write(folder / TOKENIZER_FILE, lambda tmp: tokenizer.save(tmp))
    atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(model.config.to_json() + "\n", encoding="utf-8"))
    return folder


def read_config(path: str | Path) -> GPTConfig:
    file = _existing(Path(path), CONFIG_FILE)
    try:
        return GPTConfig.from_json(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: not a valid model config ({err})") from err


def read_weights(model: nn.Module, path: str | Path) -> None:
    """Load `model.safetensors` into `model` in place; every tensor must be present with its shape."""
    file = _existing(Path(path), WEIGHTS_FILE)
    try:
        load_model(model, str(file), strict=True, device=str(next(model.parameters()).device))
    except SafetensorError as err:
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({err})") from err
    except RuntimeError as err:
        raise CheckpointError(f"{file}: weights do not match {Path(path) / CONFIG_FILE} ({err})") from err


def read_tokenizer(path: str | Path) -> Tokenizer | None:
    """The folder's tokenizer, or None when it has no `tokenizer.json`."""
    from gpt.tokenizer import Tokenizer

    file = Path(path) / TOKENIZER_FILE
    if not file.exists():
        return None
    try:
        return Tokenizer.load(file)
    except FileNotFoundError:
        raise
    except Exception as err:  # tokenizers raises its own exception types for bad JSON
        raise CheckpointError(f"{file}: not a valid tokenizer ({err})") from err


def _existing(folder: Path, name: str) -> Path:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    file = folder / name
    if not file.is_file():
        raise CheckpointError(f"{file}: missing from the checkpoint folder")
    return file
