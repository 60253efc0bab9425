"""Mixed precision of training and evaluation: when bf16 autocast pays, and the autocast context.

The weights always stay fp32; "bf16" runs the forward pass under `torch.autocast`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from gpt.model import GPT

PRECISIONS = ("auto", "fp32", "bf16")
"""`precision` of `fit` and `evaluate`: "auto" is bf16 where it pays (`bf16_pays`), else fp32."""

CPU_BF16_MIN_EMB = 256
"""Smallest width at which "auto" picks bf16 on a CPU with native bf16: narrower models ran no faster
in bf16 autocast than in fp32, wider ones clearly faster, at the same quality (docs/decisions.md)."""


def bf16_pays(model: GPT, device: torch.device) -> bool:
    """Whether `precision="auto"` trains `model` on `device` with bf16 autocast.

    On CUDA: when the GPU supports bf16. On a CPU: when it multiplies bf16 natively (AVX512-BF16 or
    AMX) and the model is at least `CPU_BF16_MIN_EMB` wide; below that, casts cost more than the
    faster matmuls save.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    native = [
        getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    return any(native) and model.config.emb_size >= CPU_BF16_MIN_EMB


def use_bf16(precision: str, device: torch.device, model: GPT) -> bool:
    """Whether `precision` (one of `PRECISIONS`) means bf16 autocast for `model` on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return bf16_pays(model, device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{device} does not support bf16; use precision='fp32'")
    return precision == "bf16"


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """bf16 autocast on `device` when `bf16`, else a context that changes nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
