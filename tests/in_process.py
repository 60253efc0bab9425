"""Run a command-line entry point (`gpt.cli.main`, `export.cli.main`) in the test's own process.

Starting `python -m ...` costs seconds of imports per call, most of a CLI test's time; the same
`main(argv)` run here returns the same exit code, output and log. Tests that need a real process
(a kill, an interpreter start) still run one.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch


class CliRun(NamedTuple):
    returncode: int
    stdout: str
    stderr: str  # the log included, as the command prints it when it runs alone


def run_main(main: Callable[[Sequence[str]], int], *args: str, log_level: int = logging.INFO) -> CliRun:
    """`main(args)` with its stdout, stderr and log captured; `log_level` is the level of the root
    logger that the command's own `logging.basicConfig` would set (it does nothing here: pytest's
    handlers are on the root logger already)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    log = logging.StreamHandler(stderr)
    log.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    level, threads = root.level, torch.get_num_threads()
    root.addHandler(log)
    root.setLevel(log_level)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(list(args))
            except SystemExit as exit:  # argparse: --help, or a bad flag
                code = exit.code
    finally:
        root.removeHandler(log)
        root.setLevel(level)
        torch.set_num_threads(threads)  # --threads
    return CliRun(code, stdout.getvalue(), stderr.getvalue())
