"""The server's admission controller (`webapp.capacity`) and the container limits its budgets
default from (`webapp.container`)."""

import threading
import time
from pathlib import Path

import pytest

from webapp import container
from webapp.capacity import Cancelled, Capacity
from webapp.i18n import UserError
from webapp.settings import MB, Settings

GB = 1024 * MB


# Container limits ------------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_memory_max_and_cpu_max_are_the_limits(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu memory")
    _write(root / "memory.max", "max\n")
    _write(root / "space" / "memory.max", f"{4 * GB}\n")
    _write(root / "space" / "cpu.max", "150000 100000\n")
    proc = tmp_path / "proc-cgroup"
    _write(proc, "0::/space\n")
    limits = container.detect(root, proc)
    assert limits.memory_bytes == 4 * GB
    assert limits.cpus == min(2, container._affinity_cpus())  # 1.5 CPUs: two threads can use them
    assert limits.source == "cgroup v2"


def test_cgroup_v1_limit_in_bytes_and_cfs_quota_are_the_limits(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "memory" / "memory.limit_in_bytes", f"{3 * GB}\n")
    _write(root / "cpu" / "cpu.cfs_quota_us", "100000\n")
    _write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc-cgroup"
    _write(proc, "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")  # the container sees its own as root
    limits = container.detect(root, proc)
    assert (limits.memory_bytes, limits.cpus, limits.source) == (3 * GB, 1, "cgroup v1")


def test_no_cgroup_limit_means_the_host(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "unlimited"
    _write(root / "cpu" / "cpu.cfs_quota_us", "-1\n")
    limits = container.detect(root, tmp_path / "missing")
    assert limits.memory_bytes == container._host_memory()
    assert limits.cpus == container._affinity_cpus()
    assert limits.source == "host"


def test_settings_defaults_follow_the_container(monkeypatch):
    monkeypatch.setattr(container, "detect", lambda: container.Limits(4 * GB, 2, "cgroup v2"))
    settings = Settings.from_env({})
    assert settings.memory_mb == int(0.8 * 4096)
    assert settings.cpus == 2
    assert settings.train_threads == 1
    assert settings.max_models_memory_mb == settings.memory_mb // 4
    assert settings.max_train_memory_mb == settings.memory_mb // 2
    explicit = Settings.from_env({"SIMPLE_LLM_MEMORY_MB": "1000", "SIMPLE_LLM_TRAIN_CONCURRENCY": "2"})
    assert (explicit.memory_mb, explicit.max_train_memory_mb, explicit.max_models_memory_mb) == (1000, 256, 250)


# Admission -------------------------------------------------------------------------------------
def test_a_job_larger_than_the_budget_is_refused_at_once():
    capacity = Capacity(1000 * MB, cpu_slots=2, models_bytes=200 * MB, baseline_bytes=300 * MB)
    with pytest.raises(UserError) as info:
        with capacity.admit("evaluation", 800 * MB):
            pass
    assert info.value.key == "error.job_too_big"
    assert capacity.usage().jobs == 0


def test_jobs_that_fit_together_run_together_and_release_what_they_reserved():
    capacity = Capacity(1000 * MB, cpu_slots=2, models_bytes=200 * MB)
    with capacity.admit("a", 400 * MB), capacity.admit("b", 500 * MB):
        usage = capacity.usage()
        assert (usage.jobs, usage.cpus, usage.running) == (900 * MB, 2, ("a", "b"))
    assert capacity.usage().jobs == 0 and capacity.usage().cpus == 0


def test_a_job_waits_for_memory_then_runs_and_is_refused_when_it_waits_too_long():
    capacity = Capacity(1000 * MB, cpu_slots=4, models_bytes=200 * MB, wait_s=5)
    order = []

    def second():
        with capacity.admit("second", 700 * MB):
            order.append("second")

    with capacity.admit("first", 700 * MB):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.5)
        assert order == []  # 1400 MB would pass the budget: it waits
        order.append("first done")
    waiter.join(10)
    assert order == ["first done", "second"]

    capacity.wait_s = 0.3
    with capacity.admit("long", 700 * MB):
        with pytest.raises(UserError) as info:
            with capacity.admit("late", 700 * MB):
                pass
    assert info.value.key == "error.server_busy"
    assert capacity.usage().jobs == 0


def test_cpu_slots_bound_jobs_whatever_their_memory():
    capacity = Capacity(1000 * MB, cpu_slots=2, models_bytes=100 * MB, wait_s=0.3)
    with capacity.admit("training", 10 * MB, cpus=1), capacity.admit("export", 10 * MB, cpus=1):
        with pytest.raises(UserError):
            with capacity.admit("evaluation", 10 * MB, cpus=1):
                pass
    with capacity.admit("many threads", 10 * MB, cpus=64):  # at most every slot
        assert capacity.usage().cpus == 2


def test_a_cancelled_waiter_leaves_the_line():
    capacity = Capacity(1000 * MB, cpu_slots=1, models_bytes=100 * MB, wait_s=30)
    cancel = threading.Event()
    errors = []

    def waiter():
        try:
            with capacity.admit("waiting", 10 * MB, cancelled=cancel.is_set):
                pass
        except Cancelled as err:
            errors.append(err)

    with capacity.admit("running", 10 * MB):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)
        cancel.set()
        thread.join(5)
    assert len(errors) == 1
    with capacity.admit("next", 10 * MB):  # the line is empty again
        pass


def test_held_models_count_and_idle_ones_are_dropped_to_make_room():
    held = {}

    def evict(need, spare):
        freed = 0
        for key in sorted(held):
            if key != spare and freed < need:
                freed += held.pop(key)
                capacity.release(key)
        return freed

    capacity = Capacity(1000 * MB, cpu_slots=2, models_bytes=300 * MB, evict=evict)
    for key in ("s1", "s2", "s3"):
        capacity.hold(key, 100 * MB)
        held[key] = 100 * MB
    capacity.hold("s4", 100 * MB)  # over the models' cap: the first idle model goes
    held["s4"] = 100 * MB
    assert sorted(held) == ["s2", "s3", "s4"] and capacity.usage().models == 300 * MB
    with capacity.admit("evaluation", 900 * MB):  # a job needs the memory: idle models go too
        assert capacity.usage().models <= 100 * MB
    with pytest.raises(UserError) as info:
        capacity.hold("huge", 400 * MB)
    assert info.value.key == "error.model_too_big_for_memory"
