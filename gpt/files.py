"""Atomic writes: a file or folder is built under a temporary name beside its target, then renamed.

An interrupted write never leaves a half-written file or folder where a good one was. The results
get the ordinary permissions of a new file or folder (the umask's), not the owner-only ones of
`tempfile`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: Path, *, replace: bool = True, prefix: str | None = None) -> Iterator[Path]:
    """Yield a new temporary folder beside `path`; when the block succeeds, rename it to `path`.

    When the block raises, the temporary folder is removed and `path` is left as it was.
    `replace=True`: an existing `path` is moved aside only once the new folder is complete, then
    deleted. `replace=False`: an existing `path` (found before the block runs, or made by another
    process meanwhile) raises `FileExistsError` and nothing is written. `prefix` names the temporary
    folder (default `.<name>.`), for callers that delete unfinished folders by name after a crash.
    """
    path = Path(path)
    if not replace and path.exists():
        raise FileExistsError(errno.EEXIST, "folder exists", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if not replace:
            _rename_new(tmp, path)
        elif path.exists():
            old = tmp.with_suffix(".old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rename_new(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`, which must not exist (a rename over a non-empty folder fails)."""
    try:
        os.rename(tmp, path)
    except OSError as err:
        if path.exists():
            raise FileExistsError(errno.EEXIST, "folder exists", str(path)) from err
        raise
    # os.rename silently replaces an *empty* folder another process made meanwhile: that is harmless
