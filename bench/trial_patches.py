"""Architecture changes measured in `bench/ablate.py` before any is built into `gpt/`.

Each patch rewrites a freshly built `GPT` in place for training and validation only (whole windows,
no key/value cache: `fit` and `evaluate`); a model so patched cannot decode, save or export. The
ones that pay become `GPTConfig` options with export support; the others stay measurements.

- "rmsnorm": every LayerNorm becomes an RMSNorm (a learned scale, no mean, no bias).
- "rotary": rotary position embeddings on each head's queries and keys (base 10,000, over the
  whole head), instead of the learned position table (zeroed and frozen). It paid, and is now
  `GPTConfig(rotary=True)` (the same rotation; without the table, the initial weights' random draws
  differ); the patch stays so that its logged runs can be repeated.
- "value embeddings": each block adds a token embedding table of its own (vocab x attention width,
  std 0.02) to its attention values, as modded-nanogpt does; AdamW trains the tables.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt import GPT


def rmsnorm(model: GPT) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, nn.RMSNorm(child.normalized_shape, eps=child.eps))


def rotary(model: GPT) -> None:
    size = model.config.head_size
    inverse = 1.0 / 10000 ** (torch.arange(0, size, 2, dtype=torch.float32) / size)
    angles = torch.outer(torch.arange(model.config.max_seq_len, dtype=torch.float32), inverse)
    cos, sin = angles.cos(), angles.sin()

    def rotate(x: Tensor) -> Tensor:  # (B, nh, T, hs)
        T = x.shape[2]
        first, second = x[..., : size // 2], x[..., size // 2 :]
        return torch.cat((first * cos[:T] - second * sin[:T], first * sin[:T] + second * cos[:T]), dim=-1)

    for block in model.transformer.h:
        _patch_block(block, queries_keys=rotate)
    nn.init.zeros_(model.transformer.wpe.weight)
    model.transformer.wpe.weight.requires_grad_(False)


def value_embeddings(model: GPT) -> None:
    config = model.config
    model.value_embeds = nn.ModuleList(
        nn.Embedding(config.vocab_size, config.attn_size) for _ in range(config.num_layers)
    )
    for table in model.value_embeds:
        nn.init.normal_(table.weight, std=0.02)
    current: dict[str, Tensor] = {}
    forward = model.forward

    def remembering(input_ids: Tensor, *args, **kwargs):
        current["ids"] = input_ids
        return forward(input_ids, *args, **kwargs)

    model.forward = remembering
    for layer, block in enumerate(model.transformer.h):
        table = model.value_embeds[layer]
        _patch_block(block, values=lambda v, table=table: v + _heads(table(current["ids"]), v.shape[1]))


def _heads(x: Tensor, heads: int) -> Tensor:
    B, T, C = x.shape
    return x.view(B, T, heads, C // heads).transpose(1, 2)


def _patch_block(
    block: nn.Module,
    queries_keys: Callable[[Tensor], Tensor] | None = None,
    values: Callable[[Tensor], Tensor] | None = None,
) -> None:
    attention = block.attn

    def forward(
        x: Tensor, past: object, mask: Tensor | None, rotation: object = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if past is not None or mask is not None or rotation is not None:
            raise NotImplementedError("a trial patch trains and validates on whole windows only")
        B, T, _ = x.shape
        qkv = attention.c_attn(x).view(B, T, 3, attention.num_heads, attention.head_size)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if queries_keys is not None:
            q, k = queries_keys(q), queries_keys(k)
        if values is not None:
            v = values(v)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        return attention.c_proj(y.transpose(1, 2).reshape(B, T, -1)), (k, v)

    attention.forward = forward


PATCHES: dict[str, Callable[[GPT], None]] = {
    "rmsnorm": rmsnorm,
    "rotary": rotary,
    "value embeddings": value_embeddings,
}
