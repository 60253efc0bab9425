"""Byte-level BPE tokenizer on Hugging Face `tokenizers`: every byte is in the vocabulary, so any
UTF-8 text encodes without unknown tokens and decodes back exactly."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, islice
from pathlib import Path
from typing import Union

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gpt.files import atomic_write
from gpt.texts import read_texts
from gpt.word_cache import WordCache

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
N_BYTES = 256
_PIECE_CHARS = 16_384  # encode texts in pieces of about this size
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
"""A single newline between two non-space characters: GPT-2's pre-tokenizer regex makes that newline
a token of its own whatever follows the text, so a cut after it changes no token."""
_CHUNK_LINES = 256  # lines per training chunk: lets the trainer split work across threads

PathLike = Union[str, os.PathLike]
TextSource = Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]]


class Tokenizer:
    """Byte-level BPE with an end-of-text token `EOS_TOKEN` (plus optional extra special tokens).

    `Tokenizer()` is a pure byte-level tokenizer (one id per byte); `train` / `fit` learn merges.
    Special tokens written literally in the text (e.g. "<|endoftext|>") encode to their ids.
    """

    def __init__(self, backend: HFTokenizer | None = None) -> None:
        backend = backend if backend is not None else _train_backend([], N_BYTES + 1, [EOS_TOKEN], 2)
        if backend.token_to_id(EOS_TOKEN) is None:
            raise ValueError(f"tokenizer has no {EOS_TOKEN} token")
        self._use(backend)

    def _use(self, backend: HFTokenizer) -> None:
        self._backend = backend
        self._words = WordCache(backend) if WordCache.supports(backend) else None

    @classmethod
    def train(
        cls,
        source: TextSource,
        vocab_size: int = 4096,
        special_tokens: Sequence[str] | None = None,
        min_frequency: int = 2,
    ) -> Tokenizer:
        """Train a new tokenizer on text, a file, a folder of .txt/.md files, or an iterable of those.

        A `str` naming an existing file or folder is read from disk; any other `str` is the text itself.
        `vocab_size == 256 + number of special tokens` gives a byte-level tokenizer without merges.
        """
        return cls().fit(source, vocab_size, special_tokens, min_frequency)

    def fit(
        self,
        source: TextSource,
        vocab_size: int = 4096,
        special_tokens: Sequence[str] | None = None,
        min_frequency: int = 2,
    ) -> Tokenizer:
        """Train in place (same arguments as `train`) and return self."""
        specials = list(dict.fromkeys([EOS_TOKEN, *(special_tokens or [])]))
        if vocab_size < N_BYTES + len(specials):
            raise ValueError(
                f"vocab_size must be >= 256 bytes + {len(specials)} special tokens = "
                f"{N_BYTES + len(specials)}, got {vocab_size}"
            )
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        chunks = (chunk for text in _source_texts(source) for chunk in _line_chunks(text))
        self._use(_train_backend(chunks, vocab_size, specials, min_frequency))
        return self

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added; literal special tokens become their ids)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text: the same ids as the backend's `encode`, several times faster.

        Text the `WordCache` covers is encoded word by word from its cache. Other text is cut into
        pieces of about `_PIECE_CHARS` at boundaries where the byte-level pre-tokenizer splits
        anyway; covered pieces still use the cache, the rest go to the backend together, which
        encodes them in parallel.
        """
        pieces = [self._pieces(text) for text in texts]
        flat = [piece for text in pieces for piece in text]
        rest = iter(self._backend.encode_batch_fast([p for p, cached in flat if not cached], add_special_tokens=False))
        encoded = iter([self._words.encode(p) if cached else next(rest).ids for p, cached in flat])
        return [list(chain.from_iterable(islice(encoded, len(text)))) for text in pieces]

    def _pieces(self, text: str) -> list[tuple[str, bool]]:
        """`text` whole when the word cache covers it, else cut into pieces; each with whether it is covered."""
        words = self._words
        if words is not None and words.covers(text):
            return [(text, True)]
        return [(piece, words is not None and words.covers(piece)) for piece in _cut(text)]

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Text of a 1-D sequence of ids (list, tensor or array); invalid UTF-8 becomes U+FFFD."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            if ids.ndim != 1:
                raise ValueError(f"decode expects a 1-D sequence of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids, size = list(ids), self.vocab_size
        bad = next((i for i in ids if not 0 <= i < size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is out of range [0, {size})")
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int:
        return self._backend.token_to_id(EOS_TOKEN)

    @property
    def special_tokens(self) -> list[str]:
        """Special tokens in id order, `EOS_TOKEN` first."""
        added = self._backend.get_added_tokens_decoder()
        return [added[i].content for i in sorted(added) if added[i].special]

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def to_json_str(self) -> str:
        """The whole tokenizer as a `tokenizer.json` string (for embedding in checkpoints)."""
        return self._backend.to_str()

    @classmethod
    def from_json_str(cls, data: str) -> Tokenizer:
        """Inverse of `to_json_str`; a malformed string raises ValueError."""
        try:
            backend = HFTokenizer.from_str(data)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"not a valid tokenizer.json: {e}") from e
        return cls(backend)

    def save(self, path: PathLike) -> Path:
        """Write atomically to file `path` (or `path/tokenizer.json` if it is a folder); return the file."""
        file = _tokenizer_file(path)
        atomic_write(file, lambda tmp: tmp.write_text(self.to_json_str(), encoding="utf-8"))
        return file

    @classmethod
    def load(cls, path: PathLike) -> Tokenizer:
        """Load from a `tokenizer.json` file, or a folder holding one."""
        file = _tokenizer_file(path)
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        try:
            return cls.from_json_str(file.read_text(encoding="utf-8"))
        except ValueError as e:  # includes UnicodeDecodeError
            raise ValueError(f"cannot load tokenizer from {file}: {e}") from e

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"


def _train_backend(texts: Iterable[str], vocab_size: int, special_tokens: list[str], min_frequency: int) -> HFTokenizer:
    """A fresh byte-level BPE trained on `texts`; the 256 byte symbols are always in the vocabulary."""
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def _tokenizer_file(path: PathLike) -> Path:
    """`path/tokenizer.json` when `path` is an existing folder, else `path` itself."""
    path = Path(path)
    return path / TOKENIZER_FILE if path.is_dir() else path


def _source_texts(source: TextSource) -> Iterator[str]:
    """Texts of a training source: paths are read (strict UTF-8), other strings are text."""
    items = [source] if isinstance(source, (str, os.PathLike)) else source
    for item in items:
        if _is_path(item):
            yield from read_texts(item)
        else:
            yield item


def _is_path(item: str | os.PathLike) -> bool:
    """PathLike objects always; a str only when it names an existing file or folder."""
    if isinstance(item, os.PathLike):
        return True
    try:
        return Path(item).exists()
    except (OSError, ValueError):  # name too long, embedded NUL
        return False


def _line_chunks(text: str) -> Iterator[str]:
    """`text` in blocks of whole lines, so large texts train in parallel without splitting words."""
    lines = text.splitlines(keepends=True)
    for start in range(0, len(lines), _CHUNK_LINES):
        yield "".join(lines[start : start + _CHUNK_LINES])


def _cut(text: str) -> list[str]:
    """`text` cut at `_SAFE_CUT` boundaries into pieces of at least `_PIECE_CHARS` (or fewer, at the end)."""
    pieces, start = [], 0
    while len(text) - start > _PIECE_CHARS:
        cut = _SAFE_CUT.search(text, start + _PIECE_CHARS)
        if cut is None:
            break
        pieces.append(text[start : cut.start()])
        start = cut.start()
    pieces.append(text[start:])
    return pieces
