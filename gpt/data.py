"""Token windows for training: texts -> ids -> (x, y) batches (files -> texts is `gpt.texts`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

# Reading text files lives in gpt.texts; these names stay importable from here.
from gpt.texts import TEXT_SUFFIXES as TEXT_SUFFIXES
from gpt.texts import read_texts as read_texts

if TYPE_CHECKING:
    from gpt.tokenizer import Tokenizer

PathLike = Union[str, os.PathLike]
TokenIds = Union[torch.Tensor, np.ndarray, Sequence[int]]


class GetData(Dataset):
    """`(x, y)` windows over 1-D token ids: x = data[s : s+seq_len], y = data[s+1 : s+seq_len+1], s = i*stride.

    There are `(len(data) - seq_len - 1) // stride + 1` windows (`len(data) - seq_len` for stride 1).
    Items are int64 views into one stored tensor; `__getitems__` gathers a whole batch at once.
    """

    def __init__(self, data: TokenIds, seq_len: int, stride: int = 1) -> None:
        _check_positive("seq_len", seq_len)
        _check_positive("stride", stride)
        ids = as_ids(data)
        if len(ids) < seq_len + 1:
            raise ValueError(f"data has {len(ids)} tokens, need at least seq_len + 1 = {seq_len + 1}")
        self.data = ids
        self.seq_len = seq_len
        self.stride = stride
        self._inputs = ids[:-1].unfold(0, seq_len, stride)  # (n_windows, seq_len) view
        self._targets = ids[1:].unfold(0, seq_len, stride)  # (n_windows, seq_len) view

    def __len__(self) -> int:
        return self._inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._inputs[index], self._targets[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch `(x, y)`, each `[len(indices), seq_len]`; pair with `collate_batch` in a DataLoader."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return self._inputs[index], self._targets[index]


class ShiftingWindows(GetData):
    """Training windows every `stride` tokens, from an offset that changes with the epoch.

    `set_epoch(epoch)`, which `fit` calls before every epoch, moves the windows' grid to an offset in
    [0, stride) drawn from `(seed, epoch)`. With stride = seq_len an epoch still reads each token
    once, and the windows' boundaries differ from one epoch to the next, as with a window at every
    position: fixed boundaries overfit a small text read for many epochs (docs/decisions.md). The
    offset depends on the seed and epoch alone, so a resumed run and every DDP rank see the same
    windows. There are `(len(data) - seq_len) // stride` windows at every offset.
    """

    def __init__(self, data: TokenIds, seq_len: int, stride: int, seed: int = 0) -> None:
        super().__init__(data, seq_len)  # a window at every position; an epoch's are every stride-th
        _check_positive("stride", stride)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        positions = len(self._inputs)
        if positions < stride:
            raise ValueError(f"data has {len(self.data)} tokens, need at least seq_len + stride = {seq_len + stride}")
        self.stride, self.seed = stride, seed
        self._count = positions // stride
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Move the windows to the offset of `epoch`."""
        self.offset = int(np.random.default_rng((self.seed, epoch)).integers(self.stride))

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self._count:
            raise IndexError(f"window {index} of {self._count}")
        return super().__getitem__(self.offset + index * self.stride)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return super().__getitems__(self.offset + torch.as_tensor(indices, dtype=torch.long) * self.stride)


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """DataLoader `collate_fn` for `GetData`: the batch from `__getitems__` is already collated."""
    return batch


def as_ids(data: TokenIds) -> torch.Tensor:
    """Token ids as a 1-D int64 tensor (no copy when `data` already is one)."""
    ids = torch.as_tensor(data, dtype=torch.long)
    if ids.dim() != 1:
        raise ValueError(f"token ids must be 1-D, got shape {tuple(ids.shape)}")
    return ids


def encode_corpus(texts: str | Iterable[str], tokenizer: Tokenizer) -> torch.Tensor:
    """Encode documents into one 1-D int64 tensor, with the EOS token id between documents."""
    docs = [texts] if isinstance(texts, str) else list(texts)
    if not docs:
        raise ValueError("no texts to encode")
    ids: list[int] = []
    for doc_ids in tokenizer.encode_batch(docs):
        ids += doc_ids
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids[:-1], dtype=torch.long)


def check_vocabulary(ids: torch.Tensor, vocab_size: int) -> None:
    """Raise ValueError when `ids` hold an id a model of `vocab_size` has no embedding for: the
    tokenizer that made them does not fit the model."""
    top = int(ids.max()) if ids.numel() else -1
    if top >= vocab_size:
        raise ValueError(
            f"the tokenizer gives token id {top}, outside the model's vocabulary of {vocab_size}: "
            "it does not fit this model"
        )


def split_ids(
    ids: TokenIds, valid_fraction: float = 0.1, min_tokens: int = 2
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Contiguous split: the first part trains, the last `valid_fraction` validates (None when 0).

    Each part must hold at least `min_tokens` tokens (a window needs seq_len + 1).
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    ids = as_ids(ids)
    n_train = int(len(ids) * (1.0 - valid_fraction))
    train, valid = ids[:n_train], ids[n_train:]
    _check_part("train", train, min_tokens)
    if valid_fraction == 0.0:
        return train, None
    _check_part("valid", valid, min_tokens)
    return train, valid


def _check_part(name: str, part: torch.Tensor, min_tokens: int) -> None:
    if len(part) < min_tokens:
        raise ValueError(
            f"{name} split has {len(part)} tokens, need at least {min_tokens}; "
            "use more text, a shorter seq_len or a different valid_fraction"
        )


def make_loaders(
    ids: TokenIds,
    seq_len: int,
    batch_size: int,
    valid_fraction: float = 0.1,
    seed: int = 0,
    num_workers: int = 0,
    train_stride: int | None = None,
) -> tuple[DataLoader, DataLoader | None]:
    """Train and validation loaders of `(x, y)` int64 `[batch, seq_len]` batches.

    Train windows (`ShiftingWindows`) start every `train_stride` tokens, from an offset that changes
    each epoch. The default (None) is `seq_len`: windows that do not overlap, so an epoch reads each
    token once (lower losses than a window at every position, docs/decisions.md); a text with fewer
    such windows than `batch_size` gets the largest stride that still fills a batch
    (`default_stride`). 1 is a window at every position. They are shuffled by a `torch.Generator`
    seeded with `seed` (the loader's `generator`, so its state can be saved for an exact resume) and
    incomplete batches dropped. Validation windows do not overlap (stride seq_len), are not shuffled
    and keep the last batch.
    """
    _check_positive("seq_len", seq_len)
    _check_positive("batch_size", batch_size)
    if train_stride is not None:
        _check_positive("train_stride", train_stride)
    train_ids, valid_ids = split_ids(ids, valid_fraction, min_tokens=seq_len + 1)
    stride = train_stride or default_stride(len(train_ids), seq_len, batch_size)
    train_set = ShiftingWindows(train_ids, seq_len, stride, seed=seed)
    if len(train_set) < batch_size:
        raise ValueError(
            f"train split has {len(train_set)} windows, fewer than batch_size = {batch_size}; "
            "use more text or a smaller batch_size"
        )
    common = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=collate_batch)
    train = DataLoader(train_set, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed), **common)
    if valid_ids is None:
        return train, None
    valid = DataLoader(GetData(valid_ids, seq_len, stride=seq_len), shuffle=False, drop_last=False, **common)
    return train, valid


def default_stride(tokens: int, seq_len: int, batch_size: int) -> int:
    """`make_loaders`' train stride for `tokens` training tokens: `seq_len` (windows that do not
    overlap), or less when that leaves fewer than `batch_size` windows: the largest stride that gives
    `batch_size` of them (1 at least; below that no stride fills a batch)."""
    return max(1, min(seq_len, (tokens - seq_len) // batch_size))


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
