"""tests/needs.py: a missing runtime skips a test on a developer's machine and fails it under CI=true."""

import pytest
from _pytest.outcomes import Failed, Skipped
from needs import need, need_module


def test_a_missing_runtime_skips_with_its_reason(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    need(True, "present: nothing happens")
    with pytest.raises(Skipped, match="chromium not found"):
        need(False, "chromium not found")
    with pytest.raises(Skipped, match="no_such_module_here"):
        need_module("no_such_module_here", "not installed")


def test_under_ci_a_missing_runtime_fails_with_its_reason(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(Failed, match="CI=true and chromium not found"):
        need(False, "chromium not found")
    with pytest.raises(Failed, match="not installed"):
        need_module("no_such_module_here", "not installed")
    assert need_module("json", "the standard library").dumps([]) == "[]"
