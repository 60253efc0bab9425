"""The Hugging Face files of a model folder, so that transformers (and the runtimes that read its
configs: optimum, transformers.js, onnxruntime-genai) load our checkpoints and exports unchanged.

- `config.json` is one file for both readers: simple-llm's own fields (`GPTConfig`) and, for a
  GPT-2-shaped model, the `GPT2Config` fields (`model_type: "gpt2"`, `n_embd`, `n_head`, ...).
  transformers keeps our fields as extra attributes (also when it saves the config again);
  `read_config_values` takes ours back.
- `generation_config.json`: the end-of-text id, for `generate` (no `max_length`: transformers would
  warn on every `generate(max_new_tokens=...)` that both are set).
- `tokenizer_config.json` and `special_tokens_map.json` beside `tokenizer.json`: `AutoTokenizer`
  reads the byte-level BPE as GPT-2's tokenizer and gives our ids.

GPT-2-shaped means: biases in every layer, and attention as wide as the residual stream
(`num_heads * head_size == emb_size`); our weight names and `[in, out]` block matrices are
GPT-2's already, an untied head is GPT-2's `lm_head.weight`, and every activation has a transformers name.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gpt.config import GPTConfig
from gpt.files import atomic_write
from gpt.tokenizer import EOS_TOKEN, Tokenizer

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"

GPT2_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu2": "relu2"}
"""Our activation -> transformers' name of the same function (`gelu_new` is GPT-2's tanh GELU)."""
_SHAPE_KEYS = {"vocab_size": "vocab_size", "n_positions": "max_seq_len", "n_embd": "emb_size",
               "n_head": "num_heads", "n_layer": "num_layers"}  # fmt: skip
_OWN_FIELDS = tuple(field.name for field in dataclasses.fields(GPTConfig))


def gpt2_incompatibility(config: GPTConfig) -> str | None:
    """Why `GPT2LMHeadModel` cannot hold a model of `config`, or None when it can."""
    reasons = []
    if not config.bias:
        reasons.append("bias=False (GPT-2 has biases in every layer)")
    if config.qk_norm:
        reasons.append("qk_norm=True (GPT-2 has no query/key normalisation)")
    if config.logit_softcap is not None:
        reasons.append(f"logit_softcap={config.logit_softcap} (GPT-2 has no logit soft-capping)")
    if config.rotary:
        reasons.append("rotary=True (GPT-2 learns a table of positions)")
    if config.attn_size != config.emb_size:
        reasons.append(
            f"num_heads * head_size = {config.num_heads} * {config.head_size} = {config.attn_size} "
            f"differs from emb_size = {config.emb_size}"
        )
    return "; ".join(reasons) or None


def gpt2_config(config: GPTConfig, eos_token_id: int | None) -> dict[str, Any]:
    """The `GPT2Config` fields describing a model of `config` (which must be GPT-2-shaped)."""
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len,
        "n_ctx": config.max_seq_len,
        "n_embd": config.emb_size,
        "n_head": config.num_heads,
        "n_layer": config.num_layers,
        "n_inner": config.mlp_ratio * config.emb_size,
        "activation_function": GPT2_ACTIVATIONS[config.activation],
        "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
        "scale_attn_weights": True,
        "use_cache": True,
        "bos_token_id": eos_token_id,  # GPT-2 convention: one end-of-text token for everything
        "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    }


def config_values(config: GPTConfig, tokenizer: Tokenizer | None) -> dict[str, Any]:
    """What `config.json` holds: the GPT-2 fields (when GPT-2-shaped), then our own."""
    own = config.to_dict()
    if gpt2_incompatibility(config):
        return own
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    return {**gpt2_config(config, eos), **own}


def read_config_values(values: dict[str, Any]) -> dict[str, Any]:
    """`GPTConfig` fields from the values of a `config.json`: ours, of a file with or without the
    GPT-2 fields (which must agree with ours). Raises ValueError."""
    if not isinstance(values, dict):
        raise ValueError(f"expected a JSON object, got {type(values).__name__}")
    if "model_type" not in values:
        return values  # our own format, before the GPT-2 fields; GPTConfig checks every key
    if values["model_type"] != "gpt2":
        raise ValueError(f"model_type {values['model_type']!r} is not a GPT-2 config")
    if not any(name in values for name in _OWN_FIELDS if name != "vocab_size"):
        raise ValueError("a transformers GPT-2 config without simple-llm's fields: not saved by simple-llm")
    own = {name: values[name] for name in _OWN_FIELDS if name in values}
    for key, name in _SHAPE_KEYS.items():
        if key in values and name in own and values[key] != own[name]:
            raise ValueError(f"{key} = {values[key]!r} disagrees with {name} = {own[name]!r} in the same file")
    return own


def generation_config(config: GPTConfig, tokenizer: Tokenizer | None) -> dict[str, Any]:
    """`generation_config.json`: stop at end-of-text. No `max_length`: with it, transformers warns
    "Both `max_new_tokens` and `max_length`" on every `generate(max_new_tokens=...)`."""
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    return {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}


def tokenizer_config(config: GPTConfig) -> dict[str, Any]:
    """`tokenizer_config.json`: read `tokenizer.json` as GPT-2's byte-level BPE, adding no tokens."""
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": config.max_seq_len,
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }


def special_tokens_map() -> dict[str, str]:
    return {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}


def write_configs(folder: Path, config: GPTConfig, tokenizer: Tokenizer | None) -> None:
    """Write `generation_config.json`, the tokenizer's configs (with a tokenizer) and, last,
    `config.json` into `folder` (`tokenizer.json` itself is the tokenizer's to write)."""
    _write_json(folder / GENERATION_CONFIG_FILE, generation_config(config, tokenizer))
    if tokenizer is not None:
        _write_json(folder / TOKENIZER_CONFIG_FILE, tokenizer_config(config))
        _write_json(folder / SPECIAL_TOKENS_FILE, special_tokens_map())
    _write_json(folder / CONFIG_FILE, config_values(config, tokenizer))


def _write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
