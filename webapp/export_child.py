"""The ONNX export child: `python -m webapp.export_child ARGS` is `python -m export ARGS`, niced, and
killed by the kernel when the server thread that started it ends (`PR_SET_PDEATHSIG`, Linux).

This module imports nothing heavy, so the child asks for that signal at once: under load, torch's
import takes seconds, and a server killed in those seconds must not leave the child running.
`webapp.export_process` starts it and sets `PARENT_ENV`.
"""

from __future__ import annotations

import os
import signal
import sys

NICE = 10  # the child's niceness: exports yield the CPU to generation and the server
PARENT_ENV = "SIMPLE_LLM_EXPORT_PARENT"  # the server's pid, which the child checks after PR_SET_PDEATHSIG
_PR_SET_PDEATHSIG = 1


def become_export_child() -> None:
    """Lower this process's priority and ask for SIGKILL when the thread that started it ends;
    exit at once when the server died before the request took effect."""
    try:
        os.nice(NICE)
    except OSError:
        pass
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if str(os.getppid()) != os.environ.get(PARENT_ENV, str(os.getppid())):
            raise SystemExit(1)


if __name__ == "__main__":
    import runpy

    become_export_child()
    runpy.run_module("export", run_name="__main__", alter_sys=True)
