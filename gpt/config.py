"""`GPTConfig`: the typed, validated description of a model, saved as JSON in every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LIMITS = {
    "vocab_size": 2**20,
    "max_seq_len": 2**17,
    "emb_size": 2**16,
    "num_heads": 1024,
    "head_size": 4096,
    "num_layers": 1024,
    "mlp_ratio": 64,
}
"""Largest value of each integer field. Generous (GPT-3 175B fits: vocab 50257, emb 12288, 96
layers), but finite: a config.json from anyone cannot ask for a model of any size."""

ACTIVATIONS = ("gelu_tanh", "gelu", "relu2")
"""MLP activations. "gelu_tanh" is GPT-2's tanh approximation ("gelu_new"), the default, which
GPT-2 weights need; "gelu" is the exact (erf) GELU, as nanoGPT. Both reach the same loss. On a
CPU torch trains faster with the exact one but routes it through oneDNN, whose fixed cost per call
slows batch-1 decoding, so tanh stays the default (figures in docs/decisions.md). "relu2" is
ReLU squared (modded-nanogpt's; transformers' GPT-2 calls it "relu2" too)."""


@dataclass
class GPTConfig:
    """Shape of a GPT. The first seven fields keep the names of simple-llm's first API (`GPT(vocab_size=...)`).

    `head_size` defaults to `emb_size // num_heads`; `num_heads * head_size` is the attention
    width and may differ from `emb_size` (the attention output projection maps it back).
    """

    vocab_size: int  # tokens in the vocabulary
    max_seq_len: int  # longest sequence the model sees, past included
    emb_size: int = 128  # width of the residual stream
    num_heads: int = 4  # attention heads per layer
    head_size: int | None = None  # width of one head; None -> emb_size // num_heads
    num_layers: int = 4  # transformer blocks
    dropout: float = 0.1  # dropout on embeddings, attention and residual branches
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2
    tie_embeddings: bool = True  # the LM head shares the token embedding matrix
    mlp_ratio: int = 4  # hidden width of the MLP is mlp_ratio * emb_size
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_tanh"  # MLP activation, one of ACTIVATIONS
    zero_init_proj: bool = False  # start the residual output projections (c_proj) at zero, not small noise
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (not GPT-2: transformers cannot load it)
    logit_softcap: float | None = None  # logits -> cap * tanh(logits / cap) (not GPT-2 either); None: off
    rotary: bool = False  # rotary positions on queries and keys, no position table (not GPT-2 either)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "emb_size", "num_heads", "num_layers", "mlp_ratio"):
            _check_bounded_int(name, getattr(self, name))
        if self.head_size is None:
            if self.emb_size % self.num_heads:
                raise ValueError(
                    f"emb_size ({self.emb_size}) must be divisible by num_heads ({self.num_heads}), "
                    "or give head_size explicitly"
                )
            self.head_size = self.emb_size // self.num_heads
        _check_bounded_int("head_size", self.head_size)
        _check_number("dropout", self.dropout, "[0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        _check_number("layer_norm_eps", self.layer_norm_eps, "(0, 1)")
        if not 0.0 < self.layer_norm_eps < 1.0:
            raise ValueError(f"layer_norm_eps must be in (0, 1), got {self.layer_norm_eps}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.logit_softcap is not None:
            _check_number("logit_softcap", self.logit_softcap, "(0, 1000]")
            if not 0 < self.logit_softcap <= 1000:
                raise ValueError(f"logit_softcap must be in (0, 1000] or None, got {self.logit_softcap}")
        for name in ("bias", "tie_embeddings", "zero_init_proj", "qk_norm", "rotary"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.rotary and self.head_size % 2:
            raise ValueError(
                f"rotary positions rotate pairs of a head's values: head_size must be even, got {self.head_size}"
            )

    @property
    def attn_size(self) -> int:
        """Width of the attention (all heads together)."""
        return self.num_heads * self.head_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {', '.join(unknown)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> GPTConfig:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> GPTConfig:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def count_parameters(config: GPTConfig) -> int:
    """Distinct trainable parameters of `GPT(config)` (a tied head counts once), by arithmetic.

    Equal to `GPT.from_config(config).num_parameters()`, without building anything: a caller can
    size a model described by any config before deciding to build it.
    """
    E, A, H, V = config.emb_size, config.attn_size, config.mlp_ratio * config.emb_size, config.vocab_size
    bias = int(config.bias)
    norm = E + E * bias  # a LayerNorm: weight, and bias when `bias`
    attention = (E * 3 * A + 3 * A * bias) + (A * E + E * bias)  # fused QKV, output projection
    mlp = (E * H + H * bias) + (H * E + E * bias)  # c_fc, c_proj
    block = 2 * norm + attention + mlp
    embeddings = V * E + (0 if config.rotary else config.max_seq_len * E)  # rotary: no position table
    head = 0 if config.tie_embeddings else V * E  # untied LM head, no bias
    return embeddings + config.num_layers * block + norm + head


def block_matrix_parameters(config: GPTConfig) -> int:
    """Parameters of the weight matrices inside the transformer blocks (what Muon trains)."""
    E, A, H = config.emb_size, config.attn_size, config.mlp_ratio * config.emb_size
    return config.num_layers * (E * 3 * A + A * E + 2 * E * H)


def _check_bounded_int(name: str, value: Any) -> None:
    largest = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
        raise ValueError(f"{name} must be an integer in 1..{largest}, got {value!r}")


def _check_number(name: str, value: Any, interval: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
