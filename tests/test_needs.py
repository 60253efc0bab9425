"""tests/needs.py: a missing runtime skips a test on a developer's machine and fails it under CI=true."""

import needs
import pytest
from _pytest.outcomes import Failed, Skipped
from needs import need, need_linux, need_module


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


def test_a_platform_requirement_fails_under_ci_too(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(needs.sys, "platform", "darwin")
    with pytest.raises(Failed, match="CI=true and the peak RSS needs Linux \\(this is darwin\\)"):
        need_linux("the peak RSS")
    monkeypatch.setattr(needs.sys, "platform", "linux")
    need_linux("the peak RSS")
