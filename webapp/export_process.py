"""ONNX exports in a child process, so the server never runs `torch.export`.

`torch.export` changes torch state that every thread of a process shares: run beside a training in
the same process, it crashed the training (`KeyError: 'custom'` in `torch.fx.traceback`, errors
inside the optimizer's foreach kernels). So the app saves the model as a checkpoint into a private
work folder and runs `python -m export` on it in a child process, which also keeps the export's
peak memory out of the server. The child is killed when the caller cancels, when it overruns its
time limit, or when its memory (resident set, with any process it starts) passes its limit; the
work folder is removed in every case.

The child (`webapp.export_child`) runs at nice 10 (generation stays responsive) and dies with the server: it asks the
kernel for SIGKILL when the thread that started it ends (`PR_SET_PDEATHSIG`, Linux), and that
thread waits for it. For what a server killed before that could leave, each child's pid is recorded
in its work folder, and `kill_orphans` (called by `webapp.storage.clean_stale` on a dead server's
folders) kills a recorded child that still runs with that work folder on its command line.
`RLIMIT_AS` is not used for the memory limit: CUDA builds of torch reserve far more address space
than they use.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from webapp.export_child import PARENT_ENV
from webapp.i18n import Msg, without_paths
from webapp.settings import MB, REPO_ROOT

if TYPE_CHECKING:
    from gpt import GPT

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 900.0  # a 23 M-parameter model took 52 s (fp32) and 67 s (int8) on 2 busy cores
POLL_S = 0.1  # how often a running child is checked for cancellation, its deadline and its memory
CHILD_RECORD = "child.pid"  # in the work folder: the child's pid, for `kill_orphans`
_ERROR_LINE = re.compile(r"(?:^|\s)error: (.+)$")


class ChildExportError(Exception):
    """The export failed, overran its time or memory limit or was cancelled; `detail` (text or a
    `Msg`) is safe to show users."""

    def __init__(self, detail: str | Msg) -> None:
        super().__init__(str(detail))
        self.detail = detail


def export_in_child(
    model: GPT,
    folder: Path,
    precision: str,
    *,
    threads: int,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    cancelled: Callable[[], bool] = lambda: False,
    memory_limit: int | None = None,
) -> Path:
    """Export `model` to the empty-or-absent `folder` with `python -m export` in a child process.

    The checkpoint and the child's partial output live in a temporary folder beside `folder`, which
    is removed however this ends; `folder` is filled only when the export passed its checks.
    `cancelled` is polled while the child runs: when it returns True, after `timeout_s`, or when
    the resident memory of the child and its descendants passes `memory_limit` bytes, the child
    (and its process group) is killed. Raises `ChildExportError` with a message that names
    no server path; the full child output goes to the log.
    """
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".work", dir=folder.parent))
    checkpoint, out, log_file = work / "model", work / "onnx", work / "export.log"
    try:
        model.save(checkpoint)
        command = [
            sys.executable, "-m", "webapp.export_child",  # `python -m export`, niced, dying with us
            "--model", str(checkpoint),
            "--out", str(out),
            "--precision", precision,
            "--threads", str(threads),
        ]  # fmt: skip
        with open(log_file, "wb") as output:  # a file, not a pipe: a chatty child never blocks on it
            child = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=os.name == "posix",  # its own process group: killed as a whole
            )
            try:
                (work / CHILD_RECORD).write_text(str(child.pid), encoding="utf-8")
                stopped = _wait(child, timeout_s, cancelled, memory_limit)
            finally:
                if child.poll() is None:  # an exception in this thread (KeyboardInterrupt): never orphan it
                    _kill(child)
        try:
            text = log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:  # the session closed, and its folder went with the log
            text = ""
        if stopped is CANCELLED:
            log.info("export cancelled: its child process was killed")
        elif stopped is not None or child.returncode != 0:
            log.warning("export child %s (exit %s):\n%s", stopped or "failed", child.returncode, text[-4000:])
        if stopped is not None:
            raise ChildExportError(stopped)
        if child.returncode != 0:
            names = {checkpoint: "the model", out: "the export folder", work: "the work folder"}
            raise ChildExportError(_reason(text, child.returncode, names))
        os.replace(out, folder)  # replaces the empty folder the caller made
        return folder
    finally:
        shutil.rmtree(work, ignore_errors=True)


CANCELLED = Msg("export.cancelled")


def _wait(
    child: subprocess.Popen, timeout_s: float, cancelled: Callable[[], bool], memory_limit: int | None
) -> Msg | None:
    """Wait for `child` to exit; kill it on cancellation, timeout or too much memory. Returns why it
    was stopped, or None."""
    deadline = time.monotonic() + timeout_s
    peak = 0
    while True:
        try:
            child.wait(POLL_S)
            return None
        except subprocess.TimeoutExpired:
            pass
        if cancelled():
            _kill(child)
            return CANCELLED
        if time.monotonic() > deadline:
            _kill(child)
            return Msg("export.timed_out", seconds=f"{timeout_s:.0f}")
        if memory_limit is not None:
            peak = max(peak, group_rss(child.pid))
            if peak > memory_limit:
                _kill(child)
                log.warning("export child used %d MB, over its limit of %d MB", peak // MB, memory_limit // MB)
                return Msg("export.memory_exceeded", used=f"{peak / MB:,.0f}", limit=f"{memory_limit / MB:,.0f}")


def _kill(child: subprocess.Popen) -> None:
    try:
        if os.name == "posix":
            os.killpg(child.pid, signal.SIGKILL)
        else:
            child.kill()
    except ProcessLookupError:
        pass
    child.wait()


def _child_env() -> dict[str, str]:
    """The server's environment, with the repository importable however the server was started."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env[PARENT_ENV] = str(os.getpid())
    return env


def group_rss(pid: int) -> int:
    """Resident bytes of process `pid` and all its descendants (0 when it is gone; Linux `/proc`,
    elsewhere 0: no limit)."""
    total, todo, seen = 0, [pid], set()
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):  # gone meanwhile, or no /proc
            continue
    return total


def kill_orphans(folder: Path) -> int:
    """Kill the export children recorded under `folder` (a dead server's folder) that still run with
    their work folder on their command line, so a pid reused by another process is left alone.
    Returns how many were killed."""
    killed = 0
    for root, _, files in os.walk(folder):
        if CHILD_RECORD not in files:
            continue
        try:
            pid = int(Path(root, CHILD_RECORD).read_text(encoding="utf-8").strip())
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):  # not recorded well, or long gone
            continue
        work = os.fsencode(root)
        if any(a == work or a.startswith(work + b"/") for a in arguments):
            log.warning("killing export process %d left by a dead server", pid)
            try:
                os.killpg(pid, signal.SIGKILL)  # the child leads its own process group
            except OSError:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    continue
            killed += 1
    return killed


def _reason(output: str, returncode: int, paths: dict[Path, str], limit: int = 2000) -> str:
    """The child's error message: its last `error: ...` line and the lines after it (a message may go
    on over several lines, such as a parity table), else its last line; server paths named instead."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if _ERROR_LINE.search(line.strip())]
    if starts:
        first, *rest = lines[starts[-1] :]
        reason = "\n".join([_ERROR_LINE.search(first.strip()).group(1), *rest])
        if len(reason) > limit:
            reason = reason[: limit - 1] + "…"
    elif returncode < 0:
        reason = f"the export process was killed by signal {-returncode} (out of memory?)"
    else:
        reason = lines[-1].strip() if lines else f"the export process exited with code {returncode}"
    for path, name in sorted(paths.items(), key=lambda item: -len(str(item[0]))):
        reason = reason.replace(str(path), name)
    return without_paths(reason)  # any other path: its last part only
