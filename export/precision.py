"""Turn an fp32 ONNX graph into the precision asked for.

- fp32: unchanged.
- fp16 (for the CUDA provider): weights, activations and the key/value cache in float16; the
  `logits` output stays float32 and `LayerNormalization` stays the fused op (it accumulates in
  float32). onnxruntime's CPU provider also runs it, by inserting casts around ops that lack
  float16 kernels, so its numbers on the CPU approximate, not reproduce, a GPU run.
- int8 (for the CPU provider): weight-only 8-bit quantization in blocks of up to 128 values with
  one float32 scale each. The block matrices become onnxruntime `MatMulNBits` nodes (onnxruntime's
  quantizer; `accuracy_level` 4 quantizes the activations to int8 on the fly, for the VNNI
  kernels); the embedding tables become `GatherBlockQuantized`, and a tied LM head multiplies by
  the same quantized table (`MatMulNBits` on it, reshaped). onnxruntime's quantizer handles
  tables only in 4 bits, so `_quantize_tables` does that part. Against its dynamic quantization
  (`quantize_dynamic`: int8 per channel, `MatMulInteger`) it decodes much faster and its greedy
  tokens agree with fp32's (figures in docs/decisions.md). For onnxruntime-web, which has no fast
  WebAssembly kernel for these ops, `dequantized_at_load` rewrites the same 8-bit weights into
  float32 at session load (the page's graph).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export import signature

PRECISIONS = ("fp32", "fp16", "int8")
WEIGHTS_LIMIT = 2**31 - 2**26  # bytes: above this (2 GB less room for the graph) weights go to a .data file
DATA_SUFFIX = ".data"


def convert(source: Path, target: Path, precision: str) -> None:
    """Write the fp32 graph `source` to `target` in `precision` ("fp16" or "int8")."""
    if precision == "fp16":
        _to_fp16(source, target)
    elif precision == "int8":
        _to_int8(source, target)
    else:
        raise ValueError(f"cannot convert an fp32 graph to {precision!r}: choose fp16 or int8")


def weight_bytes(model: nn.Module, precision: str) -> int:
    """The bytes of `model`'s weights in an export in `precision` (each tensor once: a tied head
    shares its table), as `convert` stores them: fp32 4 a value, fp16 2; int8 stores every matrix
    as 8-bit blocks of `INT8_BLOCK` values along its input (padded to whole blocks) and each
    embedding table as blocks along its width, with one float32 scale a block, and the rest
    (biases, norms, a table too narrow for blocks) in float32. A graph's file is this and its ops
    (a few percent above 1 MB). A model whose tied table has under about 8 K values gets its head
    as a separate copy (the exporter folds the transpose of so small a table): not counted here."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "int8":
        return sum(p.numel() for p in model.parameters()) * (2 if precision == "fp16" else 4)
    blocked: dict[int, tuple[int, int, int | None]] = {}  # parameter id -> (rows, width, block)
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Embedding):
            rows, width = weight.shape
            blocked[id(weight)] = (rows, width, next((b for b in (INT8_BLOCK, 64, 32, 16) if width % b == 0), None))
        elif isinstance(weight, torch.Tensor) and weight.dim() == 2 and id(weight) not in blocked:
            rows, width = weight.shape if isinstance(module, nn.Linear) else weight.shape[::-1]  # Conv1D: [in, out]
            blocked[id(weight)] = (rows, width, INT8_BLOCK)  # `MatMulNBits` pads a narrow input to one block
    total = 0
    for p in model.parameters():
        rows, width, block = blocked.get(id(p), (0, 0, None))
        if block is None:
            total += 4 * p.numel()
        else:
            blocks = -(-width // block)
            total += rows * blocks * (block + 4)
    return total


def remove(path: Path) -> None:
    """Delete graph `path` and its external-data file."""
    for file in files(path):
        file.unlink()


def save(model: onnx.ModelProto, path: Path) -> None:
    """Save `model` as one file, or with its weights in `<name>.data` beside it when above 2 GB."""
    external = needs_external_data(model)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=path.name + DATA_SUFFIX,
    )


def needs_external_data(model: onnx.ModelProto) -> bool:
    return sum(len(t.raw_data) for t in model.graph.initializer) > WEIGHTS_LIMIT


def _to_fp16(source: Path, target: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Given a path (not a loaded model), it runs shape inference through a file: works above 2 GB.
    save(convert_float_to_float16(str(source), keep_io_types=[signature.LOGITS]), target)


INT8_BLOCK = 128
"""Values per quantization block (a smaller power of two where a table's width needs one)."""


def _to_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(source))
    _quantize_tables(model.graph)
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=INT8_BLOCK, is_symmetric=True, accuracy_level=4)
    with _quiet_root_logger():  # it logs every node at INFO
        quantizer.process()
    save(quantizer.model.model, target)


def _quantize_tables(graph: onnx.GraphProto) -> None:
    """Embedding tables to 8 bits: `Gather(table)` -> `GatherBlockQuantized`, and a tied head's
    `MatMul(x, Transpose(table))` -> `MatMulNBits` on the same quantized table. Blocks run along
    each row (the embedding width) with one scale each; the zero point is the default 128."""
    initializers = {t.name: t for t in graph.initializer}
    transposed = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Transpose" and n.input[0] in initializers and list(n.attribute[0].ints) == [1, 0]
    }
    quantized: dict[str, tuple[str, str, int, int, int] | None] = {}  # table -> (data, scales, rows, width, block)

    def quantize(name: str) -> tuple[str, str, int, int, int] | None:
        if name not in quantized:
            table = onnx.numpy_helper.to_array(initializers[name]).astype(np.float32)
            rows, width = table.shape
            block = next((b for b in (INT8_BLOCK, 64, 32, 16) if width % b == 0), None)
            quantized[name] = None if block is None else (name + "_q8", name + "_scales", rows, width, block)
            if block is not None:  # else too narrow for blocks: the table stays float32
                data, scales = _blockwise_uint8(table, block)
                graph.initializer.extend(
                    [
                        onnx.numpy_helper.from_array(data, name + "_q8"),
                        onnx.numpy_helper.from_array(scales, name + "_scales"),
                    ]
                )
        return quantized[name]

    nodes = []
    for node in graph.node:
        if node.op_type == "Gather":
            table = node.input[0]
        elif node.op_type == "MatMul":
            table = transposed.get(node.input[1])
        else:
            table = None
        spec = quantize(table) if table in initializers else None
        if spec is None:
            nodes.append(node)
        elif node.op_type == "Gather":
            nodes.append(_gather_quantized(node, *spec))
        else:
            nodes.extend(_head_quantized(graph, node, *spec))
    read = {name for n in nodes for name in n.input}
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.op_type != "Transpose" or n.output[0] in read)  # drop the head's transpose
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _blockwise_uint8(table: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit blocks along each row: uint8 values (zero point 128) and float32 scales `[rows, blocks]`."""
    rows, width = table.shape
    blocks = table.reshape(rows, width // block, block)
    scales = np.abs(blocks).max(axis=2) / 127
    scales[scales == 0] = 1
    data = (np.rint(blocks / scales[..., None]) + 128).astype(np.uint8).reshape(rows, width)
    return data, scales.astype(np.float32)


def _gather_quantized(
    node: onnx.NodeProto, data: str, scales: str, rows: int, width: int, block: int
) -> onnx.NodeProto:
    return onnx.helper.make_node(
        "GatherBlockQuantized",
        [data, node.input[1], scales],
        node.output,
        name=node.name,
        domain="com.microsoft",
        bits=8,
        block_size=block,
        gather_axis=0,
        quantize_axis=1,
    )


def _head_quantized(
    graph: onnx.GraphProto, node: onnx.NodeProto, data: str, scales: str, rows: int, width: int, block: int
) -> list[onnx.NodeProto]:
    """The head: the `[rows, width]` table is MatMulNBits' `[N, K]` weight, blocked along K (a
    reshape to `[N, blocks, block]` that onnxruntime folds at load)."""
    shape = onnx.helper.make_tensor(node.name + "_blocks", onnx.TensorProto.INT64, [3], [rows, width // block, block])
    graph.initializer.append(shape)
    reshape = onnx.helper.make_node("Reshape", [data, shape.name], [data + "_blocks"], name=node.name + "_reshape")
    matmul = onnx.helper.make_node(
        "MatMulNBits",
        [node.input[0], data + "_blocks", scales],
        node.output,
        name=node.name,
        domain="com.microsoft",
        K=width,
        N=rows,
        bits=8,
        block_size=block,
        accuracy_level=4,
    )
    return [reshape, matmul]


def files(path: Path) -> list[Path]:
    """The graph file and, when it has one, its external-data file."""
    return [f for f in (path, path.with_name(path.name + DATA_SUFFIX)) if f.exists()]


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Raise the root logger's level to ERROR for the duration (the quantizer logs through it)."""
    level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.root.setLevel(level)


def dequantized_at_load(source: Path, target: Path) -> None:
    """Write the int8 graph `source` (`MatMulNBits`, `GatherBlockQuantized`: `_to_int8`) to `target`
    for onnxruntime-web, which has no fast WebAssembly kernel for them (it dequantizes every weight
    on every call). Each quantized weight stays 8-bit in the file (int8 blocks and their float32
    scales: the same values and about the same size), but as `Cast` -> `Mul` -> `Reshape` of
    initializers, which onnxruntime's constant folding turns into float32 weights once, when the
    session loads; the matmuls and lookups then run as float32 `MatMul` and `Gather`. A tied
    table is stored once for the lookup and the head (`Transpose` of the same folded table)."""
    model = onnx.load(str(source))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    reshaped = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Reshape" and n.input[0] in initializers}
    weights: dict[str, str] = {}  # quantized data -> its float32 `[rows, width]` tensor
    nodes: list[onnx.NodeProto] = []

    def weight(data: str, scales: str, rows: int, width: int, block: int) -> str:
        data = reshaped.get(data, data)
        if data not in weights:
            blocks = -(-width // block)  # MatMulNBits pads the last block of a row
            values = onnx.numpy_helper.to_array(initializers[data]).reshape(rows, blocks, block)
            signed = (values.astype(np.int16) - 128).astype(np.int8)  # the zero point 128 of both ops
            scale = onnx.numpy_helper.to_array(initializers[scales]).reshape(rows, blocks, 1)
            base = data.removesuffix("_q8")
            padded = blocks * block != width
            graph.initializer.extend(
                [
                    onnx.numpy_helper.from_array(signed, base + "_int8"),
                    onnx.numpy_helper.from_array(scale.astype(np.float32), base + "_int8_scales"),
                    onnx.numpy_helper.from_array(np.array([rows, blocks * block], np.int64), base + "_int8_shape"),
                ]
            )
            nodes.extend(
                [
                    onnx.helper.make_node("Cast", [base + "_int8"], [base + "_int8_f"], to=onnx.TensorProto.FLOAT),
                    onnx.helper.make_node("Mul", [base + "_int8_f", base + "_int8_scales"], [base + "_int8_m"]),
                    onnx.helper.make_node(
                        "Reshape",
                        [base + "_int8_m", base + "_int8_shape"],
                        [base + ("_int8_padded" if padded else "_dequantized")],
                    ),
                ]
            )
            if padded:
                graph.initializer.extend(
                    onnx.numpy_helper.from_array(np.array([v], np.int64), f"{base}_int8_{name}")
                    for name, v in (("start", 0), ("end", width), ("axis", 1))
                )
                slice_inputs = [f"{base}_int8_{name}" for name in ("padded", "start", "end", "axis")]
                nodes.append(onnx.helper.make_node("Slice", slice_inputs, [base + "_dequantized"]))
            weights[data] = base + "_dequantized"
        return weights[data]

    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits" and attrs.get("bits") == 8 and len(node.input) == 3:
            rows, width, block = attrs["N"], attrs["K"], attrs["block_size"]
            table = weight(node.input[1], node.input[2], rows, width, block)
            nodes.append(onnx.helper.make_node("Transpose", [table], [node.output[0] + "_weight"], perm=[1, 0]))
            nodes.append(
                onnx.helper.make_node(
                    "MatMul", [node.input[0], node.output[0] + "_weight"], node.output, name=node.name
                )
            )
        elif node.op_type == "GatherBlockQuantized" and attrs.get("bits") == 8 and attrs.get("quantize_axis") == 1:
            rows, width = initializers[node.input[0]].dims
            table = weight(node.input[0], node.input[2], rows, width, attrs["block_size"])
            nodes.append(onnx.helper.make_node("Gather", [table, node.input[1]], node.output, name=node.name))
        elif node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            raise ValueError(f"{node.name}: no float32 form for {node.op_type} with {attrs}")
        else:
            nodes.append(node)
    read = {name for n in nodes for name in n.input}
    del graph.node[:]
    graph.node.extend(
        n for n in nodes if n.op_type != "Reshape" or n.output[0] in read or n.input[0] not in initializers
    )
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    save(model, target)
