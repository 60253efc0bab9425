"""Disk for the app: bounded before work starts, and left clean after a crash.

- Each session's folder (uploads, training runs, exports) has a cap; before a run or an export
  starts, the session's older runs and exports are pruned to make room for what it will write,
  and the work is refused when even that is not enough.
- Saved models have caps per owner and server-wide (`webapp.library`).
- All sessions together have a cap, and below a floor of free disk on the artifact folder's drive,
  new work is refused. Work reserves its disk before it starts (`reserve`), so concurrent work
  cannot overcommit between a check and its writes.
- Session folders live under one folder per server process (`sessions/<pid>/`), so a server
  killed with `kill -9` leaves nothing another server uses; at start, folders of processes that
  are gone (and unfinished saves) are deleted.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from webapp import export_process
from webapp.i18n import UserError
from webapp.settings import MB, Settings

log = logging.getLogger(__name__)

RUN_COPIES = 4  # checkpoints on disk at once in a run: the 2 kept, `best/`, and one being written
OPTIMIZER_BYTES = 8  # per parameter: at most AdamW's two fp32 moments
EXPORT_COPIES = 4  # an export holds the weights about this often: the fast and portable graphs, their fp32 sources
SLACK = 16 * MB  # tokenizer, configs, reports
WEB_PAGE = 16 * MB  # an export's web/: the page and its WebAssembly runtime (about 15 MB)
SAVING_PREFIX = ".saving-"
_PROCESS = f"{os.getpid()}-process"  # names this process's saves
_OURS: set[str] = {_PROCESS}  # instance folder names made by this process
_INSTANCES = itertools.count(1)
_LOCK = threading.RLock()
_RESERVED: dict[Path, int] = {}  # bytes reserved by work in progress, by session folder (`reserve`)


def folder_size(path: Path, *more: Path | None) -> int:
    """Bytes of every file under `path` (and the folders in `more`; 0 for one that does not exist);
    links are not followed, and a file hard-linked more than once is counted once."""
    total, seen = 0, set()
    for folder in (path, *more):
        if folder is None:
            continue
        for root, _, files in os.walk(folder):
            for name in files:
                try:
                    stat = os.lstat(os.path.join(root, name))
                except OSError:  # deleted meanwhile
                    continue
                if stat.st_nlink > 1:
                    if (stat.st_dev, stat.st_ino) in seen:
                        continue
                    seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def model_bytes(params: int) -> int:
    """Disk of a saved `params`-parameter model (fp32 weights, config, tokenizer)."""
    return params * 4 + SLACK


def run_bytes(params: int) -> int:
    """Disk a training run of a `params`-parameter model may use for its checkpoints."""
    return RUN_COPIES * params * (4 + OPTIMIZER_BYTES) + SLACK


def export_bytes(params: int) -> int:
    """Disk an ONNX export of a `params`-parameter model may use (with its web page's runtime)."""
    return EXPORT_COPIES * params * 4 + WEB_PAGE + SLACK


def check_free_disk(settings: Settings, need: int = 0) -> None:
    """Refuse work that would leave less than `min_free_disk_mb` free on the artifact drive."""
    settings.artifacts.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(settings.artifacts).free
    if free - need < settings.min_free_disk_mb * MB:
        raise UserError("error.disk_full", free=f"{free / MB:,.0f}", limit=settings.min_free_disk_mb)


@contextmanager
def reserve(
    session_folder: Path, settings: Settings, need: int, keep: Iterable[Path] = (), downloads: Path | None = None
) -> Iterator[None]:
    """Reserve `need` bytes of disk for work that writes into `session_folder` while the block runs.

    Reservations are counted with what is on disk, so concurrent work cannot overcommit: the
    session's folder and `downloads` (with its other reservations) stay under
    `max_session_disk_mb` — its oldest runs and exports are pruned first, never those in `keep` —,
    all sessions together under `max_disk_mb`, and the drive keeps `min_free_disk_mb` free.
    Refused with a `UserError` saying which limit."""
    key = session_folder.resolve()
    with _LOCK:
        _make_room(session_folder, downloads, settings, need + _RESERVED.get(key, 0), keep)
        used = folder_size(settings.sessions_dir) + folder_size(settings.downloads_dir) + sum(_RESERVED.values())
        if used + need > settings.max_disk_mb * MB:
            raise UserError("error.server_disk", need=f"{need / MB:,.0f}", limit=settings.max_disk_mb)
        check_free_disk(settings, need + sum(_RESERVED.values()))
        _RESERVED[key] = _RESERVED.get(key, 0) + need
    try:
        yield
    finally:
        with _LOCK:
            _RESERVED[key] -= need
            if not _RESERVED[key]:
                del _RESERVED[key]


def make_room(
    session_folder: Path, settings: Settings, need: int, keep: Iterable[Path] = (), downloads: Path | None = None
) -> None:
    """Check (and prune for) `need` more bytes as `reserve` does, without holding them."""
    with reserve(session_folder, settings, need, keep, downloads):
        pass


def _make_room(session_folder: Path, downloads: Path | None, settings: Settings, need: int, keep: Iterable[Path]) -> None:
    """Prune the session's oldest runs and exports (never those in `keep`) until `need` more bytes
    fit under `max_session_disk_mb`; refuse the work when they cannot. The session's `downloads`
    folder counts too (hard links to the session's files once), and a pruned folder's downloads
    (`downloads/<its name>/`, e.g. an export's zip and browser files) go with it."""
    limit = settings.max_session_disk_mb * MB
    if need > limit:
        raise UserError("error.session_disk", need=f"{need / MB:,.0f}", limit=settings.max_session_disk_mb)
    kept = {Path(p).resolve() for p in keep}

    def used() -> int:
        return folder_size(session_folder, downloads)

    for folder in _oldest_first(session_folder, kept):
        if used() + need <= limit:
            break
        log.info("pruning %s to make room in session folder %s", folder.name, session_folder.name)
        shutil.rmtree(folder, ignore_errors=True)
        if downloads is not None:
            shutil.rmtree(downloads / folder.name, ignore_errors=True)
    if used() + need > limit:
        raise UserError("error.session_disk", need=f"{need / MB:,.0f}", limit=settings.max_session_disk_mb)


def instance_name() -> str:
    """A new name for one server's folders (`<pid>-<n>`), known to be live while this process runs."""
    with _LOCK:
        name = f"{os.getpid()}-{next(_INSTANCES)}"
        _OURS.add(name)
    return name


def clean_stale(settings: Settings) -> None:
    """Delete what earlier, now dead, server processes left: their session and download folders
    (killing any export child still running from them first), and their unfinished saves of models
    (hidden `.saving-<pid>-*` folders in the models folder)."""
    for root in (settings.sessions_dir, settings.downloads_dir):
        if not root.is_dir():
            continue
        for folder in root.iterdir():
            if not _owner_alive(folder.name):
                log.info("deleting stale folder %s", folder)
                export_process.kill_orphans(folder)  # an export child it may have left running
                shutil.rmtree(folder, ignore_errors=True)
    if settings.models_dir.is_dir():
        for leftover in settings.models_dir.glob(SAVING_PREFIX + "*"):
            if not _owner_alive(leftover.name[len(SAVING_PREFIX) :]):
                log.info("deleting unfinished save %s", leftover)
                shutil.rmtree(leftover, ignore_errors=True)


def saving_prefix() -> str:
    """Prefix of the hidden temporary folder a save is written into before its rename."""
    return f"{SAVING_PREFIX}{_PROCESS}-"


def _owner_alive(name: str) -> bool:
    """True when folder `name` (`<pid>-<n>[-...]`) belongs to a live server. A folder with our pid that
    this process did not make is stale: a restarted container may give the new server the pid of
    the one that died."""
    if "-".join(name.split("-")[:2]) in _OURS:
        return True
    pid = name.split("-")[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _oldest_first(session_folder: Path, kept: set[Path]) -> list[Path]:
    """The session's run, export and upload folders, oldest first, without those in `kept`."""
    found = []
    for kind in ("uploads", "exports", "runs"):
        parent = session_folder / kind
        if parent.is_dir():
            found += [p for p in parent.iterdir() if _prunable(p, kept)]
    return sorted(found, key=_mtime)


def _prunable(path: Path, kept: set[Path]) -> bool:
    """A finished folder not in `kept` (hidden ones are work in progress)."""
    return path.is_dir() and not path.name.startswith(".") and path.resolve() not in kept


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
