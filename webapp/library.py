"""Saved models and their owners (`webapp.owners`): who sees, uses, deletes and publishes which.

Layout under the artifact folder:

- `owners/<owner id>/<name>/`: an owner's saved models (checkpoint folders); a `.published` file
  in one makes it visible to every visitor, read-only.
- `models/<name>/`: models the server's operator put there, shared with every visitor, read-only.

A visitor sees their own models by name, the operator's by name, and other owners' published
models as `<name>@<owner tag>`. Anything else is answered exactly as a name that does not exist.
Caps are per owner (count and size) and server-wide (count and size), checked and reserved under
one lock, so concurrent saves cannot pass them. Anonymous owners' models expire after
`anonymous_save_days` without use; the sweep runs at start and at most once a minute on the way.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpt import CONFIG_FILE, CheckpointError, GPTConfig, atomic_folder, read_config
from webapp import storage
from webapp.i18n import UserError, t
from webapp.owners import Owner, tag_of
from webapp.settings import MB, Settings

if TYPE_CHECKING:
    from gpt import GPT

log = logging.getLogger(__name__)

PUBLISHED = ".published"
DELETING = ".deleting-"
SWEEP_EVERY_S = 60.0
_UNSAFE = re.compile(r"[^\w.-]+")
_LOCK = threading.Lock()  # caps: counting what is on disk and reserving what is being saved
_PENDING: dict[tuple[str, str], list[int]] = {}  # (library root, owner id) -> bytes of saves in progress
_LAST_SWEEP: dict[str, float] = {}


@dataclass(frozen=True)
class Entry:
    """A saved model as one visitor sees it."""

    name: str  # how the visitor names it: "base", or "base@<tag>" for another owner's published model
    path: Path
    owner: str | None  # the owner's id; None for a model of the server's operator
    mine: bool
    published: bool

    @property
    def config(self) -> GPTConfig | None:
        try:
            return read_config(self.path)
        except CheckpointError:
            return None

    def label(self, lang: str) -> str:
        c = self.config
        shape = "?" if c is None else f"{c.num_layers}×{c.emb_size}, ctx {c.max_seq_len}, vocab {c.vocab_size}"
        if self.owner is None:
            whose = t(lang, "library.server")
        elif self.mine:
            whose = t(lang, "library.mine_published" if self.published else "library.mine")
        else:
            whose = t(lang, "library.shared")
        return f"{self.name} — {shape} · {whose}"


def safe_name(name: str, fallback: str = "model") -> str:
    """A folder name from user text: letters (any script), digits, '.', '-', '_'; no leading dot."""
    cleaned = _UNSAFE.sub("-", name.strip()).strip("-.")[:64]
    return cleaned or fallback


def root(settings: Settings) -> Path:
    return settings.artifacts / "owners"


def visible(settings: Settings, owner: Owner) -> list[Entry]:
    """The models `owner` may use: their own, the operator's, and others' published ones."""
    sweep(settings)
    mine = [Entry(p.name, p, owner.id, True, _published(p)) for p in _models(root(settings) / owner.id)]
    taken = {e.name for e in mine}
    server = [Entry(p.name, p, None, False, True) for p in _models(settings.models_dir) if p.name not in taken]
    shared = []
    for folder in _owner_folders(settings):
        if folder.name == owner.id:
            continue
        tag = tag_of(folder.name)
        shared += [Entry(f"{p.name}@{tag}", p, folder.name, False, True) for p in _models(folder) if _published(p)]
    by_name = lambda e: e.name.lower()  # noqa: E731
    return sorted(mine, key=by_name) + sorted(server, key=by_name) + sorted(shared, key=by_name)


def find(settings: Settings, owner: Owner, name: str) -> Entry:
    """The model `owner` calls `name`; a model they may not see is answered as one that does not exist."""
    for entry in visible(settings, owner):
        if entry.name == name:
            return entry
    raise UserError("error.no_such_model", name=name)


def find_own(settings: Settings, owner: Owner, name: str) -> Entry:
    """`find`, for changes: a visible model of someone else is refused as not theirs."""
    entry = find(settings, owner, name)
    if not entry.mine:
        raise UserError("error.not_yours", name=name)
    return entry


def touch(entry: Entry) -> None:
    """Mark a use: anonymous models expire counted from their last use."""
    if entry.owner is not None:
        try:
            os.utime(entry.path)
        except OSError:
            pass


def save(model: GPT, owner: Owner, name: str, settings: Settings) -> str:
    """Save `model` as the owner's `name` (folder-safe); an existing name is never overwritten."""
    folder_name = safe_name(name)
    target = _new_target(settings, owner, folder_name)
    with reserving(settings, owner, storage.model_bytes(model.num_parameters())):
        try:  # refused if another save of this owner takes the name meanwhile
            with atomic_folder(target, replace=False, prefix=storage.saving_prefix()) as tmp:
                model.save(tmp)
        except FileExistsError:
            raise UserError("error.name_taken", name=folder_name) from None
    return folder_name


def add_folder(folder: Path, owner: Owner, base: str, settings: Settings) -> str:
    """Move a checked checkpoint folder (an upload) into the owner's models as `base`, `base-2`, ..."""
    base = safe_name(base, "uploaded")
    with reserving(settings, owner, storage.folder_size(folder)):
        parent = root(settings) / owner.id
        parent.mkdir(parents=True, exist_ok=True)
        server = {p.name for p in _models(settings.models_dir)}
        for n in range(1, 1000):
            name = base if n == 1 else f"{base}-{n}"
            if name in server:
                continue
            try:
                os.rename(folder, parent / name)  # never replaces a non-empty folder
                return name
            except OSError:
                continue
    raise UserError("error.name_taken", name=base)


def delete(settings: Settings, owner: Owner, name: str) -> None:
    entry = find_own(settings, owner, name)
    trash = entry.path.with_name(f"{DELETING}{entry.path.name}-{time.monotonic_ns()}")
    os.rename(entry.path, trash)  # gone at once for every reader, then removed
    shutil.rmtree(trash, ignore_errors=True)


def publish(settings: Settings, owner: Owner, name: str, published: bool) -> Entry:
    entry = find_own(settings, owner, name)
    marker = entry.path / PUBLISHED
    if published:
        marker.touch()
    else:
        marker.unlink(missing_ok=True)
    touch(entry)
    return entry


@contextmanager
def reserving(settings: Settings, owner: Owner, need: int) -> Iterator[None]:
    """Check the owner's and the server's caps against what is saved and what is being saved,
    and hold `need` bytes (and one model) against them until the block ends."""
    key = (str(root(settings)), owner.id)
    with _LOCK:
        counts, sizes = _usage(settings)
        mine_count, mine_bytes = counts.get(owner.id, 0), sizes.get(owner.id, 0)
        if mine_count >= settings.max_saved_models:
            raise UserError("error.too_many_saved", count=mine_count, limit=settings.max_saved_models)
        if mine_bytes + need > settings.max_saved_mb * MB:
            used, wanted = f"{mine_bytes / MB:,.0f}", f"{need / MB:,.1f}"
            raise UserError("error.saved_full", used=used, need=wanted, limit=settings.max_saved_mb)
        total_count, total_bytes = sum(counts.values()), sum(sizes.values())
        if total_count >= settings.max_total_saved_models or total_bytes + need > settings.max_total_saved_mb * MB:
            raise UserError("error.server_saved_full")
        storage.check_free_disk(settings, need)
        _PENDING.setdefault(key, []).append(need)
    try:
        yield
    finally:
        with _LOCK:
            _PENDING[key].remove(need)
            if not _PENDING[key]:
                del _PENDING[key]


def sweep(settings: Settings, force: bool = False) -> int:
    """Delete anonymous owners' models unused for `anonymous_save_days`, unfinished saves of dead
    servers and unfinished deletions; at most once a minute unless `force`. Returns how many models went."""
    key = str(root(settings))
    now = time.monotonic()
    with _LOCK:
        if not force and now - _LAST_SWEEP.get(key, -SWEEP_EVERY_S) < SWEEP_EVERY_S:
            return 0
        _LAST_SWEEP[key] = now
    limit = time.time() - settings.anonymous_save_days * 86400
    removed = 0
    for folder in _owner_folders(settings):
        for leftover in folder.glob(storage.SAVING_PREFIX + "*"):
            if not storage._owner_alive(leftover.name[len(storage.SAVING_PREFIX) :]):
                shutil.rmtree(leftover, ignore_errors=True)
        for leftover in folder.glob(DELETING + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if folder.name.startswith("hf-"):
            continue
        for model in _models(folder):
            if _mtime(model) < limit:
                log.info("deleting expired anonymous model %s/%s", folder.name, model.name)
                shutil.rmtree(model, ignore_errors=True)
                removed += 1
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass
    return removed


def _usage(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """Models and bytes per owner: on disk, plus saves in progress."""
    counts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for folder in _owner_folders(settings):
        found = _models(folder)
        counts[folder.name] = len(found)
        sizes[folder.name] = sum(storage.folder_size(p) for p in found)
    prefix = str(root(settings))
    for (where, owner_id), pending in _PENDING.items():
        if where == prefix:
            counts[owner_id] = counts.get(owner_id, 0) + len(pending)
            sizes[owner_id] = sizes.get(owner_id, 0) + sum(pending)
    return counts, sizes


def _new_target(settings: Settings, owner: Owner, folder_name: str) -> Path:
    target = root(settings) / owner.id / folder_name
    if target.exists() or (settings.models_dir / folder_name / CONFIG_FILE).is_file():
        raise UserError("error.name_taken", name=folder_name)
    return target


def _owner_folders(settings: Settings) -> list[Path]:
    folder = root(settings)
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _models(folder: Path) -> list[Path]:
    """Checkpoint folders in `folder` (hidden ones are saves or deletions in progress)."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if not p.name.startswith(".") and (p / CONFIG_FILE).is_file()]


def _published(path: Path) -> bool:
    return (path / PUBLISHED).is_file()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
