"""Attention with its key/value cache as one onnxruntime `GroupQueryAttention` node per layer.

The dynamo exporter turns `F.scaled_dot_product_attention` plus the cache concatenation into
about 25 small ONNX nodes per layer (reshapes, transposes, concats, a NaN guard around the
softmax), and at batch-1 decode sizes onnxruntime's cost is per node, not per FLOP. So at
export time (never in `gpt/`) each block's attention is swapped for `CachedAttention`, which
calls the custom op `simple_llm::cached_attention`: eager and during tracing it runs the same
math as `gpt.model.CausalSelfAttention`; the exporter writes it as one
`com.microsoft.GroupQueryAttention` node (as many key/value heads as query heads) that splits
the packed QKV projection into heads, writes the new keys/values into the cache and applies the
additive attention bias (the causal + padding mask, built once per step and shared by every
layer).

The cache is a buffer of the whole context per layer and tensor, `[batch, heads, max_seq_len,
head_size]`: the past and the present of a layer have that same shape, and the new entries go
to positions `past .. past + seq - 1`, where `past + seq` is the attention mask's width. When the
caller binds one buffer as both the past input and the present output (`export.runtime` does,
through IOBinding), onnxruntime writes the step's entries in place instead of copying the whole
past every step ("past_present_share_buffer"); bound separately, it copies the past first.
onnxruntime's CPU provider has float32 and float16 kernels; other ONNX runtimes do not know the op.
Limits of the op: the head size must be a multiple of 8 (`supports`; other models are exported
with plain attention), and a step of several tokens after a non-empty past needs batch 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx
import onnxscript
import torch
import torch.nn.functional as F
from onnx.defs import OpSchema
from onnxscript import opset18 as op
from torch import Tensor, nn

from gpt.config import GPTConfig
from gpt.model import GPT, CausalSelfAttention, KVBuffer


def supports(config: GPTConfig) -> bool:
    """Whether onnxruntime's op runs this model: its kernels need a head size that is a multiple of 8."""
    return config.head_size % 8 == 0


@torch.library.custom_op("simple_llm::cached_attention", mutates_args=())
def cached_attention(
    qkv: Tensor, attention_bias: Tensor, past_key: Tensor, past_value: Tensor, num_heads: int
) -> tuple[Tensor, Tensor, Tensor]:
    """`GroupQueryAttention` semantics: the packed projection `qkv` `[batch, seq, 3 * heads *
    head_size]`, the additive `attention_bias` `[batch, 1, seq, total]` and the cache buffers
    `[batch, heads, capacity, head_size]` whose first `total - seq` positions hold the past.
    Returns the attention output `[batch, seq, heads * head_size]` and the buffers with the new
    keys/values at positions `total - seq .. total - 1`."""
    batch, seq, width = qkv.shape
    total = attention_bias.shape[-1]

    def heads(x: Tensor) -> Tensor:
        return x.view(batch, seq, num_heads, -1).transpose(1, 2)  # (B, nh, T, hs)

    query, key, value = (heads(x) for x in qkv.split(width // 3, dim=2))
    present_key = past_key.slice_scatter(key, dim=2, start=total - seq, end=total)
    present_value = past_value.slice_scatter(value, dim=2, start=total - seq, end=total)
    y = F.scaled_dot_product_attention(
        query, present_key[:, :, :total], present_value[:, :, :total], attn_mask=attention_bias
    )
    return y.transpose(1, 2).reshape(batch, seq, width // 3), present_key, present_value


@cached_attention.register_fake
def _(qkv, attention_bias, past_key, past_value, num_heads):
    batch, seq, width = qkv.shape
    return qkv.new_empty(batch, seq, width // 3), torch.empty_like(past_key), torch.empty_like(past_value)


_INTEGER_INPUTS = {"seqlens_k": "tensor(int32)", "total_sequence_length": "tensor(int32)", "position_ids": "tensor(int64)"}


def _contrib_op(name: str, inputs: list[str], outputs: list[str], attributes: dict[str, OpSchema.AttrType]) -> onnxscript.values.Op:
    """An onnxscript handle for onnxruntime's `com.microsoft` op `name`, declared with the inputs
    and outputs used here (onnx itself has no schema for contrib ops). The first input and output
    are required, the rest optional; every tensor is float32/float16 ("T") except the integer
    inputs of `_INTEGER_INPUTS`."""
    optional, single = OpSchema.FormalParameterOption.Optional, OpSchema.FormalParameterOption.Single

    def parameters(names: list[str]) -> list[OpSchema.FormalParameter]:
        return [
            OpSchema.FormalParameter(n, _INTEGER_INPUTS.get(n, "T"), param_option=single if i == 0 else optional)
            for i, n in enumerate(names)
        ]

    schema = OpSchema(
        name,
        "com.microsoft",
        1,
        inputs=parameters(inputs),
        outputs=parameters(outputs),
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "")],
        attributes=[OpSchema.Attribute(a, kind, "", required=True) for a, kind in attributes.items()],
    )
    return onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), name, schema)


_GROUP_QUERY_ATTENTION = _contrib_op(
    "GroupQueryAttention",
    ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"]
    + ["cos_cache", "sin_cache", "position_ids", "attention_bias"],
    ["output", "present_key", "present_value"],
    {"num_heads": OpSchema.AttrType.INT, "kv_num_heads": OpSchema.AttrType.INT},
)


def _cached_attention_to_onnx(qkv, attention_bias, past_key, past_value, num_heads: int):
    # The op wants the cache position of each row's last token (seqlens_k, [batch]) and the total
    # length (a scalar), both int32: every row has the attention mask's width, padding included.
    # Computed from `attention_bias` alone, so every layer's copy is the same and merged.
    total = op.Shape(attention_bias, start=3, end=4)  # [1], int64
    last = op.Expand(op.Sub(total, op.Constant(value_ints=[1])), op.Shape(attention_bias, start=0, end=1))
    int32 = onnx.TensorProto.INT32
    return _GROUP_QUERY_ATTENTION(
        qkv, None, None, past_key, past_value, op.Cast(last, to=int32), op.Cast(op.Squeeze(total), to=int32),
        None, None, None, attention_bias, num_heads=num_heads, kv_num_heads=num_heads,
    )


TRANSLATIONS = {torch.ops.simple_llm.cached_attention.default: _cached_attention_to_onnx}
"""The dynamo exporter's `custom_translation_table` for the ops of this module."""


class CachedAttention(nn.Module):
    """`CausalSelfAttention.forward` (with an explicit past) through `cached_attention`, for
    inference only (no dropout); it shares the wrapped module's weights."""

    def __init__(self, attention: CausalSelfAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x: Tensor, past: KVBuffer, mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`past` holds the cache buffers; `mask` is `gpt.model.attention_bias`'s additive
        `[batch, 1, seq, past + seq]`, the same in every layer."""
        attention = self.attention
        y, present_key, present_value = cached_attention(
            attention.c_attn(x), mask, past.keys, past.values, attention.num_heads
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
