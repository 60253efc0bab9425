"""`to_onnx`: export a GPT to one ONNX graph with an explicit key/value cache, check it, prove parity.

One graph serves prefill and decode, with dynamic batch and sequence lengths. The torch.onnx
dynamo exporter does the work and writes a graph fused for onnxruntime: attention with its cache
is one contrib op per layer (`export.attention`): for the CPU provider its cache is a buffer of
the whole context, written in place; for the CUDA provider (and head sizes the CPU op cannot
run) pasts start at length 0 and grow by concatenation. Skip-layer-norms and GELUs are fused
(`export.fusion`). The TorchScript exporter is a fallback used only when the dynamo exporter
fails: it gives the same parity here but is deprecated and its graph is not fused and grows its
pasts (slower on small models). The folder is built beside `out_dir` and renamed into place only
after the graph checks and the parity run pass, so a failed export leaves nothing."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from export import card, genai, signature, verify, webpage
from export import precision as precisions
from export.report import REPORT_FILE
from export.runtime import (
    MODEL_FILE,
    PORTABLE_DIR,
    PORTABLE_FILE,
    PORTABLE_VARIANTS,
    PROVIDERS,
    OnnxGPT,
    create_session,
    session_options,
)
from gpt import atomic_folder, checkpoint, hub
from gpt.hub import gpt2_incompatibility
from gpt.model import GPT, KVBuffer
from gpt.modes import evaluating

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20
SUPPORTED_OPSETS = range(18, 25)  # the dynamo exporter needs >= 18; onnxruntime 1.31 ran 18-24 here
_FP32_FILE = "model.fp32.onnx"  # the exported graph before an fp16/int8 conversion (staging folder only)
WEB_GRAPH = "web/model.onnx"  # the browser's graph where the export has no portable one for it (`_write_web_page`)


class ExportError(RuntimeError):
    """An export could not be written or did not pass its checks; nothing was left in `out_dir`."""


def to_onnx(
    model_or_dir: GPT | str | Path,
    out_dir: str | Path,
    *,
    precision: str = "fp32",
    provider: str | None = None,
    opset: int | None = None,
    threads: int | None = None,
    portable: bool = True,
    web: bool = True,
) -> Path:
    """Export a `GPT` (or a checkpoint folder) to `out_dir` and return that folder.

    Writes the fast graph `model_fast.onnx` (for `OnnxGPT` and onnxruntime-genai), the portable
    graph `onnx/model.onnx` (with `onnx/model_quantized.onnx` for int8, `onnx/model_fp16.onnx`
    for fp16: the layout optimum and transformers.js load), the model's configs (`config.json`,
    a transformers GPT-2 config for GPT-2-shaped models, and `generation_config.json`), with a
    tokenizer its files and `genai_config.json`, a model card `README.md` and `export_report.json`.
    `precision` is "fp32", "fp16" (for the CUDA provider) or "int8" (8-bit weights in blocks, for
    the CPU provider); `provider` ("cpu" or "cuda") is the execution provider the fast graph is
    built for (its attention op, see `export.attention`), by default "cuda" for fp16 and "cpu"
    otherwise; `opset` defaults to `DEFAULT_OPSET`; `threads` are onnxruntime's intra-op threads
    for the parity runs (always on the CPU); `portable=False` skips the portable graphs, which
    are also skipped for a model that is not GPT-2-shaped (no runtime but ours could load them);
    `web=False` skips `web/`, the page that runs the model in a browser (`export.webpage`).
    Every graph passes its parity run against the torch model before the folder appears.
    Raises ValueError for bad arguments, `gpt.CheckpointError` for a bad checkpoint folder and
    `ExportError` when the folder cannot be written or the export fails its checks.
    """
    if precision not in precisions.PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(precisions.PRECISIONS)}, got {precision!r}")
    provider = provider or ("cuda" if precision == "fp16" else "cpu")
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    opset = DEFAULT_OPSET if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise ValueError(
            f"opset must be an integer from {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]}, got {opset!r}"
        )
    options = session_options(threads)  # checked now, before the slow part
    model = GPT.load(model_or_dir) if isinstance(model_or_dir, (str, Path)) else model_or_dir
    notes = left_out(model, portable)
    for note in notes:
        log.warning("%s", note)
    out = Path(out_dir)
    log.info("exporting to %s (%s, opset %d)", out, precision, opset)
    started = time.perf_counter()
    with _staging(out) as stage, evaluating(model):
        exporter = _write_graph(model, stage / MODEL_FILE, precision, opset, provider)
        graphs = {MODEL_FILE: _checked(model, stage, MODEL_FILE, precision, options)}
        fast = graphs[MODEL_FILE].cache_buffers
        if portable and not gpt2_incompatibility(model.config):
            (stage / PORTABLE_DIR).mkdir()
            for name, graph_precision in portable_files(precision).items():
                if graph_precision == "fp32":
                    _write_graph(model, stage / name, "fp32", opset, provider=None)
                else:
                    precisions.convert(stage / PORTABLE_FILE, stage / name, graph_precision)
                graphs[name] = _checked(model, stage, name, graph_precision, options)
        _write_metadata(model, stage, fast, provider)
        if web:
            notes += _write_web_page(model, stage, provider, precision, opset, graphs, options)
        seconds = time.perf_counter() - started
        report = _report(model, stage, precision, provider, fast, opset, exporter, graphs, notes, seconds)
        _write_json(stage / REPORT_FILE, report)
        card.write(stage, model, report)
    return out


def portable_files(precision: str) -> dict[str, str]:
    """The portable graphs of an export in `precision`: file -> its precision. The fp32 graph is
    always there (optimum loads `model.onnx`); transformers.js picks a precision by file name."""
    files = {PORTABLE_FILE: "fp32"}
    if precision != "fp32":
        files[f"{PORTABLE_DIR}/{PORTABLE_VARIANTS[precision]}"] = precision
    return files


def left_out(model: GPT, portable: bool = True) -> list[str]:
    """What an export of `model` will not hold, and why (empty when it holds everything)."""
    notes = []
    if model.tokenizer is None:
        notes.append(
            "the model has no tokenizer: the export has no tokenizer.json, tokenizer_config.json, "
            "special_tokens_map.json or genai_config.json, so runtimes take token ids, not text "
            "(onnxruntime-genai cannot load it); save the model with a tokenizer to include them"
        )
    reason = gpt2_incompatibility(model.config)
    if reason:
        notes.append(
            f"the model is not GPT-2 compatible ({reason}): config.json holds simple-llm's fields only and "
            "there is no portable onnx/ graph, so transformers, optimum and transformers.js cannot load it"
        )
    elif not portable:
        notes.append("portable graphs skipped: no onnx/ folder, so optimum and transformers.js cannot load it")
    return notes


def _write_web_page(
    model: GPT,
    stage: Path,
    provider: str,
    precision: str,
    opset: int,
    graphs: dict[str, CheckedGraph],
    options: ort.SessionOptions,
) -> list[str]:
    """`web/` for the graph a browser runs; notes on what it lacks. onnxruntime-web (WebAssembly)
    copies every input into its memory and every output back on each run, so the browser runs
    growing pasts (the past crosses at its length, not as whole-context cache buffers: the
    portable graph, else `web/model.onnx`); its int8 is `precision.dequantized_at_load` (8-bit
    download, float32 kernels: onnxruntime-web has no fast `MatMulNBits`). A CPU fp16 export's
    page runs the fast graph, its inputs in float16."""
    if model.tokenizer is None:
        return ["no web/ page: the model has no tokenizer to turn text into tokens"]
    if provider != "cpu":
        graph = PORTABLE_FILE if PORTABLE_FILE in graphs else None
        if graph is None:
            return ["no web/ page: a CUDA export without the portable graph has no graph a browser runs"]
    elif precision == "fp16":
        graph = MODEL_FILE
    elif precision == "fp32" and PORTABLE_FILE in graphs:
        graph = PORTABLE_FILE
    else:
        graph = WEB_GRAPH
        (stage / webpage.WEB_DIR).mkdir()
        if precision == "fp32":
            _write_graph(model, stage / graph, "fp32", opset, provider=None)
        else:
            portable = f"{PORTABLE_DIR}/{PORTABLE_VARIANTS[precision]}"
            source = stage / (portable if portable in graphs else f"{webpage.WEB_DIR}/model_int8.onnx")
            if portable not in graphs:
                _write_graph(model, source, precision, opset, provider=None)
            precisions.dequantized_at_load(source, stage / graph)
            if portable not in graphs:
                precisions.remove(source)
        graphs[graph] = _checked(model, stage, graph, precision, options)
    notes = webpage.write_page(stage, graph, graphs[graph].precision)
    for note in notes:
        log.warning("%s", note)
    return notes


def _write_graph(model: GPT, path: Path, precision: str, opset: int, provider: str | None) -> str:
    """Export `model` to `path` in `precision` for `provider` (None: the portable layout); return
    the exporter used."""
    fp32 = path if precision == "fp32" else path.with_name(_FP32_FILE)
    exporter = export_graph(model, fp32, opset, provider)
    strip_metadata(fp32)
    if precision != "fp32":
        precisions.convert(fp32, path, precision)
        precisions.remove(fp32)
    return exporter


@dataclass(frozen=True)
class CheckedGraph:
    """A graph of the export that passed the ONNX checks and its parity run."""

    precision: str
    cache_buffers: bool
    parity: verify.ParityReport

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "cache_buffers": self.cache_buffers, "parity": self.parity.to_dict()}


def _checked(model: GPT, stage: Path, name: str, precision: str, options: ort.SessionOptions) -> CheckedGraph:
    """Run the ONNX checks and the parity run on graph `stage/name`; raise `ExportError` when it fails."""
    check_graph(stage / name)
    onnx_model = OnnxGPT(create_session(stage / name, "cpu", options), model.config)
    log.info("checking %s against the torch model", name)
    probe = verify.probe_inputs(model.config)
    parity = verify.compare(model, onnx_model, *probe, tolerance=verify.TOLERANCES[precision])
    if not parity.passed:
        reason = "; ".join(parity.failures)  # on the first line: a caller that shows one line shows why
        raise ExportError(f"{name} ({precision}) does not match the torch model: {reason}\n{parity.format()}")
    return CheckedGraph(precision, onnx_model.cache_capacity is not None, parity)


class _ExportWrapper(nn.Module):
    """`GPT.forward` with flat inputs and outputs, in the order of `signature.input_names`.

    With `cache_buffers`, each past tensor is a cache buffer of the whole context whose first
    `attention_mask` width - `input_ids` length positions are filled (see `export.attention`);
    otherwise pasts hold just the past and presents are one step longer.
    """

    def __init__(self, model: GPT, cache_buffers: bool) -> None:
        super().__init__()
        self.model = model
        self.cache_buffers = cache_buffers

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, past: tuple[Tensor, ...]
    ) -> tuple[Tensor, ...]:
        pairs = tuple(zip(past[0::2], past[1::2]))
        if self.cache_buffers:
            filled = attention_mask.shape[1] - input_ids.shape[1]
            pairs = tuple(KVBuffer(keys, values, filled) for keys, values in pairs)
        logits, presents = self.model(input_ids, pairs, attention_mask, position_ids, use_cache=True)
        return (logits, *(tensor for pair in presents for tensor in pair))


def export_graph(model: GPT, path: Path, opset: int, provider: str | None = "cpu") -> str:
    """Write the fp32 graph of `model` for `provider` to `path` (None: the portable layout, with
    growing pasts); return the exporter used ("dynamo" or "torchscript")."""
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > precisions.WEIGHTS_LIMIT
    try:
        _export_dynamo(model, path, opset, external, provider)
        return "dynamo"
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; the fallback is documented
        log.warning(
            "the dynamo exporter failed (%s: %s); falling back to the TorchScript exporter", type(err).__name__, err
        )
        for partial in precisions.files(path):
            partial.unlink()
    _export_torchscript(model, path, opset)
    return "torchscript"


def _example_inputs(model: GPT, capacity: int | None = None) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """Sizes >= 2 everywhere (so no dynamic dimension is specialised to 0 or 1), distinct from each
    other; values do not matter, and position 0 fits every context length. The cache tensors hold
    `capacity` positions (cache buffers) or just the past of 4."""
    config, device = model.config, model.device
    batch, seq, past = 2, 3, 4
    input_ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
    attention_mask = torch.ones(batch, past + seq, dtype=torch.long, device=device)
    position_ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
    shape = (batch, config.num_heads, capacity or past, config.head_size)
    cache = tuple(torch.zeros(shape, device=device) for _ in range(2 * config.num_layers))  # distinct: no aliasing
    return input_ids, attention_mask, position_ids, cache


def _export_dynamo(model: GPT, path: Path, opset: int, external: bool, provider: str | None) -> None:
    """The dynamo exporter, with attention and its cache as one contrib op per layer in the
    layout for `provider` (`export.attention`) and the other transformer fusions
    (`export.fusion`) applied before saving."""
    from torch.export import Dim

    # Imported here: onnxscript and its rewriter cost about a second to import, which loading an
    # export for inference should not pay; an onnxscript too old for them means the fallback.
    from export import attention, fusion

    batch, seq, total = Dim(signature.BATCH), Dim(signature.SEQUENCE), Dim(signature.TOTAL_SEQUENCE)
    config = model.config
    buffers = provider is not None and attention.uses_cache_buffers(config, provider)
    past = {0: batch} if buffers else {0: batch, 2: Dim(signature.PAST_SEQUENCE, min=0)}
    dynamic_shapes = (
        {0: batch, 1: seq},
        {0: batch, 1: total},  # its own dimension: past + seq cannot be one expression here
        {0: batch, 1: seq},
        tuple(past for _ in range(2 * config.num_layers)),
    )
    with _quiet_exporter(), attention.cached_attention_blocks(model, buffers):
        program = torch.onnx.export(
            _ExportWrapper(model, cache_buffers=buffers).eval(),
            _example_inputs(model, capacity=config.max_seq_len if buffers else None),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=signature.input_names(config.num_layers),
            output_names=signature.output_names(config.num_layers),
            opset_version=opset,
            custom_translation_table=attention.TRANSLATIONS,
            optimize=True,
            verbose=False,
        )
    log.info("fused %s", ", ".join(f"{count} {op}" for op, count in fusion.fuse(program.model).items()))
    program.save(str(path), external_data=external)


def _export_torchscript(model: GPT, path: Path, opset: int) -> None:
    """The fallback: plain attention, pasts that grow by concatenation. Above 2 GB it would write
    one external file per tensor, not `model.onnx.data`."""
    num_layers = model.config.num_layers
    axes = {
        signature.INPUT_IDS: {0: signature.BATCH, 1: signature.SEQUENCE},
        signature.ATTENTION_MASK: {0: signature.BATCH, 1: signature.TOTAL_SEQUENCE},
        signature.POSITION_IDS: {0: signature.BATCH, 1: signature.SEQUENCE},
        signature.LOGITS: {0: signature.BATCH, 1: signature.SEQUENCE},
        **{name: {0: signature.BATCH, 2: signature.PAST_SEQUENCE} for name in signature.past_names(num_layers)},
        **{name: {0: signature.BATCH, 2: signature.TOTAL_SEQUENCE} for name in signature.present_names(num_layers)},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice; the fallback is logged already
        torch.onnx.export(
            _ExportWrapper(model, cache_buffers=False).eval(),
            _example_inputs(model),  # the nested past tuple becomes one input per tensor
            str(path),
            dynamo=False,
            dynamic_axes=axes,
            input_names=signature.input_names(num_layers),
            output_names=signature.output_names(num_layers),
            opset_version=opset,
        )


def strip_metadata(path: Path) -> None:
    """Drop the exporter's debugging metadata (source stack traces with local paths, FX node dumps):
    it is most of a small graph's size and nothing a runtime reads. Weights stay where they are."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    for item in (graph, *graph.node, *graph.value_info, *graph.input, *graph.output):
        del item.metadata_props[:]
    onnx.save_model(model, str(path))


def check_graph(path: Path) -> None:
    """ONNX checker with `full_check`, then strict shape inference with type checks; raises `ExportError`."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes(
            onnx.load(str(path), load_external_data=False), check_type=True, strict_mode=True, data_prop=True
        )
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"{path.name} failed the ONNX checks: {err}") from err


def _write_metadata(model: GPT, folder: Path, buffers: bool, provider: str) -> None:
    """The model's configs (`gpt.hub`) and, with a tokenizer, its files and onnxruntime-genai's
    config (for a fast graph with or without cache buffers, on `provider`)."""
    if model.tokenizer is not None:
        model.tokenizer.save(folder / checkpoint.TOKENIZER_FILE)
        values = genai.genai_config(model.config, model.tokenizer, MODEL_FILE, buffers, provider)
        _write_json(folder / genai.GENAI_CONFIG_FILE, values)
    hub.write_configs(folder, model.config, model.tokenizer)


def _report(
    model: GPT,
    folder: Path,
    precision: str,
    provider: str,
    buffers: bool,
    opset: int,
    exporter: str,
    graphs: dict[str, CheckedGraph],
    notes: list[str],
    seconds: float,
) -> dict[str, Any]:
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    return {
        "precision": precision,
        "provider": provider,
        "cache_buffers": buffers,
        "opset": opset,
        "exporter": exporter,
        "export_seconds": round(seconds, 2),
        "model": {**model.config.to_dict(), "parameters": model.num_parameters()},
        "gpt2_compatible": gpt2_incompatibility(model.config) is None,
        "left_out": notes,
        "files": {f.relative_to(folder).as_posix(): f.stat().st_size for f in files},
        "signature": signature.describe(folder / MODEL_FILE),
        "parity": graphs[MODEL_FILE].parity.to_dict(),
        "graphs": {name: graph.to_dict() for name, graph in graphs.items()},
        "training": model.training_record,
        "versions": {
            "python": platform.python_version(),
            "simple-llm": _version("simple-llm"),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": _version("onnxscript"),
            "onnxruntime": ort.__version__,
        },
    }


def _version(package: str) -> str | None:
    """An installed distribution's version; None when it is not installed (e.g. simple-llm run from a clone)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """`gpt.atomic_folder(out)`, where an existing `out` is replaced only when it is empty or an
    earlier export (it has a report)."""
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / REPORT_FILE).is_file())):
        raise ExportError(f"{out} exists and is not an export folder: choose another output folder or remove it")
    with contextlib.ExitStack() as stack:
        try:
            stage = stack.enter_context(atomic_folder(out))
        except OSError as err:
            raise ExportError(f"cannot write the export folder {out}: {err}") from err
        yield stage


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the dynamo exporter's progress lines and its 'torchvision is not installed' warnings."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        registration.setLevel(level)
