"""How much memory training needs, estimated from the config before anything is allocated.

`estimate_training_memory` adds up what one `fit` step keeps alive at its peak: the fp32 weights
(and their average, `fit`'s `ema_decay`), their gradients, the optimizer's state (with its step's temporaries), what autograd saves for the
backward pass of one micro-batch, the logits with their cross-entropy copies, and the freed blocks
the memory allocator keeps. Each tensor is counted as torch 2.13 really keeps it (checked with
`saved_tensors_hooks` and the profiler's allocation log), so the sum is an upper-ish bound:
gradients only grow as activations are freed. Measured on a CPU (glibc), the peak RSS growth of
`fit` came within 0.85x-1.3x of it, for shapes where the weights, the activations or the logits
dominate (`tests/test_memory.py` checks that range on two).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

from gpt.config import GPTConfig, block_matrix_parameters, count_parameters
from gpt.optim import OPTIMIZERS

FP32, BF16, INT64 = 4, 2, 8  # bytes
MMAP_THRESHOLD = 32 * 1024**2
"""glibc's malloc serves blocks from this size up with mmap and returns them when freed; it keeps
smaller freed blocks for reuse, so peak RSS grows beyond the live tensors (tests/test_memory.py)."""
KEPT_FRACTION = 0.5
"""Share of the transient bytes in blocks under `MMAP_THRESHOLD` counted as kept by the allocator."""

LOWER_TO_SHRINK = {
    "weights": "a smaller model (fewer layers, a narrower width or a smaller vocabulary)",
    "gradients": "a smaller model (fewer layers, a narrower width or a smaller vocabulary)",
    "optimizer": "a smaller model, or optimizer 'muon' (one state per block matrix entry instead of AdamW's two)",
    "activations": "the batch size or the context length (or the number of layers)",
    "logits": "the batch size or the context length (or the vocabulary size)",
    "allocator": "the batch size or the context length",
}
"""What to lower to shrink each part of a `MemoryEstimate`, for messages to users."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training step needs at its peak, by part; `total` is their sum."""

    weights: int  # fp32 parameters, and their average (`WeightEMA`) when training keeps one
    gradients: int  # one fp32 gradient per parameter
    optimizer: int  # AdamW: 2 fp32 moments per parameter; Muon: 1 per block matrix entry; step temporaries
    activations: int  # what autograd saves for backward, for one micro-batch (bf16 weight copies included)
    logits: int  # [batch, context, vocab] log-probabilities, their gradient and the logits' gradient
    allocator: int  # freed blocks the memory allocator keeps for reuse

    @property
    def total(self) -> int:
        return sum(astuple(self))

    def largest(self) -> str:
        """Name of the largest part ("activations", "logits", ...); `LOWER_TO_SHRINK` says what shrinks it."""
        return max(fields(self), key=lambda f: getattr(self, f.name)).name

    def describe(self) -> str:
        """One line: "estimated peak memory 1.2 GiB (weights 45.0 MiB, gradients 45.0 MiB, ...)"."""
        parts = ", ".join(f"{f.name} {format_bytes(getattr(self, f.name))}" for f in fields(self))
        return f"estimated peak memory {format_bytes(self.total)} ({parts})"


def estimate_training_memory(
    config: GPTConfig,
    batch_size: int,
    *,
    optimizer: str = "muon",
    precision: str = "fp32",
    grad_accum_steps: int = 1,
    device: str = "cpu",
    weight_average: bool = True,
) -> MemoryEstimate:
    """Peak memory of training a `GPT(config)` with `fit` on windows of `config.max_seq_len` tokens.

    `batch_size` is the number of windows of one optimizer step, as `--batch-size`; with
    `grad_accum_steps` each forward pass takes `ceil(batch_size / grad_accum_steps)` of them (for
    `fit`, pass the loader's batch size times `grad_accum_steps`). `precision` is "fp32", "bf16"
    (autocast) or "auto" (the larger of the two). `device` matters with dropout: on "cpu" (and any
    device but "cuda"), torch runs attention through its math kernel, which keeps
    `[batch, heads, context, context]` scores; CUDA's fused kernels keep O(context) per head.
    `weight_average`: `fit` keeps an average of the weights (its default `ema_decay`), one more fp32
    copy of them.
    """
    _check_positive("batch_size", batch_size)
    _check_positive("grad_accum_steps", grad_accum_steps)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if precision == "auto":
        options = dict(optimizer=optimizer, grad_accum_steps=grad_accum_steps, device=device)
        options["weight_average"] = weight_average
        both = [estimate_training_memory(config, batch_size, precision=p, **options) for p in ("fp32", "bf16")]
        return max(both, key=lambda estimate: estimate.total)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', got {precision!r}")
    tokens = -(-batch_size // grad_accum_steps) * config.max_seq_len  # one micro-batch
    saved = _saved_tensors(config, tokens, precision == "bf16", device.startswith("cuda"))
    logits = [(3, FP32 * tokens * config.vocab_size)]
    transient = saved + logits
    kept = sum(count * size for count, size in transient if size < MMAP_THRESHOLD)
    return MemoryEstimate(
        weights=FP32 * count_parameters(config) * (2 if weight_average else 1),
        gradients=FP32 * count_parameters(config),
        optimizer=_optimizer_bytes(config, optimizer),
        activations=_total(saved),
        logits=_total(logits),
        allocator=int(KEPT_FRACTION * kept),
    )


EVAL_FIXED = 160 * 1024**2
"""What scoring a text costs beyond its tokens and logits: the forward pass's kernels and workspace."""
EVAL_PER_TOKEN = 400
"""Bytes a scored token costs: the tokenizer's encoding of the text, its ids, its loss and the
lists handed to the app (2 M one-byte tokens grew the peak RSS by 0.7 GB on a CPU)."""
EVAL_LOGITS_COPIES = 4
"""The logits of a batch of windows are alive about this often at once: the head's output, its
log-softmax inside the cross-entropy, the per-token losses' workspace (measured 3.3-3.8x)."""


def estimate_evaluation_memory(config: GPTConfig, text_bytes: int, batch_size: int, *, weights: bool = False) -> int:
    """Peak bytes of scoring `text_bytes` of UTF-8 with `gpt.token_losses` in batches of
    `batch_size` windows of `config.max_seq_len` tokens (add the weights with `weights=True` when the
    model is loaded for it). A byte-level BPE gives at most one token a byte, so the text's size
    bounds its tokens before it is encoded."""
    _check_positive("batch_size", batch_size)
    tokens = text_bytes + 1
    window = min(config.max_seq_len, tokens)
    logits = EVAL_LOGITS_COPIES * FP32 * batch_size * window * config.vocab_size
    E, A, H = config.emb_size, config.attn_size, config.mlp_ratio * config.emb_size
    activations = FP32 * batch_size * window * (4 * E + 3 * A + 2 * H)  # one layer's, freed as the next runs
    model = FP32 * count_parameters(config) if weights else 0
    return EVAL_FIXED + EVAL_PER_TOKEN * tokens + logits + activations + model


def evaluation_batch_size(
    config: GPTConfig, text_bytes: int, budget: int, largest: int = 8, *, weights: bool = False
) -> int:
    """The largest batch of windows (at most `largest`, at least 1) whose evaluation fits `budget` bytes."""
    for batch in range(largest, 1, -1):
        if estimate_evaluation_memory(config, text_bytes, batch, weights=weights) <= budget:
            return batch
    return 1


def _optimizer_bytes(config: GPTConfig, optimizer: str) -> int:
    """State and step temporaries (see `gpt.optim`).

    AdamW keeps two fp32 moments a parameter and its foreach step makes one fp32 temporary per
    parameter (the square root of the second moment). Muon keeps one momentum per block matrix
    entry, and orthogonalises one matrix at a time through fp32 and bf16 copies of it.
    """
    parameters = count_parameters(config)
    adamw = parameters if optimizer == "adamw" else parameters - block_matrix_parameters(config)
    muon = parameters - adamw
    E, A, H = config.emb_size, config.attn_size, config.mlp_ratio * config.emb_size
    largest_matrix = max(E * 3 * A, E * H) if muon else 0
    return 3 * FP32 * adamw + FP32 * muon + 3 * FP32 * largest_matrix


def _saved_tensors(config: GPTConfig, tokens: int, bf16: bool, cuda: bool) -> list[tuple[int, int]]:
    """`(count, bytes)` of the tensors autograd saves in one forward pass of `tokens` tokens, the
    logits' log-probabilities excepted.

    Each layer saves the residual-stream inputs of its two layer norms and their outputs, the fused
    QKV and the attention output, the MLP's hidden layer before and after GELU, the layer norms'
    statistics and attention's logsumexp. Under bf16 autocast the matrix products save bf16 copies
    of their inputs (and a second one of the attention output), and of every weight matrix.
    """
    N, L, E, A = tokens, config.num_layers, config.emb_size, config.attn_size
    H, heads, T = config.mlp_ratio * E, config.num_heads, config.max_seq_len
    act = BF16 if bf16 else FP32  # what the matrix products save
    per_layer = [
        (2, FP32 * N * E),  # residual stream into ln_1 and ln_2
        (2, act * N * E),  # ln_1 and ln_2 outputs
        (1, act * N * 3 * A),  # fused QKV
        (2 if bf16 else 1, act * N * A),  # attention output
        (2, act * N * H),  # MLP hidden, before and after GELU
        (4, FP32 * N),  # layer-norm mean and rstd
        (1, FP32 * N * heads),  # attention logsumexp
    ]
    final = [(2, FP32 * N * E), (2, FP32 * N), (2, INT64 * N)]  # ln_f input and output, its stats; ids, targets
    if config.dropout > 0 and cuda:  # fused kernels: a byte of mask per dropped element
        per_layer.append((2, N * E))
        final.append((1, N * E))
    elif config.dropout > 0:  # an fp32 mask per dropout; math attention keeps 3 x [batch, heads, T, T]
        per_layer += [(2, FP32 * N * E), (3, FP32 * N * heads * T)]
        final.append((1, FP32 * N * E))
    saved = [(L * count, size) for count, size in per_layer] + final
    if bf16:  # autocast's bf16 copies of the block matrices and the LM head
        saved += [(L, BF16 * E * 3 * A), (L, BF16 * A * E), (2 * L, BF16 * E * H), (1, BF16 * config.vocab_size * E)]
    return saved


def _total(tensors: list[tuple[int, int]]) -> int:
    return sum(count * size for count, size in tensors)


def format_bytes(size: float) -> str:
    """`1536` -> "1.5 KiB"; binary units up to TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.2f} TiB"


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
