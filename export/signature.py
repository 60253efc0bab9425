"""Names of the exported graph's inputs, outputs and dynamic dimensions.

They follow the optimum / onnxruntime-genai convention, so other runtimes find the cache by name:
`input_ids`, `attention_mask`, `position_ids`, `past_key_values.{i}.key|value` -> `logits`,
`present.{i}.key|value`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
PAST_KEY = "past_key_values.%d.key"  # printf patterns, as genai_config.json spells them
PAST_VALUE = "past_key_values.%d.value"
PRESENT_KEY = "present.%d.key"
PRESENT_VALUE = "present.%d.value"

BATCH = "batch_size"  # the name transformers.js gives the batch when it builds an empty past
SEQUENCE = "sequence_length"
PAST_SEQUENCE = "past_sequence_length"
TOTAL_SEQUENCE = "total_sequence_length"  # attention_mask: past + new tokens


def past_names(num_layers: int) -> list[str]:
    """`past_key_values.{i}.key`, `past_key_values.{i}.value` for every layer, in that order."""
    return [pattern % i for i in range(num_layers) for pattern in (PAST_KEY, PAST_VALUE)]


def present_names(num_layers: int) -> list[str]:
    """`present.{i}.key`, `present.{i}.value` for every layer, in that order."""
    return [pattern % i for i in range(num_layers) for pattern in (PRESENT_KEY, PRESENT_VALUE)]


def input_names(num_layers: int) -> list[str]:
    return [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *past_names(num_layers)]


def output_names(num_layers: int) -> list[str]:
    return [LOGITS, *present_names(num_layers)]


def describe(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The graph's I/O as `{"inputs": [...], "outputs": [...]}`, each `{name, dtype, shape}`;
    dynamic dimensions are given by name."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {"inputs": [_value_info(v) for v in graph.input], "outputs": [_value_info(v) for v in graph.output]}


def _value_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor.shape.dim]
    return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": shape}
