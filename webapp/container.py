"""What this server may really use: the container's memory and CPU limits, not the host's.

In a container (a Hugging Face Space, Docker, Kubernetes) the kernel enforces the cgroup's limits:
a server that sizes itself from the host's memory is killed by the OOM killer, not refused with a
Python exception. So the defaults of `webapp.settings` come from here:

- memory: cgroup v2 `memory.max`, or v1 `memory.limit_in_bytes`, of this process's cgroup and its
  ancestors (the smallest), else the physical memory;
- CPUs: cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us / cpu.cfs_period_us`, and the affinity mask
  (the smallest), else `os.cpu_count()`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as about 2**63; anything this large is none


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpus: int
    source: str  # where the figures come from, for the log: "cgroup v2", "cgroup v1" or "host"


def detect(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Limits:
    """The memory and CPUs this process may use (see the module docstring)."""
    host_memory = _host_memory()
    host_cpus = _affinity_cpus()
    memory, cpus, source = _cgroup_limits(root, _cgroup_paths(proc_cgroup))
    return Limits(
        memory_bytes=min(host_memory, memory) if memory else host_memory,
        cpus=max(1, min(host_cpus, cpus)) if cpus else host_cpus,
        source=source if (memory or cpus) else "host",
    )


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        return 8 * 1024**3


def _affinity_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """This process's cgroup path by controller ("" for v2's unified hierarchy), from /proc."""
    paths: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _cgroup_limits(root: Path, paths: dict[str, str]) -> tuple[int, int, str]:
    """(memory bytes or 0, CPUs or 0, source) from cgroup v2 when mounted, else v1."""
    if (root / "cgroup.controllers").is_file():  # v2: one hierarchy
        folders = _ancestors(root, paths.get("", "/"))
        memory = _smallest(_read_int(folder / "memory.max") for folder in folders)
        cpus = _smallest(_v2_cpus(folder / "cpu.max") for folder in folders)
        return memory, cpus, "cgroup v2"
    memory_folders = _ancestors(root / "memory", paths.get("memory", "/"))
    cpu_folders = _ancestors(root / "cpu", paths.get("cpu", paths.get("cpu,cpuacct", "/")))
    memory = _smallest(_read_int(folder / "memory.limit_in_bytes") for folder in memory_folders)
    cpus = _smallest(_v1_cpus(folder) for folder in cpu_folders)
    return memory, cpus, "cgroup v1"


def _ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup folder of `path` under `mount` and each parent up to the mount (a container sees
    its own cgroup as the mount's root, so both the full path and the root are tried)."""
    folders = [mount]
    current = mount
    for part in [p for p in path.split("/") if p and p != ".."]:
        current = current / part
        folders.append(current)
    return [folder for folder in folders if folder.is_dir()]


def _read_int(path: Path) -> int:
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):  # missing, or "max"
        return 0
    return value if 0 < value < UNLIMITED else 0


def _v2_cpus(path: Path) -> int:
    try:
        quota, period = (path.read_text().split() + ["100000"])[:2]
    except OSError:
        return 0
    if quota == "max":
        return 0
    return _cpus(int(quota), int(period))


def _v1_cpus(folder: Path) -> int:
    quota = _read_signed(folder / "cpu.cfs_quota_us")
    period = _read_signed(folder / "cpu.cfs_period_us")
    return _cpus(quota, period) if quota > 0 and period > 0 else 0


def _read_signed(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _cpus(quota: int, period: int) -> int:
    """A CPU quota as whole CPUs (1.5 CPUs -> 2: a thread can use the half)."""
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else 0


def _smallest(values) -> int:
    found = [v for v in values if v > 0]
    return min(found) if found else 0
