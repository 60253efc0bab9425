"""Turn an fp32 ONNX graph into the precision asked for.

- fp32: unchanged.
- fp16 (for the CUDA provider): weights, activations and the key/value cache in float16; the
  `logits` output stays float32 and `LayerNormalization` stays the fused op (it accumulates in
  float32). onnxruntime's CPU provider also runs it, by inserting casts around ops that lack
  float16 kernels, so its numbers on the CPU approximate, not reproduce, a GPU run.
- int8 (for the CPU provider): onnxruntime dynamic quantization; weights of MatMul and Gather
  become int8 (per channel), activations are quantized on the fly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import onnx

from export import signature

PRECISIONS = ("fp32", "fp16", "int8")
WEIGHTS_LIMIT = 2**31 - 2**26  # bytes: above this (2 GB less room for the graph) weights go to a .data file
DATA_SUFFIX = ".data"


def convert(source: Path, target: Path, precision: str) -> None:
    """Write the fp32 graph `source` to `target` in `precision` ("fp16" or "int8"), then delete `source`."""
    if precision == "fp16":
        _to_fp16(source, target)
    elif precision == "int8":
        _to_int8(source, target)
    else:
        raise ValueError(f"cannot convert an fp32 graph to {precision!r}: choose fp16 or int8")
    for file in files(source):
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


def _to_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = sum(f.stat().st_size for f in files(source)) // 4 > WEIGHTS_LIMIT  # int8 weights: 1/4 of fp32
    # quantize_dynamic warns that no pre-processing ran: its symbolic shape inference cannot
    # finish on this graph, and onnxruntime applies the same graph optimisations at load time.
    with _quiet_root_logger():
        quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=external)


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
