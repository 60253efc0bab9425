"""`OnnxGPT`: an exported model run by onnxruntime behind the same generation API as `gpt.GPT`.

Sampling, penalties, stop tokens, streaming and the context window all come from
`gpt.generation.GenerationMixin`; this module only runs one forward pass per step.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from export import signature
from gpt import checkpoint
from gpt.config import GPTConfig
from gpt.generation import DEFAULT_DECODE_THREADS, GenerationMixin
from gpt.tokenizer import Tokenizer

MODEL_FILE = "model_fast.onnx"
"""The fast graph of an export folder, which `OnnxGPT.load` and onnxruntime-genai run. Not named
`model.onnx`: optimum takes any file of that name, and it is built for our runtime only."""
LEGACY_MODEL_FILE = "model.onnx"  # the fast graph's name in exports before the portable graphs
PORTABLE_DIR = "onnx"
PORTABLE_FILE = "onnx/model.onnx"
"""The portable graph (fp32, growing pasts, optimum's names): what optimum and transformers.js load."""
PORTABLE_VARIANTS = {"int8": "model_quantized.onnx", "fp16": "model_fp16.onnx"}
"""Portable graphs in other precisions, under `PORTABLE_DIR`, named as transformers.js looks for them."""
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
DEFAULT_THREADS = DEFAULT_DECODE_THREADS
"""Intra-op threads when none are given. Batch-1 decode is a chain of small operators, so a
thread pool mostly waits (`gpt.DEFAULT_DECODE_THREADS`, docs/decisions.md). Benchmark `threads` for large models or batches."""

PastValue = np.ndarray | ort.OrtValue
"""One past/present tensor: a numpy array on the CPU, an `OrtValue` left on the device on CUDA."""


class ProviderError(RuntimeError):
    """The requested onnxruntime execution provider cannot run on this machine."""


def session_options(threads: int | None = None, optimization: str = "all") -> ort.SessionOptions:
    """Session settings: `threads` intra-op threads (default `DEFAULT_THREADS`), graph optimisation level."""
    threads = DEFAULT_THREADS if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    return options


def create_session(
    path: str | Path, provider: str = "cpu", options: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    """An InferenceSession on `provider` ("cpu" or "cuda"); raises `ProviderError` unless that provider really runs."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    wanted = PROVIDERS[provider]
    notes = ""
    if provider == "cuda":
        if wanted not in ort.get_available_providers():
            raise ProviderError(
                f"provider 'cuda' needs an onnxruntime build with {wanted}; this one has "
                f"{', '.join(ort.get_available_providers())} (install onnxruntime-gpu, or use provider='cpu')"
            )
        notes = _preload_cuda_libraries()
    providers = list(dict.fromkeys([wanted, PROVIDERS["cpu"]]))  # CPU runs whatever CUDA cannot
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    active = session.get_providers()[0]
    if active != wanted:  # onnxruntime-gpu lists CUDA even without a GPU, then silently falls back to CPU
        raise ProviderError(
            f"provider 'cuda' was requested but onnxruntime could not start {wanted} and fell back to {active}: "
            "it needs an NVIDIA GPU with CUDA 13 and cuDNN 9 (see the onnxruntime log above"
            + (f"; {notes}" if notes else "")
            + "). Use provider='cpu' on this machine."
        )
    return session


def provider_available(provider: str) -> tuple[bool, str]:
    """Whether `provider` ("cpu" or "cuda") really runs a graph here, and why not (else "").

    Starts a session on a one-node graph: onnxruntime-gpu lists CUDA even where it then falls
    back to the CPU, so only a real session tells. Takes a second or two; cache the answer.
    """
    import onnx
    from onnx import helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [value("x", onnx.TensorProto.FLOAT, [1])],
        [value("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.onnx"
        onnx.save(model, str(path))
        try:
            create_session(path, provider)
        except ValueError:
            raise
        except Exception as err:  # ProviderError, or any failure to start the provider
            return False, str(err).strip() or type(err).__name__
    return True, ""


def _preload_cuda_libraries() -> str:
    """Load CUDA/cuDNN from the nvidia pip wheels when present; return what it reported (it prints)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ort.preload_dlls()
    return " ".join(printed.getvalue().split())


class OnnxGPT(GenerationMixin):
    """An exported GPT run by onnxruntime: `generate`, `generate_stream`, `generate_text` and
    `stream_text` behave exactly as on `gpt.GPT` (same loop, same sampling).

    The decoding loop's tensors live on the CPU. The cache is a `CacheBuffers` for graphs with
    cache buffers (onnxruntime writes each step into it in place, through IOBinding), otherwise a
    list of presents; on CUDA it stays on the GPU between steps and only the logits come back.
    """

    device = torch.device("cpu")

    def __init__(self, session: ort.InferenceSession, config: GPTConfig, tokenizer: Tokenizer | None = None) -> None:
        self.session = session
        self.config = config
        self.tokenizer = tokenizer
        self.max_seq_len = config.max_seq_len
        self._past_names = signature.past_names(config.num_layers)
        self._output_names = signature.output_names(config.num_layers)
        inputs = {value.name: value for value in session.get_inputs()}
        missing = [name for name in signature.input_names(config.num_layers) if name not in inputs]
        if missing:
            raise ValueError(
                f"the ONNX model lacks inputs {missing}: was it exported by export.to_onnx for this config?"
            )
        past = inputs[self._past_names[0]]
        self.past_dtype = np.dtype(_NUMPY_TYPES[past.type])
        self.cache_capacity: int | None = past.shape[2] if isinstance(past.shape[2], int) else None
        """Positions of the graph's cache buffers (see `CacheBuffers`); None for a graph whose
        pasts grow by concatenation (see `export.attention`)."""
        self._on_cuda = self.provider == PROVIDERS["cuda"]
        self._empty_pasts: dict[int, list[np.ndarray]] = {}

    @classmethod
    def load(
        cls,
        path: str | Path,
        provider: str = "cpu",
        threads: int | None = None,
        optimization: str = "all",
        graph: str | None = None,
    ) -> OnnxGPT:
        """Load an export folder written by `export.to_onnx` (its graph, `config.json` and
        `tokenizer.json` when it has one). `graph` is the graph's path inside the folder: by default
        the fast graph `MODEL_FILE` (or `model.onnx` in older exports), e.g. "onnx/model.onnx"."""
        folder = Path(path)
        config = checkpoint.read_config(folder)
        if graph is None and not (folder / MODEL_FILE).is_file() and (folder / LEGACY_MODEL_FILE).is_file():
            graph = LEGACY_MODEL_FILE
        model_file = folder / (graph or MODEL_FILE)
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file}: missing from the export folder (run `python -m export` first)")
        session = create_session(model_file, provider, session_options(threads, optimization))
        return cls(session, config, checkpoint.read_tokenizer(folder))

    @property
    def provider(self) -> str:
        """The execution provider that really runs the model, e.g. "CPUExecutionProvider"."""
        return self.session.get_providers()[0]

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: CacheBuffers | Sequence[PastValue] | None = None,
    ) -> tuple[np.ndarray, CacheBuffers | list[PastValue]]:
        """One forward pass on int64 arrays: logits `[batch, seq, vocab]` (float32) and the cache,
        which is the next call's `past`; `past=None` starts from an empty cache. With cache
        buffers the cache is a `CacheBuffers` updated in place, otherwise a list of presents; the
        logits of a one-token step are then the cache's `step_logits`, which its next one-token
        step overwrites (copy them to keep them)."""
        feeds = {
            signature.INPUT_IDS: input_ids,
            signature.ATTENTION_MASK: attention_mask,
            signature.POSITION_IDS: position_ids,
        }
        if self.cache_capacity is not None:
            return self._run_in_place(feeds, past or self.new_cache(input_ids.shape[0]))
        if past is None:
            past = self._empty_past(input_ids.shape[0])
        if self._on_cuda:
            return self._run_bound(feeds, past)
        feeds.update(zip(self._past_names, past))
        logits, *presents = self.session.run(self._output_names, feeds)
        return logits, presents

    def window_logits(self, input_ids: Tensor) -> Tensor:
        """Every position's logits `[batch, seq, vocab]` of unpadded rows, from an empty cache
        (`gpt.evaluation`), as on `gpt.GPT`."""
        ids = input_ids.numpy()
        positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)
        logits, _ = self.run(ids, np.ones_like(ids), positions)
        return torch.from_numpy(np.array(logits))  # a copy: one-token logits live in the cache's buffer

    def new_cache(self, batch: int) -> CacheBuffers:
        """Empty cache buffers for `batch` rows, on the session's device, bound to this session."""
        config = self.config
        shape = (batch, config.num_heads, self.cache_capacity, config.head_size)
        device = "cuda" if self._on_cuda else "cpu"
        return CacheBuffers(self.session, config.num_layers, shape, self.past_dtype, device, config.vocab_size)

    def _run_in_place(self, feeds: dict[str, np.ndarray], cache: CacheBuffers) -> tuple[np.ndarray, CacheBuffers]:
        binding = cache.binding
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        batch, seq = feeds[signature.INPUT_IDS].shape
        if seq == 1:
            logits, output = cache.step_logits, cache.step_logits_value
        else:  # a prefill: logits of its own, written by onnxruntime
            logits = np.empty((batch, seq, self.config.vocab_size), np.float32)
            output = ort.OrtValue.ortvalue_from_numpy(logits)
        binding.bind_ortvalue_output(signature.LOGITS, output)
        self.session.run_with_iobinding(binding)
        cache.length = feeds[signature.ATTENTION_MASK].shape[1]
        return logits, cache

    def decode_step(
        self,
        input_ids: Tensor,
        past: CacheBuffers | list[PastValue] | None,
        attention_mask: Tensor,
        position_ids: Tensor,
    ) -> tuple[Tensor, CacheBuffers | list[PastValue]]:
        """The shared loop's step: last-position logits `[batch, vocab]` (a zero-copy view) and the cache."""
        logits, presents = self.run(input_ids.numpy(), attention_mask.numpy(), position_ids.numpy(), past)
        return torch.from_numpy(logits[:, -1, :]), presents

    def _empty_past(self, batch: int) -> list[np.ndarray]:
        """Zero-length pasts `[batch, heads, 0, head_size]` for the first step, built once per batch size."""
        if batch not in self._empty_pasts:
            empty = np.empty((batch, self.config.num_heads, 0, self.config.head_size), dtype=self.past_dtype)
            self._empty_pasts[batch] = [empty] * len(self._past_names)
        return self._empty_pasts[batch]

    def _run_bound(self, feeds: dict[str, np.ndarray], past: Sequence[PastValue]) -> tuple[np.ndarray, list[Any]]:
        """CUDA: small inputs are copied up, the cache stays on the GPU, only the logits come down."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(self._past_names, past):
            if isinstance(value, np.ndarray):  # the empty first-step cache
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output(signature.LOGITS, "cpu")
        for name in self._output_names[1:]:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        logits, *presents = binding.get_outputs()
        return logits.numpy(), presents


class CacheBuffers:
    """The key/value cache of a graph with cache buffers (`export.attention`): one buffer per past
    input, `[batch, heads, capacity, head_size]`, bound (IOBinding) as both that past input and its
    present output, so onnxruntime writes each step's entries in place. The first `length`
    positions are filled; iterating gives them, one numpy array per past input, in input order.

    One-token steps write their logits into `step_logits` `[batch, 1, vocab]`, the same array every
    step: a new output array for each run costs a noticeable part of a batch-1 decode step at small
    shapes (measured in docs/decisions.md)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        num_layers: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        device: str,
        vocab_size: int,
    ) -> None:
        # zeros: no stale NaN anywhere; on the CPU each OrtValue shares (and keeps alive) its array
        self.buffers = [
            ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype), device, 0) for _ in range(2 * num_layers)
        ]
        self.binding = session.io_binding()  # the logits are bound by each run
        for past, present, buffer in zip(
            signature.past_names(num_layers), signature.present_names(num_layers), self.buffers
        ):
            self.binding.bind_ortvalue_input(past, buffer)
            self.binding.bind_ortvalue_output(present, buffer)
        self.length = 0
        self.step_logits = np.zeros((shape[0], 1, vocab_size), np.float32)
        self.step_logits_value = ort.OrtValue.ortvalue_from_numpy(self.step_logits)  # shares the array

    def __iter__(self) -> Iterator[np.ndarray]:
        for buffer in self.buffers:
            yield buffer.numpy()[:, :, : self.length]

    def __len__(self) -> int:
        return len(self.buffers)


def to_numpy(value: PastValue) -> np.ndarray:
    """A past/present tensor as a host array (copied down from the GPU when needed)."""
    return value if isinstance(value, np.ndarray) else value.numpy()


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
