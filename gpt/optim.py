"""The optimizer `fit` trains with.

- "muon" (the default): `torch.optim.Muon` for the weight matrices inside the transformer blocks,
  AdamW for everything else (the embeddings and the tied LM head, biases, layer norms), the split
  Muon's authors recommend. Muon's learning rate is scaled to match AdamW's update size
  (`adjust_lr_fn="match_rms_adamw"`), so one schedule drives both (`fit` runs Muon at 3x the
  schedule's learning rate by default, `muon_lr_scale`). It reaches a
  clearly lower loss than AdamW in the same budget, though its Newton-Schulz iterations make a step
  slower (both measured in docs/decisions.md).
- "adamw": AdamW everywhere, as simple-llm trained before Muon became the default.

Muon orthogonalises the queries', keys' and values' weights each on its own (`qkv_apart`, the
default), though the model holds them side by side in one matrix (GPT-2's `c_attn`): one update for
the fused matrix would make the three share one set of directions. modded-nanogpt does the same;
in nanoGPT's budget it reached 0.007 nats/byte lower on six seeds (docs/decisions.md, sixth round).

AdamW decays 2-D weights only; `model.parameters()` yields a tied embedding once. With
`embedding_lr_scale` other than 1, the token and position embeddings (and an untied LM head) get a
parameter group of their own whose `"lr_scale"` multiplies the schedule's learning rate (`fit`
reads it); `muon_lr_scale` does the same for Muon's matrices, and `muon_momentum` is Muon's momentum.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

OPTIMIZERS = ("muon", "adamw")
ADAMW_BETAS = {"muon": (0.8, 0.99), "adamw": (0.9, 0.99)}
"""AdamW's moment decay rates by default, by optimizer: beside Muon, AdamW trains the embeddings,
biases and norms, and beta1 0.8 (modded-nanogpt's) reached 0.005 nats/byte lower than 0.9 in
nanoGPT's budget on six seeds (docs/decisions.md, seventh round); AdamW everywhere keeps 0.9."""


def muon_available() -> bool:
    return hasattr(torch.optim, "Muon")  # torch >= 2.9


def make_optimizer(
    model: nn.Module,
    name: str,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float] | None,
    device: torch.device,
    muon_momentum: float = 0.95,
    embedding_lr_scale: float = 1.0,
    muon_lr_scale: float = 1.0,
    qkv_apart: bool = True,
) -> Optimizer | MultiOptimizer:
    """Optimizer `name` (one of `OPTIMIZERS`) over the trainable parameters of `model` (a `GPT`).

    With "muon", Muon takes the 2-D weights inside `model.transformer.h` (the blocks), AdamW the rest;
    with `qkv_apart`, each block's query-key-value matrix as three (`FusedBlocks`). AdamW's `betas`
    are `ADAMW_BETAS[name]` when None.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    betas = ADAMW_BETAS[name] if betas is None else betas
    params = [p for p in model.parameters() if p.requires_grad]
    embeddings = set()
    if embedding_lr_scale != 1.0:
        tables = [
            model.transformer.wte,
            model.lm_head,
            *([model.transformer.wpe] if "wpe" in model.transformer else []),
        ]
        embeddings = {id(table.weight) for table in tables}
    if name == "adamw":
        return _adamw(params, learning_rate, weight_decay, betas, device, embeddings, embedding_lr_scale)
    in_blocks = {id(p) for p in model.transformer.h.parameters() if p.dim() == 2}
    qkv = [block.attn.c_attn.weight for block in model.transformer.h] if qkv_apart else []
    fused = [FusedBlocks(weight, 3) for weight in qkv if weight.requires_grad]
    apart = {id(f.fused): f.blocks for f in fused}
    muon = torch.optim.Muon(
        [q for p in params if id(p) in in_blocks for q in apart.get(id(p), [p])],
        lr=learning_rate,
        weight_decay=weight_decay,
        momentum=muon_momentum,
        adjust_lr_fn="match_rms_adamw",
    )
    if muon_lr_scale != 1.0:
        muon.param_groups[0]["lr_scale"] = muon_lr_scale
    rest = [p for p in params if id(p) not in in_blocks]
    adamw = _adamw(rest, learning_rate, weight_decay, betas, device, embeddings, embedding_lr_scale)
    return MultiOptimizer(muon, adamw, fused=fused)


def _adamw(
    params: list[Tensor],
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    device: torch.device,
    embeddings: set[int] = frozenset(),
    embedding_lr_scale: float = 1.0,
) -> torch.optim.AdamW:
    groups = [
        {"params": [p for p in params if p.dim() >= 2 and id(p) not in embeddings], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if embeddings:
        tables = [p for p in params if id(p) in embeddings]
        groups.append({"params": tables, "weight_decay": weight_decay, "lr_scale": embedding_lr_scale})
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **fast)


class FusedBlocks:
    """A matrix that fuses `count` blocks side by side along `dim` (`[in, count x out]` by default, as
    GPT-2's `c_attn`), seen by an optimizer as one parameter a block: `blocks` share the matrix's
    memory, so the optimizer's in-place updates are the matrix's, and `pass_grads` hands each block
    its part of the matrix's gradient before a step."""

    def __init__(self, fused: nn.Parameter, count: int, dim: int = 1) -> None:
        self.fused = fused
        self.dim = dim
        self.blocks = [nn.Parameter(part) for part in fused.detach().chunk(count, dim=dim)]

    def pass_grads(self) -> None:
        grad = self.fused.grad
        parts = grad.chunk(len(self.blocks), dim=self.dim) if grad is not None else [None] * len(self.blocks)
        for block, part in zip(self.blocks, parts):
            block.grad = part

    def zero_grad(self, set_to_none: bool = True) -> None:
        if set_to_none:
            self.fused.grad = None
        elif self.fused.grad is not None:
            self.fused.grad.zero_()


class MultiOptimizer:
    """Several optimizers stepped as one, and seen as one.

    `param_groups` concatenates theirs (so a schedule sets every learning rate), and the state dict
    numbers the parameters across all of them in that order, as a single optimizer's does: the
    checkpoint code saves and restores it like any `torch.optim.Optimizer`. `fused` are matrices
    whose blocks the optimizers see (`FusedBlocks`): a step passes them their gradients first.
    """

    def __init__(self, *optimizers: Optimizer, fused: list[FusedBlocks] = ()) -> None:
        self.optimizers = optimizers
        self.fused = list(fused)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def step(self) -> None:
        for matrix in self.fused:
            matrix.pass_grads()
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for matrix in self.fused:
            matrix.zero_grad(set_to_none)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for optimizer in self.optimizers:
            saved = optimizer.state_dict()
            state.update({offset + index: values for index, values in saved["state"].items()})
            groups += [{**group, "params": [offset + i for i in group["params"]]} for group in saved["param_groups"]]
            offset += sum(len(group["params"]) for group in saved["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = iter(state_dict["param_groups"])
        offset = 0
        for optimizer in self.optimizers:
            own = [next(groups) for _ in optimizer.param_groups]
            indices = [i for group in own for i in group["params"]]
            optimizer.load_state_dict(
                {
                    "state": {i - offset: state_dict["state"][i] for i in indices if i in state_dict["state"]},
                    "param_groups": [{**group, "params": [i - offset for i in group["params"]]} for group in own],
                }
            )
            offset += len(indices)
