"""Zip files in and out: safe extraction of uploaded checkpoints, and folders zipped for download.

Extraction trusts nothing in the archive: every entry name is checked (no absolute paths, no `..`,
no drive letters, no links) before anything is written, only the files asked for are unpacked,
and sizes are enforced twice, from the headers and while copying, so a zip bomb stops early.
"""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from webapp.i18n import UserError
from webapp.settings import MB

MAX_ENTRIES = 1000
_CHUNK = 1 << 20


def safe_extract(
    zip_path: str | Path, dest: Path, wanted: Iterable[str], max_total_bytes: int, max_entries: int = MAX_ENTRIES
) -> dict[str, Path]:
    """Unpack the entries of `zip_path` whose file name is in `wanted` into `dest` (flat).

    The zip may hold them at its root or inside one folder. Returns `{name: path}` of what was
    unpacked. Raises `UserError` for a file that is not a zip, an entry that points outside the
    archive, a link, more than `max_entries` entries, a name found twice, or more than
    `max_total_bytes` in all (declared or actual).
    """
    wanted = set(wanted)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise UserError("error.not_a_zip") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > max_entries:
            raise UserError("error.zip_entries", count=len(entries), limit=max_entries)
        declared = 0
        chosen: dict[str, zipfile.ZipInfo] = {}
        for info in entries:
            parts = _checked_parts(info)
            declared += info.file_size
            if declared > max_total_bytes:
                raise UserError("error.zip_too_big", limit=max_total_bytes // MB)
            if info.is_dir() or parts[-1] not in wanted or len(parts) > 2:
                continue
            if parts[-1] in chosen:
                raise UserError("error.zip_duplicate", name=parts[-1])
            chosen[parts[-1]] = info
        dest.mkdir(parents=True, exist_ok=True)
        written, budget = {}, max_total_bytes
        for name, info in chosen.items():
            target = dest / name
            budget -= _copy_limited(archive, info, target, budget, max_total_bytes)
            written[name] = target
    return written


def _checked_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path components; raises `UserError` when it could escape the destination."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UserError("error.zip_link", name=name)
    path = PurePosixPath(name.replace("\\", "/"))
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if path.is_absolute() or not parts or ".." in parts or ":" in parts[0] or "\x00" in name:
        raise UserError("error.zip_slip", name=name)
    return parts


def _copy_limited(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int, limit: int) -> int:
    """Copy one entry, counting real bytes; more than `budget` deletes the file and raises."""
    copied = 0
    try:
        with archive.open(info) as source, open(target, "wb") as out:
            while chunk := source.read(_CHUNK):
                copied += len(chunk)
                if copied > budget:
                    raise UserError("error.zip_too_big", limit=limit // MB)
                out.write(chunk)
    except UserError:
        target.unlink(missing_ok=True)
        raise
    except (
        zipfile.BadZipFile,
        EOFError,
        OSError,
        RuntimeError,
        NotImplementedError,
    ) as err:  # CRC, encryption, truncation
        target.unlink(missing_ok=True)
        raise UserError("error.zip_corrupt", detail=str(err)) from None
    return copied


def zip_folder(folder: Path, zip_path: Path, names: Iterable[str] | None = None, root: str | None = None) -> Path:
    """Write `folder`'s files, subfolders included (or just those of `names` it has), into
    `zip_path` under a top folder `root` (default: the folder name)."""
    root = root or folder.name
    files = [folder / n for n in names] if names is not None else sorted(folder.rglob("*"))
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(zip_path.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for file in files:
            if file.is_file() and not file.is_symlink():
                archive.write(file, f"{root}/{file.relative_to(folder).as_posix()}")
    tmp.replace(zip_path)
    return zip_path
