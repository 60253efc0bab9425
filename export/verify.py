"""Parity between a torch `GPT` and its onnxruntime export: logits, caches and greedy tokens.

`compare` runs both models on the same prompt (a full prefill from an empty cache), then feeds
both the torch model's greedy token for a number of cached decode steps (teacher forcing, so one
early difference cannot snowball), and finally lets each generate greedily on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from export.runtime import OnnxGPT, PastValue, to_numpy
from gpt.config import GPTConfig
from gpt.model import GPT, KVCache
from gpt.modes import evaluating


@dataclass(frozen=True)
class Tolerance:
    """Logits must satisfy `|onnx - torch| <= atol + rtol * |torch|`; at least `min_top1` of the
    decode steps must pick the same top-1 token."""

    atol: float
    rtol: float
    min_top1: float


TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_top1=1.0),  # measured differences: docs/export.md
    "fp16": Tolerance(atol=5e-2, rtol=2e-2, min_top1=0.95),  # seen on the CPU provider: <= 4e-3
    "int8": Tolerance(atol=0.5, rtol=0.1, min_top1=0.95),  # seen: <= 0.08 (0.075 on a random 92 M model)
}
"""Per precision, against the fp32 torch model; "seen" is the max abs logit difference measured on
tiny random and trained models. fp32 must agree to float rounding; fp16 and int8 change the
arithmetic, so their logits get looser bounds and near-ties may flip (hence `min_top1` below 1)."""


@dataclass
class _Diff:
    """Running worst differences between ONNX and torch arrays under one tolerance."""

    tolerance: Tolerance
    max_abs: float = 0.0
    max_rel: float = 0.0  # max |difference| relative to the largest |torch value| of its array
    within: bool = True

    def update(self, onnx_value: np.ndarray, torch_value: np.ndarray) -> None:
        reference = torch_value.astype(np.float32)
        diff = np.abs(onnx_value.astype(np.float32) - reference)
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.max_rel = max(
            self.max_rel, float(diff.max(initial=0.0)) / max(float(np.abs(reference).max(initial=0.0)), 1e-12)
        )
        self.within &= bool(np.all(diff <= self.tolerance.atol + self.tolerance.rtol * np.abs(reference)))


@dataclass
class ParityReport:
    """What `compare` measured; `passed` applies the tolerance of the export's precision."""

    provider: str
    batch: int
    prompt_len: int
    decode_steps: int
    tolerance: Tolerance
    prefill_max_abs: float
    prefill_max_rel: float
    decode_max_abs: float
    decode_max_rel: float
    present_max_abs: float
    top1_agreement: float  # fraction of decode steps (all rows) whose argmax agrees
    greedy_identical: bool  # OnnxGPT.generate == GPT.generate, token for token
    greedy_first_difference: int | None  # first generated position where they differ
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, values: dict) -> ParityReport:
        """Inverse of `to_dict` (`passed` is derived from `failures`, so it is not read back)."""
        fields = {k: v for k, v in values.items() if k != "passed"}
        return cls(**{**fields, "tolerance": Tolerance(**fields["tolerance"])})

    def format(self) -> str:
        """A short human-readable table."""
        greedy = "identical" if self.greedy_identical else f"first differs at new token {self.greedy_first_difference}"
        lines = [
            f"provider         {self.provider}",
            f"inputs           batch {self.batch}, prompt {self.prompt_len} tokens, {self.decode_steps} cached decode steps",
            f"prefill logits   max abs {self.prefill_max_abs:.3g}, max rel {self.prefill_max_rel:.3g}",
            f"decode logits    max abs {self.decode_max_abs:.3g}, max rel {self.decode_max_rel:.3g}",
            f"key/value cache  max abs {self.present_max_abs:.3g}",
            f"top-1 agreement  {self.top1_agreement:.1%} of decode steps",
            f"greedy tokens    {greedy}",
            f"tolerance        atol {self.tolerance.atol:g}, rtol {self.tolerance.rtol:g}, top-1 >= {self.tolerance.min_top1:.0%}",
            "result           " + ("PASS" if self.passed else "FAIL: " + "; ".join(self.failures)),
        ]
        return "\n".join(lines)


def probe_inputs(config: GPTConfig, seed: int = 0) -> tuple[Tensor, Tensor, int]:
    """Default parity inputs: 2 random prompts, the second left-padded, and a decode step count
    that fits the context: `(input_ids, attention_mask, decode_steps)`."""
    prompt_len = max(1, min(16, config.max_seq_len // 2))
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (2, prompt_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, : prompt_len // 2] = 0
    return input_ids, attention_mask, min(32, config.max_seq_len - prompt_len)


@torch.inference_mode()
def compare(
    model: GPT,
    onnx_model: OnnxGPT,
    input_ids: Tensor | Sequence[Sequence[int]],
    attention_mask: Tensor | None = None,
    decode_steps: int = 16,
    tolerance: Tolerance = TOLERANCES["fp32"],
) -> ParityReport:
    """Measure how far `onnx_model` is from `model` on `input_ids` `[batch, seq]` (left padding
    marked by `attention_mask`) plus `decode_steps` cached steps; see the module docstring."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).cpu()
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long).cpu()
    batch, prompt_len = ids.shape
    if decode_steps < 0:
        raise ValueError(f"decode_steps must be >= 0, got {decode_steps}")
    if prompt_len + decode_steps > model.config.max_seq_len:
        raise ValueError(
            f"prompt {prompt_len} + {decode_steps} decode steps exceeds max_seq_len {model.config.max_seq_len}"
        )
    with evaluating(model):
        prefill, decode, presents = _Diff(tolerance), _Diff(tolerance), _Diff(tolerance)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        torch_logits, torch_past, onnx_logits, onnx_past = _step(model, onnx_model, ids, mask, positions, None, None)
        prefill.update(onnx_logits, torch_logits)
        _update_cache(presents, onnx_past, torch_past)
        agree = 0
        for _ in range(decode_steps):
            token = torch.from_numpy(torch_logits[:, -1]).argmax(-1, keepdim=True)  # teacher forcing: torch's choice
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            positions = positions[:, -1:] + 1
            torch_logits, torch_past, onnx_logits, onnx_past = _step(
                model, onnx_model, token, mask, positions, torch_past, onnx_past
            )
            decode.update(onnx_logits, torch_logits)
            agree += int((onnx_logits[:, -1].argmax(-1) == torch_logits[:, -1].argmax(-1)).sum())
        _update_cache(presents, onnx_past, torch_past)
        first_difference = _greedy_first_difference(model, onnx_model, ids, mask[:, :prompt_len], decode_steps)
    top1 = agree / (batch * decode_steps) if decode_steps else 1.0
    failures = [
        f"{name} outside atol {tolerance.atol:g}, rtol {tolerance.rtol:g} (max abs {diff.max_abs:.3g})"
        for name, diff in (("prefill logits", prefill), ("decode logits", decode), ("key/value cache", presents))
        if not diff.within
    ]
    if top1 < tolerance.min_top1:
        failures.append(f"top-1 agreement {top1:.1%} < {tolerance.min_top1:.0%}")
    return ParityReport(
        provider=onnx_model.provider,
        batch=batch,
        prompt_len=prompt_len,
        decode_steps=decode_steps,
        tolerance=tolerance,
        prefill_max_abs=prefill.max_abs,
        prefill_max_rel=prefill.max_rel,
        decode_max_abs=decode.max_abs,
        decode_max_rel=decode.max_rel,
        present_max_abs=presents.max_abs,
        top1_agreement=top1,
        greedy_identical=first_difference is None,
        greedy_first_difference=first_difference,
        failures=failures,
    )


def _step(
    model: GPT,
    onnx_model: OnnxGPT,
    ids: Tensor,
    mask: Tensor,
    positions: Tensor,
    torch_past: KVCache | None,
    onnx_past: list[PastValue] | None,
) -> tuple[np.ndarray, KVCache, np.ndarray, list[PastValue]]:
    """Run both models on the same inputs: (torch logits, torch cache, onnx logits, onnx cache)."""
    device = model.device
    logits, torch_past = model(ids.to(device), torch_past, mask.to(device), positions.to(device), use_cache=True)
    onnx_logits, onnx_past = onnx_model.run(ids.numpy(), mask.numpy(), positions.numpy(), onnx_past)
    return logits.float().cpu().numpy(), torch_past, onnx_logits, onnx_past


def _update_cache(diff: _Diff, onnx_past: list[PastValue], torch_past: KVCache) -> None:
    flat = [tensor for pair in torch_past for tensor in pair]
    for onnx_value, torch_value in zip(onnx_past, flat):
        diff.update(to_numpy(onnx_value), torch_value.float().cpu().numpy())


def _greedy_first_difference(model: GPT, onnx_model: OnnxGPT, ids: Tensor, mask: Tensor, steps: int) -> int | None:
    """Index of the first new token where greedy generation differs (any row), or None."""
    expected = model.generate(ids.to(model.device), steps, attention_mask=mask.to(model.device)).cpu()
    actual = onnx_model.generate(ids, steps, attention_mask=mask)
    differs = (expected != actual)[:, ids.shape[1] :].any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else None
