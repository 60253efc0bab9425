"""Attention with its key/value cache as one onnxruntime contrib op per layer.

The dynamo exporter turns `F.scaled_dot_product_attention` plus the cache concatenation into
about 25 small ONNX nodes per layer (reshapes, transposes, concats, a NaN guard around the
softmax), and at batch-1 decode sizes onnxruntime's cost is per node, not per FLOP. So at
export time (never in `gpt/`) each block's attention is swapped for `CachedAttention`, which
calls a `torch.library` custom op: eager and during tracing it runs the same math as
`gpt.model.CausalSelfAttention`, and the exporter writes it as one node. The op applies the
additive attention bias (`gpt.model.attention_bias`: the causal + padding mask, built once per
step and shared by every layer). Two cache layouts, chosen per export (`uses_cache_buffers`):

- Cache buffers, for the CPU provider: `com.microsoft.GroupQueryAttention` (as many key/value
  heads as query heads) on the packed QKV projection. The cache of each layer is a buffer of the
  whole context, `[batch, heads, max_seq_len, head_size]`, for past and present alike; the new
  entries go to positions `past .. past + seq - 1`, where `past + seq` is the attention mask's
  width. When the caller binds one buffer as both the past input and the present output
  (`export.runtime` does, through IOBinding), onnxruntime writes each step in place instead of
  copying the whole past ("past_present_share_buffer"). Its CPU kernels need a head size that is
  a multiple of 8; a step of several tokens after a non-empty past needs batch 1. Its CUDA
  kernels are float16/bfloat16 only and take no attention bias.
- Growing pasts, for the CUDA provider and other head sizes: `com.microsoft.MultiHeadAttention`,
  which adds the QKV bias, appends the new keys/values to the past `[batch, heads, past,
  head_size]` and returns presents one step longer (float32 and float16 kernels on both providers;
  float16 graphs run on the CPU behind inserted casts).

Other ONNX runtimes do not know these ops.
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
from gpt.model import GPT, CausalSelfAttention, KVBuffer, rms_heads, rotate


def uses_cache_buffers(config: GPTConfig, provider: str) -> bool:
    """Whether an export for `provider` ("cpu" or "cuda") gets cache buffers (see the module docstring)."""
    return provider == "cpu" and config.head_size % 8 == 0


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """`[batch, seq, heads * head_size]` -> `[batch, heads, seq, head_size]` (a view)."""
    batch, seq, _ = x.shape
    return x.view(batch, seq, num_heads, -1).transpose(1, 2)


@torch.library.custom_op("simple_llm::buffered_attention", mutates_args=())
def buffered_attention(
    qkv: Tensor, attention_bias: Tensor, past_key: Tensor, past_value: Tensor, num_heads: int
) -> tuple[Tensor, Tensor, Tensor]:
    """`GroupQueryAttention` semantics: the packed projection `qkv` `[batch, seq, 3 * heads *
    head_size]`, the additive `attention_bias` `[batch, 1, seq, total]` and the cache buffers
    `[batch, heads, capacity, head_size]` whose first `total - seq` positions hold the past.
    Returns the attention output `[batch, seq, heads * head_size]` and the buffers with the new
    keys/values at positions `total - seq .. total - 1`."""
    batch, seq, width = qkv.shape
    total = attention_bias.shape[-1]
    query, key, value = (_heads(x, num_heads) for x in qkv.split(width // 3, dim=2))
    present_key = past_key.slice_scatter(key, dim=2, start=total - seq, end=total)
    present_value = past_value.slice_scatter(value, dim=2, start=total - seq, end=total)
    y = F.scaled_dot_product_attention(
        query, present_key[:, :, :total], present_value[:, :, :total], attn_mask=attention_bias
    )
    return y.transpose(1, 2).reshape(batch, seq, width // 3), present_key, present_value


@buffered_attention.register_fake
def _(qkv, attention_bias, past_key, past_value, num_heads):
    batch, seq, width = qkv.shape
    return qkv.new_empty(batch, seq, width // 3), torch.empty_like(past_key), torch.empty_like(past_value)


@torch.library.custom_op("simple_llm::growing_attention", mutates_args=())
def growing_attention(
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
    present_key = torch.cat((past_key, _heads(key, num_heads)), dim=2)  # (B, nh, P+T, hs)
    present_value = torch.cat((past_value, _heads(value, num_heads)), dim=2)
    y = F.scaled_dot_product_attention(_heads(query, num_heads), present_key, present_value, attn_mask=attention_bias)
    return y.transpose(1, 2).reshape(batch, seq, width), present_key, present_value


@growing_attention.register_fake
def _(query, key, value, bias, attention_bias, past_key, past_value, num_heads):
    batch, seq, width = query.shape
    present = past_key.new_empty(batch, num_heads, past_key.shape[2] + seq, past_key.shape[3])
    return query.new_empty(batch, seq, width), present, torch.empty_like(present)


_INTEGER_INPUTS = {
    "seqlens_k": "tensor(int32)",
    "total_sequence_length": "tensor(int32)",
    "position_ids": "tensor(int64)",
    "key_padding_mask": "tensor(int32)",
}


def _contrib_op(
    name: str, inputs: list[str], outputs: list[str], attributes: dict[str, OpSchema.AttrType]
) -> onnxscript.values.Op:
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


def _buffered_attention_to_onnx(qkv, attention_bias, past_key, past_value, num_heads: int):
    # The op wants the cache position of each row's last token (seqlens_k, [batch]) and the total
    # length (a scalar), both int32: every row has the attention mask's width, padding included.
    # Computed from `attention_bias` alone, so every layer's copy is the same and merged.
    total = op.Shape(attention_bias, start=3, end=4)  # [1], int64
    last = op.Expand(op.Sub(total, op.Constant(value_ints=[1])), op.Shape(attention_bias, start=0, end=1))
    int32 = onnx.TensorProto.INT32
    return _GROUP_QUERY_ATTENTION(
        qkv,
        None,
        None,
        past_key,
        past_value,
        op.Cast(last, to=int32),
        op.Cast(op.Squeeze(total), to=int32),
        None,
        None,
        None,
        attention_bias,
        num_heads=num_heads,
        kv_num_heads=num_heads,
    )


_MULTI_HEAD_ATTENTION = _contrib_op(
    "MultiHeadAttention",
    ["query", "key", "value", "bias", "key_padding_mask", "attention_bias", "past_key", "past_value"],
    ["output", "present_key", "present_value"],
    {"num_heads": OpSchema.AttrType.INT},
)


def _growing_attention_to_onnx(query, key, value, bias, attention_bias, past_key, past_value, num_heads: int):
    return _MULTI_HEAD_ATTENTION(
        query, key, value, bias, None, attention_bias, past_key, past_value, num_heads=num_heads
    )


TRANSLATIONS = {
    torch.ops.simple_llm.buffered_attention.default: _buffered_attention_to_onnx,
    torch.ops.simple_llm.growing_attention.default: _growing_attention_to_onnx,
}
"""The dynamo exporter's `custom_translation_table` for the ops of this module."""


class CachedAttention(nn.Module):
    """`CausalSelfAttention.forward` (with an explicit past) through one of the custom ops, for
    inference only (no dropout); it shares the wrapped module's weights. With `buffers` the past
    is a `KVBuffer` over the cache buffers, otherwise a `(key, value)` pair."""

    def __init__(self, attention: CausalSelfAttention, buffers: bool) -> None:
        super().__init__()
        self.attention = attention
        self.buffers = buffers

    def forward(
        self,
        x: Tensor,
        past: KVBuffer | tuple[Tensor, Tensor],
        mask: Tensor,
        rotation: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`mask` is `gpt.model.attention_bias`'s additive `[batch, 1, seq, past + seq]`, the same in
        every layer; `rotation` `gpt.model.rotary_angles`' (cos, sin) for a model with rotary positions."""
        attention, heads = self.attention, self.attention.num_heads
        if self.buffers:
            qkv = attention.c_attn(x)
            if attention.qk_norm or rotation is not None:
                qkv = torch.cat(
                    _queries_keys(*qkv.split(heads * attention.head_size, dim=2), attention, rotation), dim=2
                )
            y, present_key, present_value = buffered_attention(qkv, mask, past.keys, past.values, heads)
        else:
            bias = attention.c_attn.bias
            projection = x @ attention.c_attn.weight  # Conv1D weight [in, out]; the op adds the bias
            changed = attention.qk_norm or rotation is not None
            if changed and bias is not None:  # the bias goes before the normalisation and rotation
                projection, bias = projection + bias, None
            query, key, value = projection.split(heads * attention.head_size, dim=2)
            if changed:
                query, key, value = _queries_keys(query, key, value, attention, rotation)
            y, present_key, present_value = growing_attention(query, key, value, bias, mask, past[0], past[1], heads)
        return attention.c_proj(y), (present_key, present_value)


def _queries_keys(
    query: Tensor, key: Tensor, value: Tensor, attention: CausalSelfAttention, rotation: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """QK-norm (`gpt.model.rms_heads`), then the rotary positions (`gpt.model.rotate`), as the model
    applies them, on `[batch, seq, heads * head_size]` queries and keys."""
    batch, seq, width = query.shape
    heads = [t.view(batch, seq, attention.num_heads, attention.head_size) for t in (query, key)]
    if attention.qk_norm:
        heads = [rms_heads(t) for t in heads]
    if rotation is not None:
        cos, sin = (angles.transpose(1, 2) for angles in rotation)  # [batch, seq, 1, head_size / 2]
        heads = [rotate(t, cos, sin) for t in heads]
    query, key = (t.reshape(batch, seq, width) for t in heads)
    return query, key, value


@contextlib.contextmanager
def cached_attention_blocks(model: GPT, buffers: bool) -> Iterator[GPT]:
    """`model` with every block's attention swapped for `CachedAttention`, restored on exit."""
    blocks = list(model.transformer.h)
    originals = [block.attn for block in blocks]
    try:
        for block, attention in zip(blocks, originals):
            block.attn = CachedAttention(attention, buffers)
        yield model
    finally:
        for block, attention in zip(blocks, originals):
            block.attn = attention
