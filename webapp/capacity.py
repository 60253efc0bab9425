"""One admission controller for the server's heavy work, so that the server is bounded as a whole,
not only request by request.

- Memory: the server has one budget (`SIMPLE_LLM_MEMORY_MB`, by default 80% of the container's
  memory). What the server itself needs (Python, torch, Gradio: measured at start) comes off it
  first. Every heavy job (a training, an evaluation, an export) reserves its estimated peak before
  it starts and gives it back when it ends, however it ends (`Capacity.admit`).
- Models held in memory by sessions are counted against the same budget (`Capacity.hold`), under
  their own cap (`SIMPLE_LLM_MAX_MODELS_MEMORY_MB`). When a job or a model needs room, idle
  sessions' models are dropped first (the `evict` callback of `webapp.sessions`): they reload from
  their checkpoint the next time their session uses them.
- CPU: the server has as many CPU slots as the container has CPUs; a job takes one slot per thread
  it runs (at most all of them), so trainings, evaluations and exports never oversubscribe the
  cores between them. Generation is light and not admitted here: it keeps answering.

A job that fits waits in line (first come, first served) while others hold what it needs, for at
most `wait_s`, then is refused with the reason ("the server is busy"); a job that could never fit
is refused at once. Waiting ends early when the caller cancels.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from webapp.i18n import Msg, UserError
from webapp.settings import MB

log = logging.getLogger(__name__)

JOBS = ("training", "evaluation", "export")
WAIT_S = 30.0  # how long a job that fits waits for others to finish before it is refused
POLL_S = 0.2  # how often a waiting job checks for cancellation


class Cancelled(Exception):
    """The caller cancelled while its job waited for admission."""


@dataclass(frozen=True)
class Reservation:
    job: str
    memory: int  # bytes
    cpus: int


@dataclass(frozen=True)
class Usage:
    """What is reserved now (bytes and slots), for logs, tests and the capacity bench."""

    budget: int
    baseline: int
    jobs: int
    models: int
    cpus: int
    running: tuple[str, ...]

    @property
    def free(self) -> int:
        return self.budget - self.baseline - self.jobs - self.models


class Capacity:
    """The server's memory budget and CPU slots; see the module docstring."""

    def __init__(
        self,
        memory_bytes: int,
        cpu_slots: int,
        models_bytes: int,
        baseline_bytes: int = 0,
        evict: Callable[[int, str | None], int] | None = None,
        wait_s: float = WAIT_S,
    ) -> None:
        self.budget = int(memory_bytes)
        self.baseline = int(baseline_bytes)
        self.cpu_slots = max(1, int(cpu_slots))
        self.models_cap = int(models_bytes)
        self.wait_s = wait_s
        self.evict = evict  # (bytes wanted, session to spare) -> bytes freed: drops idle sessions' models
        self._cond = threading.Condition()
        self._jobs: dict[int, Reservation] = {}
        self._holds: dict[str, int] = {}
        self._line: deque[int] = deque()
        self._tickets = itertools.count()

    @property
    def job_budget(self) -> int:
        """The most memory one job may ever reserve."""
        return self.budget - self.baseline

    def usage(self) -> Usage:
        with self._cond:
            return Usage(
                budget=self.budget,
                baseline=self.baseline,
                jobs=sum(r.memory for r in self._jobs.values()),
                models=sum(self._holds.values()),
                cpus=sum(r.cpus for r in self._jobs.values()),
                running=tuple(r.job for r in self._jobs.values()),
            )

    # Jobs ------------------------------------------------------------------------------------
    @contextmanager
    def admit(
        self, job: str, memory: int, cpus: int = 1, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[Reservation]:
        """Reserve `memory` bytes and `cpus` slots for `job` while the block runs (see the module
        docstring). Raises `UserError` when it can never fit or waited `wait_s` in vain, and
        `Cancelled` when `cancelled()` turns true while it waits."""
        memory, cpus = int(memory), max(1, min(int(cpus), self.cpu_slots))
        if memory > self.job_budget:
            budget, total = _mb(self.job_budget), _mb(self.budget)
            raise UserError("error.job_too_big", job=_job_name(job), need=_mb(memory), budget=budget, total=total)
        reservation = Reservation(job, memory, cpus)
        ticket = self._wait_for_turn(reservation, cancelled)
        log.info("admitted %s: %s MB, %d CPU(s)", job, _mb(memory), cpus)
        try:
            yield reservation
        finally:
            with self._cond:
                del self._jobs[ticket]
                self._cond.notify_all()
            return_freed_memory()

    def _wait_for_turn(self, reservation: Reservation, cancelled: Callable[[], bool]) -> int:
        ticket = next(self._tickets)
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            self._line.append(ticket)
        try:
            while True:
                with self._cond:
                    first = self._line[0] == ticket
                    short = self._memory_short(reservation.memory) if first else 0
                    if first and short <= 0 and self._cpus_free() >= reservation.cpus:
                        self._line.popleft()
                        self._jobs[ticket] = reservation
                        self._cond.notify_all()
                        return ticket
                if first and short > 0 and self.evict is not None and self.evict(short, None) > 0:
                    continue  # idle models dropped: look again at once
                if cancelled():
                    raise Cancelled(reservation.job)
                if time.monotonic() > deadline:
                    usage = self.usage()
                    log.info("refused %s after %.0f s: %s", reservation.job, self.wait_s, usage)
                    raise UserError(
                        "error.server_busy",
                        job=_job_name(reservation.job),
                        need=_mb(reservation.memory),
                        used=_mb(usage.jobs + usage.models),
                        budget=_mb(self.job_budget),
                    )
                with self._cond:
                    self._cond.wait(POLL_S)
        except BaseException:
            with self._cond:
                if ticket in self._line:
                    self._line.remove(ticket)
                self._cond.notify_all()
            raise

    def _memory_short(self, memory: int) -> int:
        """Bytes missing for `memory` more (lock held)."""
        used = self.baseline + sum(r.memory for r in self._jobs.values()) + sum(self._holds.values())
        return used + memory - self.budget

    def _cpus_free(self) -> int:
        return self.cpu_slots - sum(r.cpus for r in self._jobs.values())

    # Models held by sessions -------------------------------------------------------------------
    def hold(self, key: str, memory: int, force: bool = False) -> None:
        """Count `memory` bytes as held by `key` (a session's models) from now on, replacing what it
        held; idle sessions' models are dropped to make room. Raises `UserError` when even that
        leaves no room (nothing is changed then), unless `force`: a training's model, whose memory
        its run had reserved until now, is always kept."""
        memory = int(memory)
        if memory > min(self.models_cap, self.job_budget) and not force:
            raise UserError("error.model_too_big_for_memory", need=_mb(memory), limit=_mb(self.models_cap))
        for _ in range(2):  # try, drop idle models, try again
            with self._cond:
                over_cap = sum(self._holds.values()) - self._holds.get(key, 0) + memory - self.models_cap
                short = max(over_cap, self._memory_short(memory - self._holds.get(key, 0)))
                if short <= 0:
                    self._holds[key] = memory
                    return
            if self.evict is None or self.evict(short, key) <= 0:
                break
        if not force:
            raise UserError("error.models_memory_full", need=_mb(memory), limit=_mb(self.models_cap))
        with self._cond:
            self._holds[key] = memory

    def release(self, key: str) -> None:
        """`key` holds nothing any more."""
        with self._cond:
            if self._holds.pop(key, None) is not None:
                self._cond.notify_all()

    def held(self, key: str) -> int:
        with self._cond:
            return self._holds.get(key, 0)


def return_freed_memory() -> None:
    """Hand the heap's freed blocks back to the system (glibc's `malloc_trim`): without it, the
    memory a finished job freed stays in the server's RSS, where the container's limit counts it."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


def _job_name(job: str) -> Msg | str:
    """A job's name in the reader's language ("training", "evaluation", "export")."""
    return Msg(f"job.{job}") if job in JOBS else job


def _mb(size: int) -> str:
    return f"{size / MB:,.0f}".replace(",", " ")
