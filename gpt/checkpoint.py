"""The one checkpoint format: a folder with `config.json`, `model.safetensors`, `tokenizer.json`
(and the Hugging Face configs beside them, `gpt.hub`, so transformers loads it as a GPT-2).

A training checkpoint (`step-00000123/` under a checkpoint folder) is the same folder plus what a
resume needs: `optimizer.safetensors`, `trainer_state.json` and `rng.safetensors`, and, when training
averages the weights (`gpt.WeightEMA`), `training_weights.safetensors`: the raw weights training goes
on from, while `model.safetensors` holds their average (the model to use).

No pickle anywhere. Every file is written under a temporary name and renamed into place, and a
training checkpoint folder is written whole under a temporary name and renamed too (`gpt.files`),
so an interrupted save never leaves a half-written file or folder where a good one was. Reading a missing,
truncated or mismatched file raises `CheckpointError` naming the file and the problem.

Files are sized before they are read: a `config.json` larger than `MAX_CONFIG_BYTES`, or a
`model.safetensors` whose size does not fit its config's parameter count, is refused before
anything is read or allocated (the app loads folders that anyone may upload).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file
from safetensors.torch import save_model as save_safetensors

from gpt.config import GPTConfig, count_parameters
from gpt.files import atomic_folder, atomic_write
from gpt.hub import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    SPECIAL_TOKENS_FILE,
    TOKENIZER_CONFIG_FILE,
    read_config_values,
    write_configs,
)
from gpt.tokenizer import TOKENIZER_FILE, Tokenizer

if TYPE_CHECKING:
    from torch import Tensor, nn
    from torch.optim import Optimizer

WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINING_WEIGHTS_FILE = "training_weights.safetensors"
"""The raw weights of a training checkpoint whose `model.safetensors` holds their average, by parameter name."""
TRAINER_STATE_FILE = "trainer_state.json"
TRAINING_FILE = "training.json"
"""What the model was trained on and how far (`GPT.training_record`), for its model card."""
MAX_TRAINING_BYTES = 1024 * 1024
MODEL_FILES = (
    CONFIG_FILE,
    WEIGHTS_FILE,
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_FILE,
    GENERATION_CONFIG_FILE,
    TRAINING_FILE,
)
"""Every file `save_model` may write (the first two always, the tokenizer's with a tokenizer)."""
RNG_FILE = "rng.safetensors"
BEST_DIR = "best"
LINEAR_LAYOUT = "in_out"
"""Layout tag of the block matrices in every weights file written now (its `linear_layout` metadata):
`[in_features, out_features]`, as `gpt.model.Conv1D` stores them. Files without it hold `[out, in]`
matrices, from simple-llm before `Conv1D`."""
_STEP_DIR = re.compile(r"step-(\d{8,})")
_DEVICE_OPTIONS = ("foreach", "fused", "capturable")  # optimizer settings that follow the device, not the file
MAX_CONFIG_BYTES = 64 * 1024
"""Largest `config.json` read; a real one is about 300 bytes."""
HEADER_ALLOWANCE = 64 * 1024
"""Bytes a weights file may hold besides its tensors, plus `HEADER_BYTES_PER_LAYER` per layer: the
safetensors header names every tensor with its shape and offsets (about 1.1 KB per layer)."""
HEADER_BYTES_PER_LAYER = 8 * 1024
MIN_BYTES_PER_PARAMETER = 2
"""Weights are saved in fp32 (4 bytes a parameter); bf16 or fp16 files (2 bytes) also load."""
MAX_BYTES_PER_PARAMETER = 4


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not fit the model."""


def save_model(model: nn.Module, path: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write `model` (a `GPT`) and its tokenizer into folder `path`; weights first, config last."""
    folder = Path(path)
    metadata = {"format": "pt", "linear_layout": LINEAR_LAYOUT}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_safetensors(model, str(tmp), metadata=metadata))
    if tokenizer is not None:
        atomic_write(folder / TOKENIZER_FILE, lambda tmp: tokenizer.save(tmp))
    record = getattr(model, "training_record", None)
    if record:
        text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
        atomic_write(folder / TRAINING_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    write_configs(folder, model.config, tokenizer)  # config.json last
    return folder


def read_config(path: str | Path) -> GPTConfig:
    """The folder's validated `config.json`."""
    file = _existing(Path(path), CONFIG_FILE)
    size = file.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{file}: {size:,} bytes, more than a model config's {MAX_CONFIG_BYTES:,}")
    try:
        return GPTConfig.from_dict(read_config_values(json.loads(file.read_text(encoding="utf-8"))))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: not a valid model config ({err})") from err


def read_weights(model: nn.Module, path: str | Path) -> None:
    """Load `model.safetensors` into `model` in place; every tensor must be present with its shape.

    A file of the older `[out, in]` layout is handed to `model.load_out_in_state_dict` (a `GPT`'s), which
    knows which of its matrices to transpose.
    """
    file = check_weights_size(path, model.config)
    device = str(next(model.parameters()).device)
    try:
        with safe_open(str(file), "pt") as weights:
            layout = (weights.metadata() or {}).get("linear_layout")
        if layout == LINEAR_LAYOUT:
            load_model(model, str(file), strict=True, device=device)
        else:
            _load_out_in_weights(model, load_file(str(file), device=device))
    except SafetensorError as err:
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({err})") from err
    except RuntimeError as err:
        raise CheckpointError(f"{file}: weights do not match {Path(path) / CONFIG_FILE} ({err})") from err


def check_weights_size(path: str | Path, config: GPTConfig) -> Path:
    """The folder's `model.safetensors`, once its size is known to fit `config`; else `CheckpointError`.

    Checked before reading or allocating anything: a file far larger than `config` allows (4 bytes a
    parameter, plus the header) is not this model's and would be read whole; a file far smaller is
    truncated or belongs to a smaller model, and a config claiming a huge model must not make the
    loader build it first.
    """
    file = _existing(Path(path), WEIGHTS_FILE)
    size = file.stat().st_size
    parameters = count_parameters(config)
    largest = MAX_BYTES_PER_PARAMETER * parameters + HEADER_ALLOWANCE + HEADER_BYTES_PER_LAYER * config.num_layers
    smallest = MIN_BYTES_PER_PARAMETER * parameters
    if not smallest <= size <= largest:
        raise CheckpointError(
            f"{file}: {size:,} bytes cannot hold the {parameters:,} parameters of "
            f"{Path(path) / CONFIG_FILE} (expected {smallest:,} to {largest:,} bytes); "
            "the file is truncated or belongs to another model"
        )
    return file


def _load_out_in_weights(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a weights file of simple-llm before `Conv1D`, whose block matrices were `[out, in]`."""
    head, embedding = "lm_head.weight", "transformer.wte.weight"  # safetensors stores a tied pair once
    shared = state.get(head, state.get(embedding))
    if getattr(model.config, "tie_embeddings", False) and shared is not None:
        state.setdefault(head, shared)
        state.setdefault(embedding, shared)
    model.load_out_in_state_dict(state)  # a missing or misshapen tensor: RuntimeError


def read_tokenizer(path: str | Path) -> Tokenizer | None:
    """The folder's tokenizer, or None when it has no `tokenizer.json`."""
    file = Path(path) / TOKENIZER_FILE
    if not file.exists():
        return None
    try:
        return Tokenizer.load(file)
    except FileNotFoundError:
        raise
    except Exception as err:  # tokenizers raises its own exception types for bad JSON
        raise CheckpointError(f"{file}: not a valid tokenizer ({err})") from err


def read_training_record(path: str | Path) -> dict[str, Any]:
    """The folder's `training.json` (an empty dict when it has none)."""
    file = Path(path) / TRAINING_FILE
    if not file.is_file():
        return {}
    if file.stat().st_size > MAX_TRAINING_BYTES:
        raise CheckpointError(f"{file}: larger than {MAX_TRAINING_BYTES:,} bytes")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(record, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return record


def _existing(folder: Path, name: str) -> Path:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    file = folder / name
    if not file.is_file():
        raise CheckpointError(f"{file}: missing from the checkpoint folder")
    return file


def step_dir_name(step: int) -> str:
    """Folder name of the training checkpoint after `step` optimizer steps: `step-00000123`."""
    return f"step-{step:08d}"


def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """The `step-*` folders of `checkpoint_dir`, oldest first (none when it does not exist)."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest `step-*` folder of `checkpoint_dir`, or None."""
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def prune_checkpoints(checkpoint_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` `step-*` folders."""
    for old in list_checkpoints(checkpoint_dir)[:-keep_last]:
        shutil.rmtree(old)


def save_training_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: Optimizer,
    state: dict[str, Any],
    rng: dict[str, Tensor],
    training_weights: dict[str, Tensor] | None = None,
) -> Path:
    """Write folder `path` atomically: the model files, the optimizer state, `state` as JSON and `rng`
    tensors; and `training_weights` (by parameter name), the raw weights when `model` holds their average."""
    tensors, groups = _flatten_optimizer(optimizer)
    text = json.dumps({**state, "optimizer_param_groups": groups}, indent=1) + "\n"

    with atomic_folder(Path(path)) as tmp:
        save_model(model, tmp, tokenizer=getattr(model, "tokenizer", None))
        if training_weights is not None:
            raw = {name: weight.contiguous() for name, weight in training_weights.items()}
            atomic_write(tmp / TRAINING_WEIGHTS_FILE, lambda f: save_file(raw, str(f)))
        atomic_write(tmp / OPTIMIZER_FILE, lambda f: save_file(tensors, str(f)))
        atomic_write(tmp / RNG_FILE, lambda f: save_file(rng, str(f)))
        atomic_write(tmp / TRAINER_STATE_FILE, lambda f: f.write_text(text, encoding="utf-8"))
    return Path(path)


def read_training_state(path: str | Path, optimizer: Optimizer) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Load the optimizer state of checkpoint folder `path` into `optimizer`; return its trainer state and RNG."""
    folder = Path(path)
    state_file = _existing(folder, TRAINER_STATE_FILE)
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        groups = state.pop("optimizer_param_groups")
        params = _saved_param_indices(groups, optimizer)
    except (ValueError, AttributeError, TypeError, KeyError) as err:  # JSON and Unicode errors are ValueErrors
        raise CheckpointError(f"{state_file}: not a valid trainer state for this model ({err!r})") from err
    _load_optimizer(optimizer, groups, params, folder)
    return state, _read_tensors(folder, RNG_FILE)


def read_training_weights(model: nn.Module, path: str | Path) -> bool:
    """Load the raw weights of checkpoint folder `path` into `model` in place, if it has them apart
    (`TRAINING_WEIGHTS_FILE`); True if it had. Every parameter must be there with its shape."""
    folder = Path(path)
    if not (folder / TRAINING_WEIGHTS_FILE).is_file():
        return False
    tensors = _read_tensors(folder, TRAINING_WEIGHTS_FILE)
    params = dict(model.named_parameters())
    wrong = sorted(set(params) ^ set(tensors)) or [n for n, p in params.items() if tensors[n].shape != p.shape]
    if wrong:
        raise CheckpointError(f"{folder / TRAINING_WEIGHTS_FILE}: weights do not fit the model ({', '.join(wrong)})")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])
    return True


def _flatten_optimizer(optimizer: Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """Optimizer tensors named `<param index>.<key>` (e.g. `3.exp_avg`), and its param groups."""
    saved = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": value.contiguous()
        for index, values in saved["state"].items()
        for key, value in values.items()
    }
    return tensors, saved["param_groups"]


def _saved_param_indices(groups: list[dict[str, Any]], optimizer: Optimizer) -> dict[int, Tensor]:
    """The parameter behind each index of the saved param groups, which must have the optimizer's sizes."""
    return {
        index: param
        for saved, group in zip(groups, optimizer.param_groups, strict=True)
        for index, param in zip(saved["params"], group["params"], strict=True)
    }


def _load_optimizer(
    optimizer: Optimizer, groups: list[dict[str, Any]], params: dict[int, Tensor], folder: Path
) -> None:
    """Inverse of `_flatten_optimizer`; every tensor of the folder's optimizer file must fit its parameter."""
    tensors = _read_tensors(folder, OPTIMIZER_FILE)
    state: dict[int, dict[str, Tensor]] = {}
    try:
        for name, tensor in tensors.items():
            index, key = name.split(".", 1)
            shape = params[int(index)].shape
            if tensor.dim() and tensor.shape != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, its parameter {tuple(shape)}")
            state.setdefault(int(index), {})[key] = tensor
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{folder / OPTIMIZER_FILE}: optimizer state does not fit the model ({err!r})") from err
    current = optimizer.state_dict()["param_groups"]
    merged = [{**saved, **{k: now[k] for k in _DEVICE_OPTIONS if k in now}} for saved, now in zip(groups, current)]
    optimizer.load_state_dict({"state": state, "param_groups": merged})


def _read_tensors(folder: Path, name: str) -> dict[str, Tensor]:
    file = _existing(folder, name)
    try:
        return load_file(str(file))
    except SafetensorError as err:
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({err})") from err
