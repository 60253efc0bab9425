"""Runs the runtimes that live outside the suite's environment, on an export folder.

- Node: transformers.js (`@huggingface/transformers`), onnxruntime-node and the tokenizers of
  `package.json` / `package-lock.json` (`ONNXRUNTIME_NODE_INSTALL=skip npm ci` in the repository
  root; `.ci/run` does it).
- optimum: `ORTModelForCausalLM` in `.venv-optimum`, a side environment because optimum-onnx pins
  `transformers<4.58` (`.ci/run` builds it: torch, then `optimum-onnx[onnxruntime]`).

Each call skips the calling test with the install command when its runtime is missing, and fails
it under `CI=true` (`needs.py`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from needs import NPM_CI, need, need_node

REPO = Path(__file__).resolve().parents[1]
TRANSFORMERS_JS = REPO / "node_modules" / "@huggingface" / "transformers"
NODE_SCRIPT = REPO / "tests" / "js" / "transformers_js.mjs"
OPTIMUM_PYTHON = REPO / ".venv-optimum" / "bin" / "python"
OPTIMUM_SCRIPT = REPO / "tests" / "optimum_greedy.py"
TIMEOUT = 600


def _answer(command: list[str]) -> dict:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def node_answer(script: Path, request: dict, package: Path) -> dict:
    """Run `script` under Node with `request` as JSON and return its JSON answer; skip the calling
    test when Node or the npm `package` it needs is missing (fail it under CI=true)."""
    node = need_node()
    need(package.is_dir(), f"{package.name} is not installed: run `{NPM_CI}` in the repository")
    return _answer([node, str(script), json.dumps(request)])


def _transformers_js(request: dict) -> dict:
    return node_answer(NODE_SCRIPT, request, TRANSFORMERS_JS)


def transformers_js_generate(folder: Path, ids: list[int], new_tokens: int, dtype: str = "fp32") -> list[int]:
    """transformers.js's greedy continuation of `ids` from the export `folder` (`dtype` "fp32" loads
    `onnx/model.onnx`, "q8" `onnx/model_quantized.onnx`)."""
    request = {"folder": str(folder), "dtype": dtype, "generate": ids, "new_tokens": new_tokens}
    return _transformers_js(request)["generated"]


def transformers_js_encode(folder: Path, text: str) -> list[int]:
    """transformers.js's token ids of `text` with the export `folder`'s tokenizer."""
    return _transformers_js({"folder": str(folder), "encode": [text]})["encoded"][0]


def optimum_generate(folder: Path, ids: list[int], new_tokens: int) -> tuple[list[int], str]:
    """optimum's greedy continuation of `ids` from the export `folder`, and the graph it loaded."""
    need(
        OPTIMUM_PYTHON.is_file(),
        "optimum is not installed: python -m venv .venv-optimum && .venv-optimum/bin/pip install "
        "torch 'optimum-onnx[onnxruntime]'",
    )
    answer = _answer([str(OPTIMUM_PYTHON), str(OPTIMUM_SCRIPT), str(folder), str(new_tokens), *map(str, ids)])
    return answer["generated"], answer["graph"]
