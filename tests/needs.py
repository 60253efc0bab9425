"""What a test needs from outside the suite's Python environment, checked honestly.

A missing runtime (Chromium, Node.js, an npm package, the optimum side environment, an optional
Python package) skips the test with its reason on a developer's machine, but fails it under
`CI=true`: `.ci/run` installs all of them, so a missing one there is a broken install, not a reason
to turn green. Only a missing GPU skips everywhere (plain `pytest.skip`, not these helpers).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's: Playwright cannot download its own browser here
NPM_CI = "ONNXRUNTIME_NODE_INSTALL=skip npm ci"


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def need(condition: object, reason: str, module_level: bool = False) -> None:
    """Skip the calling test (or module) with `reason` unless `condition` holds; under CI=true, fail."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def need_module(name: str, reason: str, module_level: bool = False) -> ModuleType:
    """`import name`, or `need(False, reason)`."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        need(False, f"{reason} ({err})", module_level)
        raise  # not reached: need() skips or fails


def need_chromium(module_level: bool = False) -> ModuleType:
    """Playwright's sync API, with Debian's Chromium beside it."""
    sync_api = need_module("playwright.sync_api", "playwright for Python is not installed", module_level)
    need(CHROMIUM.is_file(), f"{CHROMIUM} not found: apt-get install -y chromium", module_level)
    return sync_api


def need_node() -> str:
    node = shutil.which("node")
    need(node is not None, "Node.js 18 or newer is not installed")
    return node


def need_npm_package(name: str) -> Path:
    """node_modules/`name`, installed by `npm ci` from package-lock.json."""
    package = REPO / "node_modules" / name
    need(package.is_dir(), f"the npm package {name} is not installed: run `{NPM_CI}` in the repository")
    return package


def need_gloo() -> None:
    """torch.distributed with its gloo backend, for multi-process CPU runs."""
    import torch.distributed as dist

    need(
        dist.is_available() and dist.is_gloo_available(),
        "torch.distributed with the gloo backend is not available in this torch build",
    )


def need_linux(what: str) -> None:
    """A Linux-only measurement; `what` says what it reads from the platform."""
    need(sys.platform.startswith("linux"), f"{what} needs Linux (this is {sys.platform})")
