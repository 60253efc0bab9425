"""Signals during training: Ctrl-C held back while a step is applied, SIGTERM turned into a stop request."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def handling(signum: int, handler: Callable[[int, Any], None]) -> Iterator[Any]:
    """Run the block with `handler` for `signum` and yield the handler it replaced; in a thread other
    than the main one (which never receives signals), or over a handler set outside Python, change
    nothing and yield None."""
    previous = signal.getsignal(signum)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield None
        return
    signal.signal(signum, handler)
    try:
        yield previous
    finally:
        signal.signal(signum, previous)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C until the block has run."""
    received: list[tuple[int, Any]] = []
    with handling(signal.SIGINT, lambda signum, frame: received.append((signum, frame))) as previous:
        yield
    if received and callable(previous):
        previous(*received[0])


@contextmanager
def on_sigterm(stop: Callable[[], None]) -> Iterator[None]:
    """Call `stop()` on SIGTERM while the block runs, instead of dying.

    torchrun stops its workers with SIGTERM on Ctrl-C; so do `kill`, schedulers and containers.
    """
    with handling(signal.SIGTERM, lambda signum, frame: stop()):
        yield
