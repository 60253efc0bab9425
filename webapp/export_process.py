"""ONNX exports in a child process, so the server never runs `torch.export`.

`torch.export` changes torch state that every thread of a process shares: run beside a training in
the same process, it crashed the training (`KeyError: 'custom'` in `torch.fx.traceback`, errors
inside the optimizer's foreach kernels). So the app saves the model as a checkpoint into a private
work folder and runs `python -m export` on it in a child process, which also keeps the export's
peak memory out of the server. The child is killed when the caller cancels, or when it overruns
its time limit; the work folder is removed in every case.
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

from gpt import GPT
from webapp.i18n import without_paths
from webapp.settings import REPO_ROOT

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 900.0  # a 23 M-parameter model took 52 s (fp32) and 67 s (int8) on 2 busy cores
POLL_S = 0.1  # how often a running child is checked for cancellation and its deadline
_ERROR_LINE = re.compile(r"(?:^|\s)error: (.+)$")


class ChildExportError(Exception):
    """The export failed, overran its time limit or was cancelled; the message is safe to show users."""


def export_in_child(
    model: GPT,
    folder: Path,
    precision: str,
    *,
    threads: int,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    cancelled: Callable[[], bool] = lambda: False,
) -> Path:
    """Export `model` to the empty-or-absent `folder` with `python -m export` in a child process.

    The checkpoint and the child's partial output live in a temporary folder beside `folder`, which
    is removed however this ends; `folder` is filled only when the export passed its checks.
    `cancelled` is polled while the child runs: when it returns True, or after `timeout_s`, the
    child (and its process group) is killed. Raises `ChildExportError` with a message that names
    no server path; the full child output goes to the log.
    """
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".work", dir=folder.parent))
    checkpoint, out, log_file = work / "model", work / "onnx", work / "export.log"
    try:
        model.save(checkpoint)
        command = [
            sys.executable, "-m", "export",
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
                stopped = _wait(child, timeout_s, cancelled)
            finally:
                if child.poll() is None:  # an exception in this thread (KeyboardInterrupt): never orphan it
                    _kill(child)
        try:
            text = log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:  # the session closed, and its folder went with the log
            text = ""
        if stopped == "cancelled":
            log.info("export cancelled: its child process was killed")
        elif stopped or child.returncode != 0:
            log.warning("export child %s (exit %s):\n%s", stopped or "failed", child.returncode, text[-4000:])
        if stopped:
            raise ChildExportError(stopped)
        if child.returncode != 0:
            names = {checkpoint: "the model", out: "the export folder", work: "the work folder"}
            raise ChildExportError(_reason(text, child.returncode, names))
        os.replace(out, folder)  # replaces the empty folder the caller made
        return folder
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _wait(child: subprocess.Popen, timeout_s: float, cancelled: Callable[[], bool]) -> str:
    """Wait for `child` to exit; kill it on cancellation or timeout. Returns why it was stopped, or ""."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            child.wait(POLL_S)
            return ""
        except subprocess.TimeoutExpired:
            pass
        if cancelled():
            _kill(child)
            return "cancelled"
        if time.monotonic() > deadline:
            _kill(child)
            return f"it took longer than {timeout_s:.0f} s and was stopped"


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
    return env


def _reason(output: str, returncode: int, paths: dict[Path, str]) -> str:
    """The child's last `error: ...` line (else its last line), with server paths named instead."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [m.group(1) for m in map(_ERROR_LINE.search, lines) if m]
    if errors:
        reason = errors[-1]
    elif returncode < 0:
        reason = f"the export process was killed by signal {-returncode} (out of memory?)"
    else:
        reason = lines[-1] if lines else f"the export process exited with code {returncode}"
    for path, name in sorted(paths.items(), key=lambda item: -len(str(item[0]))):
        reason = reason.replace(str(path), name)
    return without_paths(reason)  # any other path: its last part only
