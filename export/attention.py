"""Attention with its key/value cache as one onnxruntime `MultiHeadAttention` node.

The dynamo exporter turns `F.scaled_dot_product_attention` plus the cache concatenation into
about 25 small ONNX nodes per layer (reshapes, transposes, concats, a NaN guard around the
softmax), and at batch-1 decode sizes onnxruntime's cost is per node, not per FLOP. So at
export time (never in `gpt/`) each block's attention is swapped for `CachedAttention`, which
calls the custom op `simple_llm::cached_attention`: eager and during tracing it runs the same
math as `gpt.model.CausalSelfAttention`; the exporter writes it as one
`com.microsoft.MultiHeadAttention` node that adds the QKV bias, splits heads, appends the new
keys/values to the past (`present_key`/`present_value`, `[batch, heads, total, head_size]`)
and applies the additive attention bias (the causal + padding mask, built once per step and
shared by every layer). onnxruntime's CPU provider has a float32 kernel (float16 graphs run it
behind inserted casts), its CUDA provider float32 and float16 kernels (not tested here); other
ONNX runtimes do not know the op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnxscript
import torch
import torch.nn.functional as F
from onnx.defs import OpSchema
from torch import Tensor, nn

from gpt.model import GPT, CausalSelfAttention


@torch.library.custom_op("simple_llm::cached_attention", mutates_args=())
def cached_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    bias: Tensor | None,
    attention_bias: Tensor,
    past_key: Tensor,
    past_value: Tensor,
    num_heads: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """`MultiHeadAttention` semantics: query/key/value `[batch, seq, heads * head_size]` (plus
    `bias` `[3 * heads * head_size]` when given), the additive `attention_bias`
    `[batch, 1, seq, past + seq]` and the past `[batch, heads, past, head_size]`; returns the
    attention output `[batch, seq, heads * head_size]` and the presents `[batch, heads, past + seq, head_size]`."""
    if bias is not None:
        query, key, value = (x + b for x, b in zip((query, key, value), bias.chunk(3)))
    batch, seq, width = query.shape

    def heads(x: Tensor) -> Tensor:
        return x.view(batch, seq, num_heads, -1).transpose(1, 2)  # (B, nh, T, hs)

    present_key = torch.cat((past_key, heads(key)), dim=2)  # (B, nh, P+T, hs)
    present_value = torch.cat((past_value, heads(value)), dim=2)
    y = F.scaled_dot_product_attention(heads(query), present_key, present_value, attn_mask=attention_bias)
    return y.transpose(1, 2).reshape(batch, seq, width), present_key, present_value


@cached_attention.register_fake
def _(query, key, value, bias, attention_bias, past_key, past_value, num_heads):
    batch, seq, width = query.shape
    present = past_key.new_empty(batch, num_heads, past_key.shape[2] + seq, past_key.shape[3])
    return query.new_empty(batch, seq, width), present, torch.empty_like(present)


def _contrib_op(name: str, inputs: list[str], outputs: list[str], attributes: dict[str, OpSchema.AttrType]) -> onnxscript.values.Op:
    """An onnxscript handle for onnxruntime's `com.microsoft` op `name`, declared with the inputs
    and outputs used here (onnx itself has no schema for contrib ops). The first input and output
    are required, the rest optional; every tensor is float32/float16 ("T") except `*_mask` (int32)."""
    optional, single = OpSchema.FormalParameterOption.Optional, OpSchema.FormalParameterOption.Single

    def parameters(names: list[str]) -> list[OpSchema.FormalParameter]:
        return [
            OpSchema.FormalParameter(n, "M" if n.endswith("_mask") else "T", param_option=single if i == 0 else optional)
            for i, n in enumerate(names)
        ]

    schema = OpSchema(
        name,
        "com.microsoft",
        1,
        inputs=parameters(inputs),
        outputs=parameters(outputs),
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute(a, kind, "", required=True) for a, kind in attributes.items()],
    )
    return onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), name, schema)


_MULTI_HEAD_ATTENTION = _contrib_op(
    "MultiHeadAttention",
    ["query", "key", "value", "bias", "key_padding_mask", "attention_bias", "past_key", "past_value"],
    ["output", "present_key", "present_value"],
    {"num_heads": OpSchema.AttrType.INT},
)


def _cached_attention_to_onnx(query, key, value, bias, attention_bias, past_key, past_value, num_heads: int):
    return _MULTI_HEAD_ATTENTION(query, key, value, bias, None, attention_bias, past_key, past_value, num_heads=num_heads)


TRANSLATIONS = {torch.ops.simple_llm.cached_attention.default: _cached_attention_to_onnx}
"""The dynamo exporter's `custom_translation_table` for the ops of this module."""


class CachedAttention(nn.Module):
    """`CausalSelfAttention.forward` (with an explicit past) through `cached_attention`, for
    inference only (no dropout); it shares the wrapped module's weights."""

    def __init__(self, attention: CausalSelfAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor], mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`mask` is `gpt.model.attention_bias`'s boolean `[batch, 1, seq, past + seq]` (True = may attend)."""
        attention = self.attention
        query, key, value = F.linear(x, attention.c_attn.weight.t()).split(attention.num_heads * attention.head_size, dim=2)
        additive = torch.where(mask, 0.0, float("-inf"))  # (B, 1, T, P+T), the same in every layer
        y, present_key, present_value = cached_attention(
            query, key, value, attention.c_attn.bias, additive, past[0], past[1], attention.num_heads
        )
        return attention.c_proj(y), (present_key, present_value)


@contextlib.contextmanager
def cached_attention_blocks(model: GPT) -> Iterator[GPT]:
    """`model` with every block's attention swapped for `CachedAttention`, restored on exit."""
    blocks = list(model.transformer.h)
    originals = [block.attn for block in blocks]
    try:
        for block, attention in zip(blocks, originals):
            block.attn = CachedAttention(attention)
        yield model
    finally:
        for block, attention in zip(blocks, originals):
            block.attn = attention
