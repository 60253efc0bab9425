"""How well a model predicts a text: tokens, mean loss per token, perplexity, nats and bits per byte.

One scoring loop for every backend: it needs `max_seq_len`, `tokenizer` and `window_logits(ids)`
(every position's logits of full, unpadded rows: `GPT` and `export.OnnxGPT` both have it).

The text is scored as one document: an end-of-text token, then its tokens, cut into windows of
`max_seq_len` predictions. Every token of the text is predicted exactly once, from the tokens
before it in its window (the context restarts at each window, as in training). Per byte divides
the summed loss by the text's UTF-8 bytes, so models with different tokenizers compare.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from gpt.config import GPTConfig
from gpt.data import check_vocabulary
from gpt.tokenizer import Tokenizer

DEFAULT_EVAL_BATCH = 8


class Scorable(Protocol):
    config: GPTConfig
    max_seq_len: int
    tokenizer: Tokenizer | None

    def window_logits(self, input_ids: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class TextScore:
    """The summed loss of a text's tokens and its size; the figures derive from them."""

    tokens: int
    bytes: int
    total_nats: float

    @classmethod
    def of(cls, text: str, losses: Tensor) -> TextScore:
        """The score of `text` from its tokens' losses (`token_losses`)."""
        return cls(tokens=len(losses), bytes=len(text.encode("utf-8")), total_nats=losses.double().sum().item())

    @property
    def loss(self) -> float:
        """Mean cross-entropy per token, in nats."""
        return self.total_nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def nats_per_byte(self) -> float:
        return self.total_nats / self.bytes

    @property
    def bits_per_byte(self) -> float:
        return self.nats_per_byte / math.log(2)

    def to_dict(self) -> dict[str, float | int]:
        names = ("tokens", "bytes", "total_nats", "loss", "perplexity", "nats_per_byte", "bits_per_byte")
        return {name: getattr(self, name) for name in names}

    def format(self) -> str:
        return (
            f"{self.tokens:,} tokens, {self.bytes:,} bytes: loss {self.loss:.4f} nats/token, "
            f"perplexity {self.perplexity:.2f}, {self.nats_per_byte:.4f} nats/byte ({self.bits_per_byte:.4f} bits/byte)"
        )


def evaluate_text(
    model: Scorable, text: str, batch_size: int = DEFAULT_EVAL_BATCH, progress: bool = False
) -> TextScore:
    """Score `text` under `model` (see the module docstring); `progress` shows a bar over the
    batches of windows. Raises ValueError for an empty text, a model without a tokenizer or a
    tokenizer that does not fit the model."""
    return TextScore.of(text, token_losses(model, text, batch_size, progress)[1])


def token_losses(
    model: Scorable, text: str, batch_size: int = DEFAULT_EVAL_BATCH, progress: bool = False
) -> tuple[list[int], Tensor]:
    """Every token of `text` and its loss in nats, `-log p(token | the tokens before it)`: how
    much it surprised the model. The figures of `evaluate_text` are their sum and mean."""
    if model.tokenizer is None:
        raise ValueError("this model has no tokenizer: evaluating a text needs one")
    if not text:
        raise ValueError("the text is empty: nothing to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = torch.tensor([model.tokenizer.eos_token_id, *model.tokenizer.encode(text)])
    check_vocabulary(ids, model.config.vocab_size)
    windows = list(_windows(len(ids) - 1, model.max_seq_len))
    batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    losses: list[Tensor] = []
    with torch.inference_mode():  # no autograd graph: each batch's activations are freed at once
        for batch in tqdm(batches, desc="evaluating", unit="batch", disable=not progress or len(batches) < 2):
            losses += _window_losses(model, ids, batch)
    return ids[1:].tolist(), torch.cat(losses)


def _windows(predictions: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, length) of each window: `length` inputs from `start` predict the next `length` tokens."""
    for start in range(0, predictions, size):
        yield start, min(size, predictions - start)


def _window_losses(model: Scorable, ids: Tensor, windows: list[tuple[int, int]]) -> list[Tensor]:
    """Each window's per-token losses, in window order; same-length windows run as one batch
    (only the text's last window is shorter)."""
    found: dict[int, Tensor] = {}
    for length in {length for _, length in windows}:
        starts = [start for start, n in windows if n == length]
        inputs = torch.stack([ids[s : s + length] for s in starts])
        targets = torch.stack([ids[s + 1 : s + length + 1] for s in starts])
        logits = model.window_logits(inputs).float()
        nats = F.cross_entropy(logits.transpose(1, 2), targets.to(logits.device), reduction="none").cpu()
        found.update(zip(starts, nats))
    return [found[start] for start, _ in windows]
