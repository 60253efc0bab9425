"""README.md's commands work verbatim in a fresh clone: every file they name ships with the
repository or is made by an earlier command of the README (`--out X`, `> X`, `save("X")`, ...)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"```(?:bash|python)\n(.*?)```", re.DOTALL)
MADE = re.compile(r'(?:--out\s+|>\s*|\.save\(|to_onnx\([^,]+,\s*|checkpoint_dir=)"?([\w./-]+)"?')
NAMED = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)+[\w.-]+|[\w-]+\.(?:txt|md|json|py|onnx|zip))(?![\w/])")


def _commands() -> list[str]:
    """The README's code lines, comments removed, in reading order."""
    lines = [line for block in BLOCK.findall(README) for line in block.splitlines()]
    return [re.sub(r"(^|\s)#.*", "", line) for line in lines]


def test_every_file_the_readmes_commands_name_exists_or_an_earlier_command_makes_it():
    made: list[str] = []
    missing = []
    for line in _commands():
        outputs = MADE.findall(line)
        for name in NAMED.findall(line):
            if "://" in line and name in line.split("://", 1)[1] or name in outputs:
                continue
            if not ((REPO / name).exists() or any(name == m or name.startswith(m.rstrip("/") + "/") for m in made)):
                missing.append(f"{name} (in: {line.strip()})")
        made += outputs
    assert not missing, missing
    assert "data/shakespeare-excerpt.txt" in README and "runs/held-out.txt" in made  # the check sees both


def test_ci_runs_the_readmes_test_command_with_durations_and_ci_true():
    """`.ci/run` runs what the README's test section says, listing the slowest tests, under CI=true
    (missing runtimes fail there instead of skipping: tests/needs.py)."""
    tests = README.split("## Tests", 1)[1]
    command = re.search(r"&& (python -m pytest[^`]*)`", tests)[1]
    ci = [line.split("#")[0].strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert f"CI=true {command} --durations=25" in ci
    assert '`python -m pytest -q -m "not slow"`' in tests and "slow:" in (REPO / "pyproject.toml").read_text()
