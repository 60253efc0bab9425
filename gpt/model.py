"""The GPT model: pre-norm GPT-2-style blocks with an explicit key/value cache.

Parameter names follow GPT-2 (`transformer.wte`, `transformer.h.0.attn.c_attn`, ...), so a
Hugging Face `GPT2LMHeadModel` state dict maps onto this model (see `load_gpt2_state_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt import checkpoint
from gpt.config import GPTConfig
from gpt.generation import GenerationMixin
from gpt.modes import evaluating

if TYPE_CHECKING:
    from gpt.tokenizer import Tokenizer
    from gpt.training import TrainingHistory

KVCache = tuple[tuple[Tensor, Tensor], ...]
"""One `(key, value)` pair per layer, each `[batch, heads, seq, head_size]`."""


class KVBuffer:
    """One layer's keys and values in storage allocated once for the whole context.

    Decoding appends each step's entries in place instead of concatenating (and so copying) the
    whole past every step. It reads as a `(key, value)` pair of views `[batch, heads, seq, head_size]`,
    so it can stand wherever a past pair can.
    """

    def __init__(self, keys: Tensor, values: Tensor, length: int = 0) -> None:
        """Storage `[batch, heads, capacity, head_size]` whose first `length` positions hold the past."""
        self.keys = keys
        self.values = values
        self.length = length

    @classmethod
    def empty(cls, batch: int, heads: int, capacity: int, head_size: int, like: Tensor) -> KVBuffer:
        """An empty cache of `capacity` positions, on `like`'s device and dtype."""
        return cls(like.new_empty(batch, heads, capacity, head_size), like.new_empty(batch, heads, capacity, head_size))

    def append(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Store `key`/`value` `[batch, heads, new, head_size]` after the past; return everything so far."""
        end = self.length + key.shape[2]
        self.keys[:, :, self.length : end] = key
        self.values[:, :, self.length : end] = value
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def __getitem__(self, index: int) -> Tensor:
        return (self.keys, self.values)[index][:, :, : self.length]

    def __len__(self) -> int:
        return 2


class Conv1D(nn.Module):
    """A linear layer that stores its weight as `[in_features, out_features]`: GPT-2's "Conv1D".

    Decoding multiplies one row by each weight. MKL on this project's AMD CPU streams that layout
    faster than `nn.Linear`'s `[out, in]`, and training runs at the same speed (docs/decisions.md). GPT-2 checkpoints use it too, so they load untransposed.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.t(), self.bias)  # a transposed view: no copy


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_size = config.head_size
        self.c_attn = Conv1D(config.emb_size, 3 * config.attn_size, bias=config.bias)  # fused QKV
        self.c_proj = Conv1D(config.attn_size, config.emb_size, bias=config.bias)
        self.qk_norm = config.qk_norm
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        past: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        rotation: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`mask` as built by `attention_bias`; None means plain causal attention. `rotation`:
        `rotary_angles`' (cos, sin) when the model has rotary positions."""
        B, T, _ = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.num_heads, self.head_size)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs); 3 ops, not 7 (decode is op-bound)
        if self.qk_norm:
            q, k = rms_heads(q), rms_heads(k)  # the cache holds normalised keys
        if rotation is not None:
            q, k = rotate(q, *rotation), rotate(k, *rotation)  # the cache holds rotated keys
        if isinstance(past, KVBuffer):
            k, v = past.append(k, v)  # (B, nh, P+T, hs), written in place
        elif past is not None:
            k = torch.cat((past[0], k), dim=2)  # (B, nh, P+T, hs)
            v = torch.cat((past[1], v), dim=2)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and T > 1,  # attention_bias returns None only when this is right
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_size)
        y = self.c_proj(y)
        return self.resid_dropout(y) if self.training else y, past if isinstance(past, KVBuffer) else (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.emb_size
        self.c_fc = Conv1D(config.emb_size, hidden, bias=config.bias)
        self.relu2 = config.activation == "relu2"
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"  # F.gelu's name for it
        self.c_proj = Conv1D(hidden, config.emb_size, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        h = self.c_proj(F.relu(h).square() if self.relu2 else F.gelu(h, approximate=self.approximate))
        return self.dropout(h) if self.training else h  # dropout only in training (see _hidden_states)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.emb_size, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.emb_size, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        past: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        rotation: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        attn_out, present = self.attn(self.ln_1(x), past, mask, rotation)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, present


class GPT(GenerationMixin, nn.Module):
    """A decoder-only transformer language model of the shape `config` gives.

    `GPT(config)` is the constructor. The keyword form of simple-llm's first API,
    `GPT(vocab_size=..., max_seq_len=..., emb_size=..., num_heads=..., head_size=..., num_layers=...,
    dropout=0.1)` (any other `GPTConfig` field too), builds that config itself; `device` places the weights.
    """

    def __init__(
        self, config: GPTConfig | int | None = None, *args: Any, device: str | torch.device | None = None, **fields: Any
    ) -> None:
        super().__init__()
        if isinstance(config, GPTConfig):
            if args or fields:
                raise TypeError("GPT(config) takes no other model arguments besides device")
            self.config = config
        else:
            self.config = _config_from_arguments(*(() if config is None else (config,)), *args, **fields)
        config = self.config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.emb_size),
                **({} if config.rotary else {"wpe": nn.Embedding(config.max_seq_len, config.emb_size)}),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.num_layers)),
                ln_f=nn.LayerNorm(config.emb_size, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.emb_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by depth
                if config.zero_init_proj:  # modded-nanogpt: every block starts as the identity
                    nn.init.zeros_(param)
                else:
                    nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.num_layers))
        self.tokenizer: Tokenizer | None = None
        self.train_loss: list[float] = []
        self.validation_loss: list[float] | None = None
        self.history: TrainingHistory | None = None  # per-step history of the last `fit`
        self.training_record: dict[str, Any] = {}
        """What the model was trained on and how far, saved as `training.json` (its model card reads
        it): `fit` records steps, tokens and losses; callers add `"texts"`, the names of the texts,
        and `"started_from"`, the record of the saved model a run went on from (with its `"model"`)."""
        self._head_cache: tuple[tuple, Tensor] | None = None  # see `_head_columns`
        if device is not None:
            self.to(device)

    def begin_run_from(self, name: str) -> None:
        """Mark a new training run that goes on from these weights: the record so far moves under
        `"started_from"` (with `name`, the model they came from), and `fit` records the new run."""
        self.training_record = {"started_from": {"model": name, **self.training_record}}

    @classmethod
    def from_config(cls, config: GPTConfig, device: str | torch.device | None = None) -> GPT:
        """The same as `GPT(config, device=device)`."""
        return cls(config, device=device)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, Conv1D, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, (nn.Linear, Conv1D)) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def num_parameters(self) -> int:
        """Distinct trainable parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: Tensor,
        past_key_values: KVCache | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        use_cache: bool = False,
        *,
        last_logits_only: bool = False,
    ) -> Tensor | tuple[Tensor, KVCache]:
        """Logits for `input_ids` `[batch, seq]`, continuing `past_key_values` if given.

        `attention_mask` `[batch, past + seq]` marks real tokens with 1 and padding with 0.
        `position_ids` `[batch, seq]` default to the count of real tokens before each position.
        Returns logits `[batch, seq, vocab]` (`[batch, 1, vocab]` with `last_logits_only`), plus the
        present key/value cache when `use_cache` is set or a past is given.
        """
        x, presents = self._hidden_states(input_ids, past_key_values, attention_mask, position_ids)
        if last_logits_only:
            x = x[:, -1:, :]  # (B, 1, C): the LM head on the last position only
        logits = self.soft_cap(self.lm_head(x))
        if use_cache or past_key_values is not None:
            return logits, presents
        return logits

    def _hidden_states(
        self, input_ids: Tensor, past: KVCache | None, attention_mask: Tensor | None, position_ids: Tensor | None
    ) -> tuple[Tensor, KVCache]:
        """The final layer norm's output `[batch, seq, emb]` (what the LM head reads) and the presents."""
        T = input_ids.shape[1]
        past_len = 0 if past is None else _past_length(past[0])
        if not torch.compiler.is_exporting():
            self._check_length(past_len, T, past)
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, past_len, T, input_ids.device)
        mask = attention_bias(attention_mask, past_len, T, input_ids.device, self.transformer.wte.weight.dtype)
        x = self.transformer.wte(input_ids)
        rotation = None
        if self.config.rotary:
            rotation = rotary_angles(position_ids, self.config.head_size, x.dtype)
        else:
            x = x + self.transformer.wpe(position_ids)
        # Dropout modules are skipped in eval, not called: a call costs about 2 us even when it does
        # nothing, and a decode step would make nine.
        if self.training:
            x = self.transformer.drop(x)
        presents = []
        for i, block in enumerate(self.transformer.h):
            x, present = block(x, None if past is None else past[i], mask, rotation)
            presents.append(present)
        return self.transformer.ln_f(x), tuple(presents)

    def _check_length(self, past_len: int, seq_len: int, past: KVCache | None) -> None:
        if past_len + seq_len > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {past_len + seq_len} (past {past_len} + new {seq_len}) exceeds "
                f"max_seq_len {self.config.max_seq_len}"
            )
        if past is not None and len(past) != self.config.num_layers:
            raise ValueError(f"past_key_values has {len(past)} layers, the model has {self.config.num_layers}")

    @torch.inference_mode()
    def window_logits(self, input_ids: Tensor) -> Tensor:
        """Every position's logits `[batch, seq, vocab]` of unpadded rows, in eval mode (`gpt.evaluation`)."""
        with evaluating(self):
            return self(input_ids.to(self.device))

    @torch.inference_mode()
    def decode_step(
        self, input_ids: Tensor, past: KVCache | None, attention_mask: Tensor, position_ids: Tensor
    ) -> tuple[Tensor, KVCache]:
        """One step of the shared decoding loop: last-position logits `[batch, vocab]` and the cache.

        The cache is a `KVBuffer` per layer, sized for the whole context at the first step.
        """
        if past is None:
            past = self.new_cache(input_ids.shape[0])
        hidden, presents = self._hidden_states(input_ids, past, attention_mask, position_ids)
        return self.soft_cap(hidden[:, -1, :] @ self._head_columns()), presents

    def soft_cap(self, logits: Tensor) -> Tensor:
        """`cap * tanh(logits / cap)` with `config.logit_softcap`, or `logits` unchanged without one."""
        cap = self.config.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def _head_columns(self) -> Tensor:
        """The LM head's weight as a contiguous `[emb, vocab]` copy, remade whenever the weight changes.

        Decoding multiplies a few rows by the head, the model's largest matrix. With MKL on this
        project's AMD CPU, `F.linear` on the `[vocab, emb]` weight streams it at about 3 GB/s while
        a row times the `[emb, vocab]` copy reaches 12-18 GB/s: at shape M (vocab 8192, emb 384)
        the head alone took about 4.4 of the 8.3 ms of a decode step. The copy costs one head's memory.
        """
        weight = self.lm_head.weight
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype)
        if self._head_cache is None or self._head_cache[0] != key:
            self._head_cache = (key, weight.detach().t().contiguous())
        return self._head_cache[1]

    def new_cache(self, batch: int) -> tuple[KVBuffer, ...]:
        """An empty key/value cache for `batch` rows and the whole context, one buffer per layer."""
        c = self.config
        weight = self.transformer.wte.weight
        return tuple(
            KVBuffer.empty(batch, c.num_heads, c.max_seq_len, c.head_size, weight) for _ in range(c.num_layers)
        )

    def fit(self, train_loader: Any, valid_loader: Any = None, num_epoch: int | None = 1, **options: Any) -> TrainingHistory:
        """Train the model and return its `TrainingHistory`; see `gpt.training.fit` for every option.

        Afterwards `history` holds that history, `train_loss` the mean train loss of each epoch and
        `validation_loss` the validation loss at each epoch end (None without `valid_loader`).
        """
        from gpt.training import fit

        history = fit(self, train_loader, valid_loader, num_epoch=num_epoch, **options)
        self.history = history
        self.train_loss = list(history.train_loss)
        self.validation_loss = None if valid_loader is None else list(history.validation_loss)
        self.training_record.update(
            steps=history.steps[-1] if history.steps else self.training_record.get("steps", 0),
            tokens_seen=history.tokens_seen,
            train_loss=history.loss[-1] if history.loss else None,
            validation_loss=history.evaluations[-1][1] if history.evaluations else None,
        )
        return history

    def save(self, path: str | Path, tokenizer: Tokenizer | None = None) -> Path:
        """Write `config.json`, `model.safetensors` and `tokenizer.json` (if any) into folder `path`."""
        return checkpoint.save_model(self, path, tokenizer=tokenizer or self.tokenizer)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> GPT:
        """Load a model saved by `save` (with its tokenizer when the folder has one)."""
        config = checkpoint.read_config(path)
        checkpoint.check_weights_size(path, config)  # before building a model of the config's size
        model = cls.from_config(config, device=device)
        checkpoint.read_weights(model, path)
        model.tokenizer = checkpoint.read_tokenizer(path)
        model.training_record = checkpoint.read_training_record(path)
        return model.eval()

    def load_out_in_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a state dict of simple-llm before `Conv1D`, whose block matrices were `[out, in]`.

        Every tensor must be present with its shape (else `RuntimeError`); `state` is changed in place.
        """
        for name, module in self.named_modules():
            if isinstance(module, Conv1D) and f"{name}.weight" in state:
                state[f"{name}.weight"] = state[f"{name}.weight"].t().contiguous()
        self.load_state_dict(state, strict=True)

    def load_gpt2_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Copy weights from a Hugging Face `GPT2LMHeadModel` state dict (same names, same layout)."""
        if self.config.activation != "gelu_tanh":
            raise ValueError(f"GPT-2 weights need activation='gelu_tanh', this model has {self.config.activation!r}")
        own = self.state_dict()
        with torch.no_grad():
            for name, tensor in _gpt2_parameters(state_dict):
                if name not in own:
                    raise KeyError(f"GPT-2 parameter {name!r} has no counterpart in this model")
                if tensor.shape != own[name].shape:
                    raise ValueError(f"{name}: GPT-2 shape {tuple(tensor.shape)} != ours {tuple(own[name].shape)}")
                own[name].copy_(tensor)


def _config_from_arguments(
    vocab_size: int,
    max_seq_len: int,
    emb_size: int = 128,
    num_heads: int = 4,
    head_size: int | None = None,
    num_layers: int = 4,
    dropout: float = 0.1,
    **fields: Any,
) -> GPTConfig:
    """The config of `GPT(vocab_size, max_seq_len, ...)`, with that form's defaults."""
    return GPTConfig(
        vocab_size=vocab_size,
        max_seq_len=max_seq_len,
        emb_size=emb_size,
        num_heads=num_heads,
        head_size=head_size,
        num_layers=num_layers,
        dropout=dropout,
        **fields,
    )


def _gpt2_parameters(state_dict: Mapping[str, Tensor]) -> Iterator[tuple[str, Tensor]]:
    for name, tensor in state_dict.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of old versions
            continue
        yield name, tensor


ROTARY_BASE = 10_000.0
"""The rotary positions' base: pair i of a head turns by position * ROTARY_BASE ** (-2i / head_size)."""


def rotary_angles(position_ids: Tensor, head_size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(cos, sin) `[batch, 1, seq, head_size / 2]` of each position's angles, for `rotate` (computed
    in float32, then cast to `dtype`)."""
    pairs = torch.arange(0, head_size, 2, device=position_ids.device, dtype=torch.float32)
    angles = position_ids[:, None, :, None].float() * ROTARY_BASE ** (-pairs / head_size)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary positions (RoFormer; GPT-NeoX's layout): `x` `[..., head_size]`, its first half paired
    with its second, turned by `rotary_angles`' angles (`cos` and `sin` broadcast against `x`'s halves)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


def rms_heads(x: Tensor) -> Tensor:
    """`x` `[..., head_size]` scaled to unit root-mean-square over its last dimension (no weights)."""
    return F.rms_norm(x, (x.shape[-1],), eps=1e-6)


def _past_length(layer_past: tuple[Tensor, Tensor] | KVBuffer) -> int:
    """How many positions a layer's cache holds (a `KVBuffer` knows without slicing its storage)."""
    return layer_past.length if isinstance(layer_past, KVBuffer) else layer_past[0].shape[2]


def default_position_ids(attention_mask: Tensor | None, past_len: int, seq_len: int, device: torch.device) -> Tensor:
    """Positions `[batch or 1, seq]`: count of real tokens before each position (left padding aware)."""
    if attention_mask is None:
        return torch.arange(past_len, past_len + seq_len, device=device).unsqueeze(0)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]


def attention_bias(
    attention_mask: Tensor | None, past_len: int, seq_len: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor | None:
    """Additive mask `[batch, 1, seq, past + seq]` (0 = may attend, -inf = hidden), or None when
    plain causal attention works.

    Causality is bottom-right aligned: query i sits at absolute position past_len + i
    (SDPA's `is_causal=True` is top-left aligned and wrong once there is a cache). Padding keys are
    hidden, but every query always sees itself so no row is fully masked. The mask is additive
    (not boolean) so that attention does not convert it again in every layer.
    """
    if seq_len == 1:  # one new token may see every real key: only padding to hide
        if attention_mask is None or (_is_cheap_to_check(attention_mask) and bool(attention_mask.all())):
            return None
        allowed = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, P+1)
    elif attention_mask is None and past_len == 0:
        return None  # plain causal attention
    else:
        total = past_len + seq_len
        key_pos = torch.arange(total, device=device)
        query_pos = key_pos[past_len:, None]  # (T, 1)
        allowed = key_pos <= query_pos  # (T, P+T)
        if attention_mask is not None:
            allowed = allowed & (attention_mask.bool()[:, None, None, :] | (key_pos == query_pos))  # (B, 1, T, P+T)
    return torch.where(allowed, 0.0, float("-inf")).to(dtype)


def _is_cheap_to_check(attention_mask: Tensor) -> bool:
    """Whether reading the mask's values is free: on the CPU, outside an export trace (on a GPU it
    would wait for the device every step)."""
    return attention_mask.is_cpu and not torch.compiler.is_exporting()
