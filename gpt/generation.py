"""The one decoding loop, shared by every backend (PyTorch here, onnxruntime in `export`).

A backend provides `decode_step(input_ids, past, attention_mask, position_ids) -> (logits, past)`,
returning the last position's logits `[batch, vocab]` as a torch tensor and an opaque cache, plus
`max_seq_len` (and `tokenizer` for the text-level API). `GenerationMixin` then gives it
`generate`, `generate_stream`, `generate_text` and `stream_text`.

Context rule: when prompt + generated tokens would exceed `max_seq_len`, the model keeps only
the last `3/4 * max_seq_len` tokens (at least one), rebuilds its cache from them in one forward
pass (positions restart at 0) and goes on one token at a time until the window is full again.
So the model always sees between 3/4 of its context and all of it, and a long prompt is cropped
to its end the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from gpt.tokenizer import Tokenizer

StepFn = Callable[[Tensor, Any, Tensor, Tensor], tuple[Tensor, Any]]

DEFAULT_DECODE_THREADS = 1
"""CPU threads of a generation when none are given. Batch-1 decoding is a chain of small operators,
so a thread pool mostly waits, and on a busy machine far longer than one thread takes (docs/decisions.md)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How to choose each next token. Temperature 0 or `do_sample=False` means greedy.

    Sampling divides the (penalized) logits by `temperature`, then keeps the `top_k` most likely
    tokens, then the smallest set of top tokens whose probability reaches `top_p`, then the tokens
    at least `min_p` times as likely as the most likely one; None turns a filter off.
    """

    max_new_tokens: int = 100
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    seed: int | None = None
    min_p: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1
        ):
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 < self.min_p <= 1:
            raise ValueError(f"min_p must be in (0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


PRESETS: dict[str, dict[str, float | int]] = {
    "precise": dict(temperature=0.7, top_k=40, top_p=0.8),
    "creative": dict(temperature=1.2, top_k=60, top_p=0.9),
    "code": dict(temperature=0.8, top_k=50, top_p=0.85),
}
"""Sampling presets by name, with the values simple-llm's first API recommended."""


@dataclass(frozen=True)
class TokenScores:
    """What the model thought at one decoding step, for every row: log-probabilities of its own
    distribution (log-softmax of the raw logits, before the repetition penalty, temperature and
    filters) for the chosen token and for the `k` most likely ones."""

    tokens: Tensor  # [batch] the chosen tokens
    logprobs: Tensor  # [batch] their log-probabilities
    top_tokens: Tensor  # [batch, k] the most likely tokens, most likely first
    top_logprobs: Tensor  # [batch, k] theirs

    @classmethod
    def of(cls, logits: Tensor, tokens: Tensor, k: int) -> TokenScores:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        return cls(tokens, logprobs.gather(1, tokens[:, None])[:, 0], top.indices, top.values)


def generate_stream(
    step: StepFn,
    input_ids: Tensor,
    max_seq_len: int,
    config: SamplingConfig,
    attention_mask: Tensor | None = None,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    on_scores: Callable[[TokenScores], None] | None = None,
    alternatives: int = 5,
) -> Iterator[Tensor]:
    """Yield the next token of every row, `[batch]`, one step at a time, as soon as it is chosen.

    `input_ids` `[batch, seq]` may be left-padded, with `attention_mask` marking real tokens.
    A row that produced one of `config.stop_tokens` is finished: it yields `pad_token_id` from
    then on, and the loop ends when every row is finished or `max_new_tokens` is reached.
    `on_scores`, when given, sees each step's `TokenScores` (with `alternatives` top tokens) before
    its tokens are yielded.
    """
    batch, prompt_len = input_ids.shape
    if prompt_len == 0:
        raise ValueError("input_ids must hold at least one token")
    device = input_ids.device
    mask = torch.ones(batch, prompt_len + config.max_new_tokens, dtype=torch.long, device=device)  # built once
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        mask[:, :prompt_len] = attention_mask
    stop = torch.tensor(config.stop_tokens, dtype=torch.long, device=device)
    seen = None  # [batch, vocab] tokens seen so far, for the repetition penalty
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    keep = max(1, max_seq_len * 3 // 4)

    generated: list[Tensor] = []  # each step's tokens [batch]: the model is fed them, not a token buffer
    end, start, past, positions = prompt_len, 0, None, None
    for _ in range(config.max_new_tokens):
        if past is None or end - start > max_seq_len:  # (re)build the cache from the window
            start = max(0, end - keep) if end > max_seq_len else 0
            window = mask[:, start:end]
            positions = (window.cumsum(1) - 1).clamp_(min=0)
            tokens = torch.cat([input_ids, torch.stack(generated, dim=1)], dim=1) if generated else input_ids
            logits, past = step(tokens[:, start:end], None, window, positions)
            positions = positions[:, -1:]
        else:
            positions = positions + 1
            logits, past = step(generated[-1][:, None], past, mask[:, start:end], positions)
        if logits.dtype != torch.float32:  # a no-op torch call still costs ~10 us a step beside onnxruntime
            logits = logits.float()
        raw = logits
        if config.repetition_penalty != 1.0:
            if seen is None:
                seen = _seen_tokens(input_ids, mask[:, :prompt_len], logits.shape[-1])
            logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
        next_token = _choose(logits, config, generator)
        if stop.numel():  # rows finish only on a stop token
            next_token = torch.where(finished, pad_token_id, next_token)
        if on_scores is not None:
            on_scores(TokenScores.of(raw, next_token, alternatives))
        generated.append(next_token)
        end += 1
        if seen is not None:
            seen.scatter_(1, next_token[:, None], True)
        yield next_token
        if stop.numel():
            finished |= torch.isin(next_token, stop)
            if bool(finished.all()):
                return


def _seen_tokens(tokens: Tensor, mask: Tensor, vocab_size: int) -> Tensor:
    """Which tokens each row's real (unpadded) prompt holds: boolean `[batch, vocab]`."""
    index = tokens.masked_fill(mask == 0, vocab_size)  # padding lands in a spare column
    seen = torch.zeros(tokens.shape[0], vocab_size + 1, dtype=torch.bool, device=tokens.device)
    return seen.scatter_(1, index, True)[:, :vocab_size]


def _choose(logits: Tensor, config: SamplingConfig, generator: torch.Generator | None) -> Tensor:
    """Next token per row `[batch]` from (penalized) last-position logits `[batch, vocab]`."""
    if config.greedy:
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    if config.top_k is not None:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None:
        logits = top_p_filter(logits, config.top_p)
    if config.min_p is not None:
        logits = min_p_filter(logits, config.min_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL-style penalty: seen tokens' logits are divided by `penalty` (multiplied when negative)."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep exactly the `k` largest logits per row (ties broken by index), the rest -inf."""
    values, indices = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of top tokens whose probability reaches `p` (at least one)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass strictly above each token
    sorted_logits = sorted_logits.masked_fill(before >= p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(-1, order, sorted_logits)


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Keep the tokens at least `min_p` times as probable as each row's most probable one, the rest
    -inf. A probability ratio is a logit difference, so no softmax is needed: p_i / p_max =
    exp(logit_i - logit_max)."""
    threshold = logits.max(dim=-1, keepdim=True).values + math.log(min_p)
    return logits.masked_fill(logits < threshold, float("-inf"))


def stream_text(
    token_stream: Iterable[Tensor],
    tokenizer: Tokenizer,
    stop_tokens: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
) -> Iterator[str]:
    """Turn a batch-1 token stream into text pieces, each final when yielded.

    Pieces are held back while they end inside a multi-byte character or could be the start of
    a stop string; generation ends before the first stop token or stop string, neither of which
    is yielded.
    """
    stop_strings = [s for s in stop_strings if s]
    longest_stop = max((len(s) for s in stop_strings), default=0)
    generated: list[int] = []
    emitted = 0  # characters of the decoded text already yielded
    text = ""
    for step_tokens in token_stream:
        token = int(step_tokens[0])
        if token in stop_tokens:
            break
        generated.append(token)
        text = tokenizer.decode(generated)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next bytes
            continue
        cut = _find_stop(text, stop_strings, max(0, emitted - longest_stop))
        if cut is not None:
            if cut > emitted:
                yield text[emitted:cut]
            return
        safe = len(text) - _held_back(text, stop_strings)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    if len(text) > emitted:
        yield text[emitted:]


def _find_stop(text: str, stop_strings: Sequence[str], search_from: int) -> int | None:
    found = [i for i in (text.find(s, search_from) for s in stop_strings) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stop_strings:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:size]):
                best = size
                break
    return best


class GenerationMixin:
    """Generation methods for any backend with `decode_step`, `max_seq_len`, `device` and `tokenizer`."""

    max_seq_len: int
    device: torch.device
    tokenizer: Tokenizer | None
    decode_step: StepFn

    def generate_stream(
        self,
        input_ids: Tensor | Sequence[int] | Sequence[Sequence[int]],
        max_new_tokens: int = 100,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        stop_tokens: Iterable[int] | None = None,
        *,
        attention_mask: Tensor | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        pad_token_id: int | None = None,
        min_p: float | None = None,
        on_scores: Callable[[TokenScores], None] | None = None,
        alternatives: int = 5,
    ) -> Iterator[Tensor]:
        """Yield the next token of every row `[batch]` as soon as it is final (see `generate_stream`;
        `on_scores` sees each step's log-probabilities, with `alternatives` top tokens)."""
        config = SamplingConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            stop_tokens=tuple(stop_tokens or ()),
            seed=seed,
            min_p=min_p,
        )
        ids = _as_batch(input_ids, self.device)
        if attention_mask is not None:
            attention_mask = _as_batch(attention_mask, self.device)
        if generator is None and seed is not None and not config.greedy:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        if pad_token_id is None:
            pad_token_id = config.stop_tokens[0] if config.stop_tokens else 0
        yield from generate_stream(
            self.decode_step, ids, self.max_seq_len, config, attention_mask, pad_token_id, generator, on_scores,
            alternatives,
        )  # fmt: skip

    def generate(
        self,
        input_ids: Tensor | Sequence[int] | Sequence[Sequence[int]],
        max_new_tokens: int = 100,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        """Prompt + new tokens `[batch, seq]`; rows that stopped early are padded (see `generate_stream`)."""
        ids = _as_batch(input_ids, self.device)
        new = list(self.generate_stream(ids, max_new_tokens, *args, **kwargs))
        return torch.cat([ids, torch.stack(new, dim=1)], dim=1) if new else ids

    def stream_text(
        self,
        prompt: str,
        max_new_tokens: int = 100,
        *,
        stop_strings: Sequence[str] = (),
        stop_tokens: Iterable[int] | None = None,
        tokenizer: Tokenizer | None = None,
        on_token: Callable[[Tensor], None] | None = None,
        **sampling: Any,
    ) -> Iterator[str]:
        """Stream the continuation of `prompt` as text pieces; ends at end-of-text or a stop string.

        `on_token` sees every generated step `[1]` as it is chosen (e.g. to count tokens/s).
        """
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("this model has no tokenizer: pass tokenizer=... or load a checkpoint that has one")
        stops = tuple(stop_tokens) if stop_tokens is not None else (tokenizer.eos_token_id,)
        ids = tokenizer.encode(prompt) or [tokenizer.eos_token_id]  # an empty prompt starts a new document
        tokens = self.generate_stream(ids, max_new_tokens, stop_tokens=stops, **sampling)
        if on_token is not None:
            tokens = _observed(tokens, on_token)
        yield from stream_text(tokens, tokenizer, stops, stop_strings)

    def generate_text(self, prompt: str, max_new_tokens: int = 100, **kwargs: Any) -> str:
        """The continuation of `prompt` as one string (see `stream_text`)."""
        return "".join(self.stream_text(prompt, max_new_tokens, **kwargs))


def _observed(tokens: Iterator[Tensor], observer: Callable[[Tensor], None]) -> Iterator[Tensor]:
    for token in tokens:
        observer(token)
        yield token


def _as_batch(values: Tensor | Sequence[int] | Sequence[Sequence[int]], device: torch.device) -> Tensor:
    ids = torch.as_tensor(values, dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(ids.shape)}")
    return ids
