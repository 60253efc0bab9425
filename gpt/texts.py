"""Reading training text: the one set of rules for the command line, the library and the web app.

A text file is a `.txt` or `.md` file of strict UTF-8 (a byte-order mark is dropped) that holds
some text: empty or whitespace-only, binary (NUL bytes, or more than 5% control characters) and
non-UTF-8 files are refused. A folder stands for its text files, searched recursively.

A refused file raises `TextFileError`: a `ValueError` whose message names the file, with a `reason`
code and the values behind the message, so that the web app can say the same in the user's language.
This module imports nothing from `gpt`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
TEXT_SUFFIXES = (".txt", ".md")
PROMPT_CHARS = 40
"""A prompt drawn from a training text (`text_start`): the start of its first line, cut at a word."""
MAX_CONTROL_FRACTION = 0.05
"""Largest share of control characters (other than whitespace) in a text: binary data that happens
to decode as UTF-8 has far more."""

_MESSAGES = {
    "file_type": "{file}: unsupported file type; expected {allowed}",
    "too_big": "{file} is {size:,} bytes, over the {limit:,}-byte limit",
    "empty": "{file} is empty (no text)",
    "binary": "{file} looks binary, not text; expected UTF-8 text",
    "not_utf8": "{file} is not valid UTF-8 (byte {position}: {detail}); save it as UTF-8",
    "no_text_files": "no {allowed} files in directory {file}",
}
REASONS = tuple(_MESSAGES)


class TextFileError(ValueError):
    """A file or folder that holds no usable text.

    `reason` is one of `REASONS`; `file` is the name the message shows; `values` are the message's
    other fields (`allowed`, `size` and `limit` in bytes, `position` and `detail` of a decoding error).
    """

    def __init__(self, reason: str, file: str, **values: Any) -> None:
        self.reason = reason
        self.file = file
        self.values = values
        super().__init__(_MESSAGES[reason].format(file=file, **values))


def check_text_file(path: PathLike, name: str | None = None, max_bytes: int | None = None) -> int:
    """The size in bytes of text file `path`, once its suffix and size are allowed (nothing is read).

    `name` is what errors call the file (default: the path).
    """
    path = Path(path)
    shown = str(path) if name is None else name
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise TextFileError("file_type", shown, allowed=", ".join(TEXT_SUFFIXES))
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {shown}")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise TextFileError("too_big", shown, size=size, limit=max_bytes)
    return size


def decode_text(data: bytes, name: str) -> str:
    """The strict UTF-8 text of `data` without a byte-order mark; else `TextFileError` naming `name`."""
    if not data.strip():
        raise TextFileError("empty", name)
    if b"\x00" in data:
        raise TextFileError("binary", name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TextFileError("not_utf8", name, position=err.start, detail=err.reason) from None
    if _control_fraction(text) > MAX_CONTROL_FRACTION:
        raise TextFileError("binary", name)
    return text.removeprefix("\ufeff")


def read_text_file(path: PathLike, name: str | None = None, max_bytes: int | None = None) -> str:
    """The text of one text file, by the rules above (`check_text_file`, then `decode_text`)."""
    check_text_file(path, name, max_bytes)
    return decode_text(Path(path).read_bytes(), str(path) if name is None else name)


def text_files(source: PathLike | Iterable[PathLike]) -> list[Path]:
    """The files `source` names: a file, a folder (its `.txt`/`.md` files, recursive, sorted) or a list of both."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    return [file for item in items for file in _expand(Path(item))]


def read_texts(source: PathLike | Iterable[PathLike]) -> list[str]:
    """The texts of `source` (see `text_files`), in order.

    Empty files are skipped with a warning when other files hold text; an input with no text at
    all is an error, and so is any binary, non-UTF-8 or non-text file.
    """
    paths = text_files(source)
    texts = []
    for path in paths:
        try:
            texts.append(read_text_file(path))
        except TextFileError as err:
            if err.reason != "empty":
                raise
            logger.warning("skipping empty file %s", path)
    if not texts:
        names = ", ".join(map(str, paths)) or "an empty list of paths"
        raise ValueError(f"no text to read in {names} (empty input)")
    return texts


def _expand(path: Path) -> list[Path]:
    """A file as itself, a folder as its text files (recursive, sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise TextFileError("no_text_files", str(path), allowed=" or ".join(TEXT_SUFFIXES))
        return files
    if not path.is_file():
        raise FileNotFoundError(f"no such file or directory: {path}")
    return [path]


def _control_fraction(text: str) -> float:
    """Share of control characters other than whitespace in the first 100,000 characters."""
    sample = text[:100_000]
    bad = sum(1 for c in sample if ord(c) < 32 and c not in "\n\r\t\f\v")
    return bad / max(1, len(sample))


def text_start(texts: Iterable[str]) -> str:
    """A prompt from the start of a training text: its first non-blank line, cut to at most
    `PROMPT_CHARS` characters at a word boundary ("" when there is no text). `gpt train` keeps it
    in the model's `training_record["prompt"]`, where the web app finds a prompt that suits the model."""
    for text in texts:
        for line in text.splitlines():
            line = line.rstrip()
            if not line.strip():
                continue
            if len(line) <= PROMPT_CHARS:
                return line
            cut = line.rfind(" ", 0, PROMPT_CHARS + 1)
            return line[: cut if cut > PROMPT_CHARS // 4 else PROMPT_CHARS].rstrip()
    return ""
