"""`web/`: a page inside every export that runs the model in the visitor's browser, offline from
any static file server (`python -m http.server`, GitHub Pages, a static Space).

The page (`export/web/index.html`, `page.mjs`) generates with `simple_llm.mjs`, the decoding loop
of `gpt/generation.py` for onnxruntime's JavaScript API, on onnxruntime-web (WebAssembly), with
the tokenizer of @huggingface/tokenizers reading the export's `tokenizer.json`. Both libraries are
pinned in `export/web/runtime.json`: their files are copied from `node_modules` (`npm ci`) when
they are there with the pinned hashes, else the page loads them from a CDN, checked against the
same hashes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEB_DIR = "web"
PAGE_FILE = "web/index.html"
SOURCE = Path(__file__).resolve().parent / "web"
PAGE_ASSETS = ("page.mjs", "simple_llm.mjs", "worker.mjs")
NODE_MODULES = Path(__file__).resolve().parents[1] / "node_modules"
RUNTIME = json.loads((SOURCE / "runtime.json").read_text(encoding="utf-8"))
CDN_NOTE = (
    f"the web page loads onnxruntime-web and the tokenizer from {RUNTIME['cdn']} (integrity-checked): "
    "run `npm ci` in simple-llm before exporting for a page that works offline"
)
"""What an export made without the installed runtime says (its report's `left_out`, its card)."""


def write_page(folder: Path, graph: str, precision: str, node_modules: Path = NODE_MODULES) -> list[str]:
    """Write `folder/web/` for the graph `graph` (a path inside `folder`); return what the page
    leaves to the network (empty when it runs offline)."""
    web = folder / WEB_DIR
    web.mkdir(exist_ok=True)  # it may hold the browser's graph already
    local = local_runtime(node_modules)
    if local is not None:
        for source in local:
            shutil.copyfile(source, web / source.name)
        tags = runtime_tags({name: f"./{Path(path).name}" for name, path in RUNTIME["imports"].items()}, {}, "./", None)
        notes = []
    else:
        tags = _cdn_tags()
        notes = [CDN_NOTE]
    page = (SOURCE / "index.html").read_text(encoding="utf-8").replace("<!-- RUNTIME -->", tags)
    (web / "index.html").write_text(page, encoding="utf-8")
    for name in PAGE_ASSETS:
        shutil.copyfile(SOURCE / name, web / name)
    model = {"graph": graph, "precision": precision}
    (web / "model.json").write_text(json.dumps(model, indent=2) + "\n", encoding="utf-8")
    return notes


def local_runtime(node_modules: Path = NODE_MODULES) -> list[Path] | None:
    """The pinned runtime files in `node_modules`, or None when any is missing or not the pinned one."""
    found = []
    for package, pinned in RUNTIME["packages"].items():
        for file, integrity in pinned["files"].items():
            path = node_modules / package / file
            if not path.is_file() or sri(path) != integrity:
                return None
            found.append(path)
    return found


def sri(path: Path) -> str:
    """The subresource-integrity hash of a file, as the browser checks it."""
    return "sha384-" + base64.b64encode(hashlib.sha384(path.read_bytes()).digest()).decode()


def _pinned(path: str) -> tuple[str, str]:
    """The CDN address of `package/file` at the pinned version, and its integrity hash."""
    for package, pinned in RUNTIME["packages"].items():
        if path.startswith(package + "/"):
            file = path[len(package) + 1 :]
            return f"{RUNTIME['cdn']}{package}@{pinned['version']}/{file}", pinned["files"][file]
    raise KeyError(path)


def _cdn_tags() -> str:
    cdn = browser_runtime(Path("/nonexistent"))
    return runtime_tags(
        {k: str(v) for k, v in cdn.modules.items()}, cdn.integrity, str(cdn.wasm_dir), cdn.wasm_integrity
    )


def runtime_tags(
    imports: dict[str, str], integrity: dict[str, str], wasm_paths: str, wasm_integrity: str | None
) -> str:
    """The import map (with integrity for CDN modules) and the page's runtime settings (`cdn`: the
    CDN the runtime comes from, null when it is served with the page, for messages that say so)."""
    importmap: dict[str, Any] = {"imports": imports}
    if integrity:
        importmap["integrity"] = integrity
    settings = {"wasmPaths": wasm_paths, "wasmIntegrity": wasm_integrity, "cdn": RUNTIME["cdn"] if integrity else None}
    return (
        f'<script type="importmap">{json.dumps(importmap)}</script>\n'
        f'<script type="application/json" id="simple-llm-runtime">{json.dumps(settings)}</script>'
    )


@dataclass(frozen=True)
class BrowserRuntime:
    """Where a page finds the JavaScript runtime: for each module specifier a local file (to be
    served) or a CDN address (with its integrity hash), and the same for the WebAssembly."""

    modules: dict[str, Path | str]  # "onnxruntime-web" / "@huggingface/tokenizers" -> file or URL
    integrity: dict[str, str]  # CDN URL -> hash (empty when local)
    wasm_dir: Path | str  # the folder (or URL prefix) of ort-wasm-simd-threaded.{mjs,wasm}
    wasm_integrity: str | None
    page_modules: Path = SOURCE  # page.mjs and simple_llm.mjs

    @property
    def local(self) -> bool:
        return isinstance(self.wasm_dir, Path)


def browser_runtime(node_modules: Path = NODE_MODULES) -> BrowserRuntime:
    """The runtime of a page served by an app: the installed pinned files, else the CDN's."""
    if local_runtime(node_modules) is not None:
        modules = {name: node_modules / path for name, path in RUNTIME["imports"].items()}
        return BrowserRuntime(modules, {}, (node_modules / RUNTIME["wasm"]).parent, None)
    modules = {name: _pinned(path)[0] for name, path in RUNTIME["imports"].items()}
    glue = RUNTIME["wasm"].replace(".wasm", ".mjs")
    integrity = dict(_pinned(path) for path in (*RUNTIME["imports"].values(), glue))
    wasm_url, wasm_integrity = _pinned(RUNTIME["wasm"])
    return BrowserRuntime(modules, integrity, wasm_url.rsplit("/", 1)[0] + "/", wasm_integrity)
