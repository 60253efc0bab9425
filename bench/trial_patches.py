"""Architecture changes measured in `bench/ablate.py` before any is built into `gpt/`.

Each patch rewrites a freshly built `GPT` in place for training and validation only (whole windows,
no key/value cache: `fit` and `evaluate`); a model so patched cannot decode, save or export. The
ones that pay become `GPTConfig` options with export support; the others stay measurements.

- "rmsnorm": every LayerNorm becomes an RMSNorm (a learned scale, no mean, no bias).
- "rotary": rotary position embeddings on each head's queries and keys (base 10,000, over the
  whole head), instead of the learned position table (zeroed and frozen). It paid, and is now
  `GPTConfig(rotary=True)` (the same rotation; without the table, the initial weights' random draws
  differ); the patch stays so that its logged runs can be repeated.
- "sinusoidal positions": the learned position table starts as the Transformer's sine and cosine
  table (base 10,000) at the token table's scale (RMS 0.02), and trains; "(frozen)" keeps it so;
  "x5" starts it at RMS 0.1, so that it is not the small random start AdamW's first steps replace.
  The layout stays GPT-2's: a checkpoint so trained still loads in `GPT2LMHeadModel`.
- "token table std 0.06": the (tied) token table starts at 3x GPT-2's 0.02, so that AdamW's
  first steps of about the learning rate change it less in proportion, and the first logits are
  3x larger. The layout stays GPT-2's.
- "muon on q, k, v apart": each block's fused query-key-value matrix becomes three matrices (the
  same initial values, split), so that Muon orthogonalises the queries', keys' and values' updates
  each on its own, as modded-nanogpt does, instead of the three together. It paid, and is now
  `fit`'s default (`muon_qkv_apart=True`: the model keeps its fused matrix, the optimizer sees the
  three blocks); the patch stays so that its logged runs can be repeated (with
  `muon_qkv_apart=False`, as `bench/ablate.py` runs it).
- "cooldown 30%" / "cooldown 50%": not the model but its schedule. The learning rate warms up as
  `fit`'s does, stays at its peak, then falls linearly to 0 over the last 30% (50%) of the steps
  (warmup-stable-decay, as modded-nanogpt trains) instead of the cosine to 0.1x.
- "value embeddings": each block adds a token embedding table of its own (vocab x attention width,
  std 0.02) to its attention values, as modded-nanogpt does; AdamW trains the tables.
- "orthogonal init": the blocks' matrices start (semi-)orthogonal at GPT-2's RMS.

The seventh round's optimizer trials change `fit`'s optimizer as training begins (a callback), on
today's defaults: "embeddings without decay" (AdamW's only decayed weights are the token and position
tables), "muon wd 0" / "muon wd 0.2", "position table lr x3" / "x10" / "x30" (a group of its own),
"muon momentum warmup" (0.85 to 0.95 over 300 steps), "muon without nesterov", and the parts Muon
orthogonalises (`muon_blocks`): "muon q k v per head", "muon per head" (the output projection by
head too), "muon mlp in square blocks". None paid (docs/decisions.md, seventh round).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt import GPT, Callback
from gpt.model import Conv1D
from gpt.optim import FusedBlocks, MultiOptimizer


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


def sinusoidal_positions(model: GPT, frozen: bool = False, rms: float = 0.02) -> None:
    table = model.transformer.wpe.weight
    positions, width = table.shape
    inverse = 1.0 / 10000 ** (torch.arange(0, width, 2, dtype=torch.float32) / width)
    angles = torch.outer(torch.arange(positions, dtype=torch.float32), inverse)
    sines = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # RMS sqrt(1/2)
    with torch.no_grad():
        table.copy_(sines * (rms * 2**0.5))
    table.requires_grad_(not frozen)


def token_table_std(model: GPT, std: float) -> None:
    nn.init.normal_(model.transformer.wte.weight, std=std)


class _ApartQKV(nn.Module):
    def __init__(self, fused: nn.Module) -> None:
        super().__init__()
        parts = fused.weight.detach().chunk(3, dim=1)  # Conv1D: [in, 3 x out]
        biases = fused.bias.detach().chunk(3) if fused.bias is not None else [None] * 3
        self.q, self.k, self.v = (
            Conv1D(part.shape[0], part.shape[1], bias=b is not None) for part, b in zip(parts, biases)
        )
        for layer, part, bias in zip((self.q, self.k, self.v), parts, biases):
            layer.weight.data.copy_(part)
            if bias is not None:
                layer.bias.data.copy_(bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.q(x), self.k(x), self.v(x)), dim=-1)


def qkv_apart(model: GPT) -> None:
    for block in model.transformer.h:
        block.attn.c_attn = _ApartQKV(block.attn.c_attn)


def cooldown(model: GPT, fraction: float) -> None:
    """`model.fit` trains with a warmup-stable-decay schedule whose decay takes the last `fraction`."""

    def stable_then_linear(trainer) -> None:
        cosine = trainer.schedule
        decay_from = round(cosine.total_steps * (1 - fraction))

        def schedule(step: int) -> float:
            if step < cosine.warmup_steps:
                return cosine(step)
            left = (cosine.total_steps - step) / (cosine.total_steps - decay_from)
            return cosine.peak_lr * min(1.0, left)

        trainer.schedule = schedule

    _at_train_begin(model, stable_then_linear)


def adamw_weight_decay(model: GPT, decay: float) -> None:
    """AdamW's 2-D parameters (the token and position tables; Muon has the blocks' matrices) decay
    by `decay` instead of `fit`'s `weight_decay`."""

    def change(trainer) -> None:
        for group in _adamw(trainer).param_groups:
            if group["weight_decay"]:
                group["weight_decay"] = decay

    _at_train_begin(model, change)


def muon_weight_decay(model: GPT, decay: float) -> None:
    """Muon's matrices decay by `decay` instead of `fit`'s `weight_decay` (AdamW's keep it)."""

    def change(trainer) -> None:
        for group in _muon(trainer).param_groups:
            group["weight_decay"] = decay

    _at_train_begin(model, change)


def position_table_lr(model: GPT, scale: float) -> None:
    """The position table learns at `scale` x the schedule's learning rate, in an AdamW group of its own."""
    table = model.transformer.wpe.weight

    def change(trainer) -> None:
        adamw = _adamw(trainer)
        for group in adamw.param_groups:
            kept = [p for p in group["params"] if p is not table]
            if len(kept) < len(group["params"]):
                group["params"] = kept
                adamw.add_param_group({**group, "params": [table], "lr_scale": scale * group.get("lr_scale", 1.0)})
                return
        raise AssertionError("the position table is not AdamW's")

    _at_train_begin(model, change)


def muon_momentum_warmup(model: GPT, start: float = 0.85, steps: int = 300) -> None:
    """Muon's momentum rises linearly from `start` to `fit`'s over the first `steps` steps, as
    modded-nanogpt's does."""

    def change(trainer) -> None:
        groups = _muon(trainer).param_groups
        end = groups[0]["momentum"]
        schedule = trainer.schedule

        def with_momentum(step: int) -> float:
            for group in groups:
                group["momentum"] = start + (end - start) * min(1.0, step / steps)
            return schedule(step)

        trainer.schedule = with_momentum

    _at_train_begin(model, change)


def muon_blocks(model: GPT, qkv_per_head: bool, proj_per_head: bool, mlp_square: bool) -> None:
    """Muon orthogonalises each block's matrices in parts (`gpt.optim.FusedBlocks`; the model is
    unchanged): the query-key-value matrix in q, k and v (`fit`'s default), or each head's q, k and v
    apart (`qkv_per_head`); the attention's output projection whole, or by the head its rows read
    (`proj_per_head`); each MLP matrix whole, or in square parts (`mlp_square`: 4 of 128 x 128)."""
    heads = model.config.num_heads

    def change(trainer) -> None:
        fused = []
        for block in model.transformer.h:
            mlp_parts = block.mlp.c_fc.weight.shape[1] // block.mlp.c_fc.weight.shape[0] if mlp_square else 1
            for matrix, count, dim in (
                (block.attn.c_attn.weight, 3 * heads if qkv_per_head else 3, 1),  # Conv1D weights: [in, out]
                (block.attn.c_proj.weight, heads if proj_per_head else 1, 0),
                (block.mlp.c_fc.weight, mlp_parts, 1),
                (block.mlp.c_proj.weight, mlp_parts, 0),
            ):
                fused.append(FusedBlocks(matrix, count, dim))
        settings = {k: v for k, v in _muon(trainer).param_groups[0].items() if k != "params"}
        muon = torch.optim.Muon([b for f in fused for b in f.blocks])
        muon.param_groups[0].update(settings)
        trainer.optimizer = MultiOptimizer(muon, _adamw(trainer), fused=fused)

    _at_train_begin(model, change)


def orthogonal_init(model: GPT) -> None:
    """The blocks' matrices start orthogonal (semi-orthogonal when not square), at the RMS of GPT-2's
    normal start (0.02, and 0.02 / sqrt(2 x layers) for the residual projections), as Muon's
    updates are."""
    with torch.no_grad():
        for matrix in (p for p in model.transformer.h.parameters() if p.dim() == 2):
            rms = matrix.square().mean().sqrt()
            nn.init.orthogonal_(matrix)
            matrix.mul_(rms / matrix.square().mean().sqrt())


def muon_nesterov(model: GPT, nesterov: bool) -> None:
    """Muon's momentum with (`fit`'s) or without Nesterov's look-ahead."""

    def change(trainer) -> None:
        for group in _muon(trainer).param_groups:
            group["nesterov"] = nesterov

    _at_train_begin(model, change)


def _muon(trainer) -> torch.optim.Optimizer:
    return trainer.optimizer.optimizers[0]


def _adamw(trainer) -> torch.optim.Optimizer:
    return trainer.optimizer.optimizers[1]


def _at_train_begin(model: GPT, change: Callable[[object], None]) -> None:
    """`model.fit` calls `change(trainer)` as training begins (a callback's `on_train_begin`)."""
    fit = model.fit

    class Change(Callback):
        def on_train_begin(self, trainer) -> None:
            change(trainer)

    def patched(*args, callbacks=(), **kwargs):
        return fit(*args, callbacks=[*callbacks, Change()], **kwargs)

    model.fit = patched


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
    "sinusoidal positions": sinusoidal_positions,
    "sinusoidal positions (frozen)": lambda model: sinusoidal_positions(model, frozen=True),
    "sinusoidal positions x5": lambda model: sinusoidal_positions(model, rms=0.1),
    "sinusoidal positions x5 (frozen)": lambda model: sinusoidal_positions(model, frozen=True, rms=0.1),
    "token table std 0.06": lambda model: token_table_std(model, 0.06),
    "muon on q, k, v apart": qkv_apart,
    "cooldown 30%": lambda model: cooldown(model, 0.3),
    "cooldown 50%": lambda model: cooldown(model, 0.5),
    "embeddings without decay": lambda model: adamw_weight_decay(model, 0.0),
    "muon wd 0": lambda model: muon_weight_decay(model, 0.0),
    "muon wd 0.2": lambda model: muon_weight_decay(model, 0.2),
    "position table lr x3": lambda model: position_table_lr(model, 3.0),
    "position table lr x10": lambda model: position_table_lr(model, 10.0),
    "position table lr x30": lambda model: position_table_lr(model, 30.0),
    "muon momentum warmup": muon_momentum_warmup,
    "muon q k v per head": lambda model: muon_blocks(model, True, False, False),
    "muon per head": lambda model: muon_blocks(model, True, True, False),
    "muon mlp in square blocks": lambda model: muon_blocks(model, False, False, True),
    "orthogonal init": orthogonal_init,
    "muon without nesterov": lambda model: muon_nesterov(model, False),
}
