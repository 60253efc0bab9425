"""Generation for the app: validated options, a streamed continuation with its throughput, and the
torch-versus-onnxruntime comparison. Sampling itself is `gpt`'s one decoding loop, on either backend."""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from gpt import PRESETS, PROMPT_CHARS, SamplingConfig, TokenScores, text_start
from webapp import corpus, insight, validation
from webapp.i18n import UserError, t

MODES = ("greedy", "sampling")
# Server-side bounds of the generation settings (the widgets show narrower ranges).
MAX_TEMPERATURE = 10.0
MAX_TOP_K = 2**20  # gpt.GPTConfig's largest vocabulary
MAX_REPETITION_PENALTY = 10.0
MAX_SEED = 2**63 - 1
MAX_PROMPT_CHARS = 100_000  # tokenized whole before cropping to the context
MAX_STOP_CHARS = 10_000
MAX_STOP_STRINGS = 64
CUSTOM = "custom"
_ESCAPES = {"\\n": "\n", "\\t": "\t"}
DEFAULT_PRESET = "precise"
DEFAULTS: dict[str, Any] = {
    "mode": "sampling",
    **PRESETS[DEFAULT_PRESET],
    "min_p": 0.0,
    "repetition_penalty": 1.1,
}
"""The Generate tab's first settings. Greedy decoding of a freshly trained small model soon repeats
one token for ever; sampling from the likelier tokens, with a mild repetition penalty, reads well."""


@dataclass(frozen=True)
class GenerationOptions:
    """What the Generate tab asks for: the library's own `gpt.SamplingConfig`, plus stop strings."""

    sampling: SamplingConfig
    stop_strings: tuple[str, ...]

    def sampling_kwargs(self) -> dict[str, Any]:
        """`GenerationMixin.stream_text`'s sampling keywords (its stop tokens stay end-of-text)."""
        values = dataclasses.asdict(self.sampling)
        del values["max_new_tokens"], values["stop_tokens"]
        return values


def make_options(
    max_new_tokens: Any,
    mode: str,
    temperature: Any,
    top_k: Any,
    top_p: Any,
    min_p: Any,
    repetition_penalty: Any,
    stop_strings: Any,
    seed: Any,
    max_allowed: int,
) -> GenerationOptions:
    """Options from UI values, each checked on the server (`webapp.validation`).

    top-k 0, top-p 1 and min-p 0 mean "off"; an empty top-k / top-p / min-p is off too; an empty seed draws one
    (shown to the user).
    """
    if mode not in MODES:
        raise UserError("error.bad_value", name="mode", value=mode, rule=" / ".join(MODES))
    new_tokens = validation.integer("max_new_tokens", max_new_tokens, 1, max_allowed)
    k = 0 if validation.optional(top_k) else validation.integer("top_k", top_k, 0, MAX_TOP_K)
    p = 1.0 if validation.optional(top_p) else validation.real("top_p", top_p, 0.0, 1.0, open_low=True)
    relative = 0.0 if validation.optional(min_p) else validation.real("min_p", min_p, 0.0, 1.0)
    temp = validation.real("temperature", temperature, 0.0, MAX_TEMPERATURE)
    penalty = validation.real("repetition_penalty", repetition_penalty, 0.0, MAX_REPETITION_PENALTY, open_low=True)
    stops = parse_stop_strings(validation.text("stop_strings", stop_strings, MAX_STOP_CHARS))
    drawn = None if validation.optional(seed) else validation.integer("seed", seed, 0, MAX_SEED)
    if len(stops) > MAX_STOP_STRINGS:
        raise UserError(
            "error.bad_value", name="stop_strings", value=len(stops), rule=f"at most {MAX_STOP_STRINGS} lines"
        )
    if mode == "sampling" and drawn is None:
        drawn = random.randrange(2**31)
    try:  # gpt's own validation: the same rules as the library and the CLI
        sampling = SamplingConfig(
            max_new_tokens=new_tokens,
            do_sample=mode == "sampling",
            temperature=temp,
            top_k=k if k > 0 else None,
            top_p=p if p < 1.0 else None,
            min_p=relative if relative > 0.0 else None,
            repetition_penalty=penalty,
            seed=drawn,
        )
    except ValueError as err:
        raise UserError("error.bad_sampling", detail=str(err)) from None
    return GenerationOptions(sampling, stops)


def prompt_text(prompt: Any) -> str:
    """The prompt, checked: text of at most `MAX_PROMPT_CHARS` characters."""
    return validation.text("prompt", prompt, MAX_PROMPT_CHARS)


def parse_stop_strings(text: str) -> tuple[str, ...]:
    r"""One stop string per line; `\n` and `\t` stand for a newline and a tab."""
    found = []
    for line in text.splitlines():
        for escape, char in _ESCAPES.items():
            line = line.replace(escape, char)
        if line:
            found.append(line)
    return tuple(dict.fromkeys(found))


def suggested_prompt(value: Any) -> str | None:
    """The prompt a model's training record suggests (`text_start` of its text), or None."""
    if isinstance(value, str) and value.strip() and len(value) <= 4 * PROMPT_CHARS:
        return value
    return None


@functools.cache
def default_prompt() -> str:
    """The Generate tab's prompt before any model: the start of the built-in sample the Train tab
    starts with (a model's own training text replaces it: `GenerateHandlers.suggested_prompt`)."""
    try:
        return text_start(corpus.stdlib_texts(limit=1))
    except UserError:
        return ""


def preset_values(name: str) -> dict[str, float | int] | None:
    """Sampling values of a preset from the original design (`gpt.PRESETS`); None for "custom"."""
    return None if name == CUSTOM else dict(PRESETS[name])


@dataclass
class Stats:
    tokens: int = 0
    seconds: float = 0.0
    first_token_s: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def stream(
    model: Any, prompt: str, options: GenerationOptions, scores: list[TokenScores] | None = None
) -> Iterator[tuple[str, Stats]]:
    """Yield (continuation so far, stats) as text arrives; `model` is a `GPT` or an `OnnxGPT`.

    Generation ends at end-of-text or a stop string (`GenerationMixin.stream_text`); the generated
    tokens are counted on the way for tokens/s, and each step's `TokenScores` is added to `scores`.
    """
    if model.tokenizer is None:
        raise UserError("error.no_tokenizer")
    stats = Stats()
    started = time.perf_counter()

    def count(_token: torch.Tensor) -> None:
        stats.tokens += 1
        if stats.first_token_s is None:
            stats.first_token_s = time.perf_counter() - started

    text = ""
    pieces = model.stream_text(
        prompt,
        options.sampling.max_new_tokens,
        stop_strings=options.stop_strings,
        on_token=count,
        on_scores=None if scores is None else scores.append,
        alternatives=insight.ALTERNATIVES,
        **options.sampling_kwargs(),
    )
    for piece in pieces:
        text += piece
        stats.seconds = time.perf_counter() - started
        yield text, stats
    stats.seconds = time.perf_counter() - started
    yield text, stats


def stats_text(stats: Stats, backend: str, provider: str, options: GenerationOptions, lang: str) -> str:
    parts = [
        t(lang, "gen.tokens", tokens=stats.tokens),
        t(lang, "gen.rate", rate=f"{stats.tokens_per_second:.1f}"),
    ]
    if stats.first_token_s is not None:
        parts.append(t(lang, "gen.first_token", ms=f"{stats.first_token_s * 1000:.0f}"))
    parts.append(t(lang, "gen.backend_used", backend=backend, provider=provider))
    if options.sampling.do_sample:
        parts.append(t(lang, "gen.seed_used", seed=options.sampling.seed))
    return " · ".join(parts)


def compare_prompt_ids(model: Any, prompt: str, max_new_tokens: int) -> tuple[list[int], int]:
    """Prompt ids cropped to half the context, and how many decode steps fit after them."""
    tokenizer = model.tokenizer
    ids = tokenizer.encode(prompt) or [tokenizer.eos_token_id]
    ids = ids[-max(1, model.max_seq_len // 2) :]
    steps = max(1, min(max_new_tokens, model.max_seq_len - len(ids), 64))
    return ids, steps


def compare_text(report: Any, precision: str, torch_text: str, onnx_text: str, lang: str) -> str:
    """Markdown: the headline numbers, both greedy continuations, and the full parity table."""
    worst = max(report.prefill_max_abs, report.decode_max_abs)
    if report.greedy_identical:
        agree = t(lang, "cmp.agree", steps=report.decode_steps)
    else:
        agree = t(lang, "cmp.differ", position=report.greedy_first_difference)
    verdict = t(lang, "cmp.pass") if report.passed else t(lang, "cmp.fail")
    return "\n\n".join(
        [
            t(lang, "cmp.headline", diff=f"{worst:.3g}", agree=agree, provider=report.provider, precision=precision),
            verdict,
            f"**PyTorch:** `{_inline(torch_text)}`",
            f"**onnxruntime:** `{_inline(onnx_text)}`",
            "```text\n" + report.format() + "\n```",
        ]
    )


def _inline(text: str) -> str:
    return text.replace("`", "'").replace("\n", "⏎")
