"""Fast exact encoding for byte-level BPE: split words with the standard library's `re`, encode each
distinct word once.

`tokenizers` spends nearly all of a byte-level encode in its Oniguruma run of GPT-2's pre-tokenizer
pattern (about 0.7 s for 1 MB of English here, while BPE itself is cheap and cached). Python's `re`
runs the same split about 15x faster, and a text repeats its words, so `WordCache` splits the text
itself, has the backend's BPE model tokenize only the words it has not seen, and joins cached
ids: the ids are exactly those of `backend.encode(text)` (tested over every Unicode code point).

`re` has no `\\p{L}`/`\\p{N}` classes, so `WORD` spells them with `\\w`/`\\d`/`\\s`. That matches
Oniguruma for almost every character, but not for all (numbers such as "²" or "Ⅻ", the ASCII
separators \\x1c-\\x1f, and characters newer than one side's Unicode tables). Rather than trust a
list, `covers` checks each character the first time it is seen: it is split inside probe contexts
by both implementations, and text holding any character on which they differ goes to the backend.
"""

from __future__ import annotations

import json
import re
from itertools import chain

from tokenizers import Tokenizer as HFTokenizer

WORD = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")
"""GPT-2's `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+` in `re` syntax:
letters are word characters that are not digits or "_", and "_" is punctuation."""

MAX_WORDS = 1 << 20
"""Distinct words kept; the cache starts over when it grows past this (a huge, varied corpus)."""


def _probe(char: str) -> str:
    """A text that splits differently if `char` changes class (letter, number, space, other)."""
    return f"a{char}{char} 1{char}b {char}x\n{char} _{char}'s{char}\t{char}  {char}2"


class WordCache:
    """Encodes text like `backend.encode(text, add_special_tokens=False).ids`, faster."""

    def __init__(self, backend: HFTokenizer) -> None:
        self._backend = backend
        specials = sorted(self.added_tokens(backend), key=len, reverse=True)  # longest match first
        self._special_ids = {token: backend.token_to_id(token) for token in specials}
        self._specials = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self._ids: dict[str, list[int]] = {}
        self._agreeing: set[str] = set()
        self._differing: set[str] = set()

    @staticmethod
    def supports(backend: HFTokenizer) -> bool:
        """Whether `backend` is a plain byte-level BPE (no normalizer, GPT-2 split, deterministic merges,
        added tokens matched literally): the only kind whose words `WordCache` may encode one by one."""
        spec = json.loads(backend.to_str())
        return (
            spec.get("normalizer") is None
            and spec.get("pre_tokenizer") is not None
            and spec["pre_tokenizer"].get("type") == "ByteLevel"
            and spec["pre_tokenizer"].get("use_regex", True)
            and not spec["pre_tokenizer"].get("add_prefix_space", False)
            and spec["model"].get("type") == "BPE"
            and spec["model"].get("dropout") is None
            and not any(t["lstrip"] or t["rstrip"] or t["single_word"] or t["normalized"] for t in spec["added_tokens"])
        )

    @staticmethod
    def added_tokens(backend: HFTokenizer) -> list[str]:
        return [token.content for token in backend.get_added_tokens_decoder().values()]

    def covers(self, text: str) -> bool:
        """Whether `encode(text)` is exact: every character of `text` splits alike in `WORD` and the backend."""
        unseen = set(text) - self._agreeing
        if unseen & self._differing:
            return False
        for char in unseen:
            probe = _probe(char)
            ours = [match.span() for match in WORD.finditer(probe)]
            theirs = [span for _, span in self._backend.pre_tokenizer.pre_tokenize_str(probe)]
            (self._agreeing if ours == theirs else self._differing).add(char)
        return not unseen & self._differing

    def encode(self, text: str) -> list[int]:
        """Ids of `text` (special tokens in it become their ids); call only when `covers(text)`."""
        if self._specials is None:
            return self._encode_words(text)
        ids: list[int] = []
        for index, part in enumerate(self._specials.split(text)):  # text, special, text, ..., text
            if index % 2:
                ids.append(self._special_ids[part])
            else:
                ids += self._encode_words(part)
        return ids

    def _encode_words(self, text: str) -> list[int]:
        words = WORD.findall(text)
        known = self._ids  # a local reference: another thread may start the cache over meanwhile
        new = set(words).difference(known)
        if new:
            if len(known) + len(new) > MAX_WORDS:
                known = self._ids = {}
                new = set(words)
            tokenize = self._backend.model.tokenize  # BPE of one pre-tokenized word, as encode does it
            known.update((word, [token.id for token in tokenize(byte_level(word))]) for word in new)
        return list(chain.from_iterable(map(known.__getitem__, words)))


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the other bytes
    for the characters from U+0100 on, in byte order (what `tokenizers`' ByteLevel applies)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + n) for n, byte in enumerate(others)}}


_BYTE_LEVEL = str.maketrans({chr(byte): char for byte, char in _byte_level_alphabet().items()})


def byte_level(word: str) -> str:
    """`word`'s UTF-8 bytes as byte-level characters, the form the BPE model's merges are written in."""
    return word.encode("utf-8").decode("latin-1").translate(_BYTE_LEVEL)
