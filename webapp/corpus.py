"""Training text: validated uploads, and built-in sample corpora that need no download.

The "Python standard library" sample is built on the fly from the interpreter's own `.py` files
(present on every machine); the Shakespeare sample appears only when `../shared/data/shakespeare.txt`
exists beside the repository (it is not part of the product).
"""

from __future__ import annotations

import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from webapp.i18n import Msg, UserError
from webapp.settings import MB, REPO_ROOT

TEXT_SUFFIXES = (".txt", ".md")
STDLIB_SAMPLE = "python-stdlib"
SHAKESPEARE_SAMPLE = "shakespeare"
SHAKESPEARE_FILE = REPO_ROOT.parent / "shared" / "data" / "shakespeare.txt"
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
        return Corpus([SHAKESPEARE_FILE.read_text(encoding="utf-8")], Msg(f"sample.{name}"))
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
    during a long run): `.txt`/`.md`, not empty, not binary, strict UTF-8, each under `max_file_mb`
    and together under `max_total_mb`."""
    if not paths:
        raise UserError("error.no_files")
    texts, total = [], 0
    for raw in paths:
        path = Path(raw)
        name = _display_name(path)
        if path.suffix.lower() not in TEXT_SUFFIXES:
            raise UserError("error.file_type", name=name, allowed=", ".join(TEXT_SUFFIXES))
        size = path.stat().st_size
        if size > max_file_mb * MB:
            raise UserError("error.file_too_big", name=name, size=_mb(size), limit=max_file_mb)
        total += size
        if total > max_total_mb * MB:
            raise UserError("error.text_too_big", limit=max_total_mb)
        data = path.read_bytes()
        texts.append(decode_text(data, name))
    label = ", ".join(_display_name(Path(p)) for p in paths)
    return Corpus(texts, label)


def decode_text(data: bytes, name: str) -> str:
    """Strict UTF-8 text of an upload; empty, binary or non-UTF-8 content raises `UserError`."""
    if not data.strip():
        raise UserError("error.file_empty", name=name)
    if b"\x00" in data:
        raise UserError("error.file_binary", name=name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError("error.file_not_utf8", name=name, position=err.start) from None
    if _control_fraction(text) > 0.05:
        raise UserError("error.file_binary", name=name)
    return text.removeprefix("\ufeff")


def _control_fraction(text: str) -> float:
    """Share of control characters other than whitespace: high in binary data that happens to decode."""
    sample = text[:100_000]
    bad = sum(1 for c in sample if ord(c) < 32 and c not in "\n\r\t\f\v")
    return bad / max(1, len(sample))


def _display_name(path: Path) -> str:
    """The user's file name: Gradio keeps it as the last path component of the cached upload."""
    return path.name


def _mb(size: int) -> str:
    return f"{size / MB:.1f}"
