"""Training text: validated uploads, and built-in sample corpora that need no download.

Uploads follow `gpt.texts`, the rules the command line reads its files by (`.txt`/`.md`, strict
UTF-8 without a byte-order mark, not empty, not binary), plus the app's size limits; its errors
become translated `UserError`s. The "Python standard library" sample is built on the fly from the
interpreter's own `.py` files (present on every machine); the Shakespeare sample is the excerpt
shipped in `data/shakespeare-excerpt.txt`.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gpt import TEXT_SUFFIXES as TEXT_SUFFIXES  # the app's upload types: the library's own
from gpt import TextFileError, check_text_file, read_text_file
from gpt import decode_text as decode_checked_text
from webapp.i18n import Msg, UserError
from webapp.settings import MB, REPO_ROOT

STDLIB_SAMPLE = "python-stdlib"
SHAKESPEARE_SAMPLE = "shakespeare"
SHAKESPEARE_FILE = REPO_ROOT / "data" / "shakespeare-excerpt.txt"
STDLIB_SAMPLE_BYTES = 400_000
# Readable, mostly pure-Python modules first (stable across Python versions); then any others.
_STDLIB_MODULES = (
    "textwrap string heapq bisect queue shlex fnmatch glob calendar random functools contextlib abc "
    "copy dataclasses enum fractions statistics colorsys graphlib operator weakref types numbers sched "
    "shutil tempfile csv json/encoder json/decoder argparse pprint reprlib difflib base64 configparser"
).split()


@dataclass(frozen=True)
class Corpus:
    """Documents to train on, and where they came from (for the status line)."""

    texts: list[str]
    label: str | Msg  # file names, or a sample's translatable name

    @property
    def chars(self) -> int:
        return sum(len(t) for t in self.texts)


def samples() -> list[str]:
    """Names of the available sample corpora (their labels are the i18n keys `sample.<name>`)."""
    found = [STDLIB_SAMPLE]
    if SHAKESPEARE_FILE.is_file():
        found.append(SHAKESPEARE_SAMPLE)
    return found


def sample_corpus(name: str) -> Corpus:
    if name == STDLIB_SAMPLE:
        return Corpus(stdlib_texts(), Msg(f"sample.{name}"))
    if name == SHAKESPEARE_SAMPLE and SHAKESPEARE_FILE.is_file():
        with _user_errors(max_file_mb=None):
            text = read_text_file(SHAKESPEARE_FILE, SHAKESPEARE_FILE.name)
        return Corpus([text], Msg(f"sample.{name}"))
    raise UserError("error.unknown_sample", name=name, choices=", ".join(samples()))


def stdlib_texts(limit: int = STDLIB_SAMPLE_BYTES) -> list[str]:
    """About `limit` bytes of this interpreter's standard-library source, one document per module."""
    root = Path(sysconfig.get_paths()["stdlib"])
    preferred = [root / f"{name}.py" for name in _STDLIB_MODULES]
    others = sorted(root.glob("*.py"))
    texts, total, seen = [], 0, set()
    for path in [*preferred, *others]:
        if total >= limit or path in seen or not path.is_file():
            continue
        seen.add(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        texts.append(text)
        total += len(text.encode())
    if not texts:
        raise UserError("error.no_stdlib", folder=str(root))
    return texts


def read_uploads(paths: Sequence[str | Path], max_file_mb: float, max_total_mb: float) -> Corpus:
    """Validate uploaded text files and read them into memory (Gradio may clean its upload cache
    during a long run): text files by `gpt.texts`' rules, each under `max_file_mb` and together
    under `max_total_mb`."""
    if not paths:
        raise UserError("error.no_files")
    found, total = [], 0
    with _user_errors(max_file_mb):
        for raw in paths:
            path = Path(raw)
            name = _display_name(path)
            total += check_text_file(path, name, max_bytes=int(max_file_mb * MB))
            if total > max_total_mb * MB:
                raise UserError("error.text_too_big", limit=max_total_mb)
            found.append(decode_checked_text(path.read_bytes(), name))
    label = ", ".join(_display_name(Path(p)) for p in paths)
    return Corpus(found, label)


def decode_text(data: bytes, name: str) -> str:
    """Strict UTF-8 text of an upload; empty, binary or non-UTF-8 content raises `UserError`."""
    with _user_errors(max_file_mb=None):
        return decode_checked_text(data, name)


@contextmanager
def _user_errors(max_file_mb: float | None) -> Iterator[None]:
    """Turn `gpt.texts`' `TextFileError` into the `UserError` that says the same in the user's language."""
    try:
        yield
    except TextFileError as err:
        name = err.file
        if err.reason == "file_type":
            raise UserError("error.file_type", name=name, allowed=err.values["allowed"]) from None
        if err.reason == "too_big":
            raise UserError("error.file_too_big", name=name, size=_mb(err.values["size"]), limit=max_file_mb) from None
        if err.reason == "not_utf8":
            raise UserError("error.file_not_utf8", name=name, position=err.values["position"]) from None
        if err.reason in ("empty", "binary"):
            raise UserError(f"error.file_{err.reason}", name=name) from None
        raise


def _display_name(path: Path) -> str:
    """The user's file name: Gradio keeps it as the last path component of the cached upload."""
    return path.name


def _mb(size: int) -> str:
    return f"{size / MB:.1f}"
