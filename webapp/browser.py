"""The Generate tab's "In your browser" backend: the session's exported model runs in the visitor's
browser with onnxruntime-web, through the export page's own code (`export/web/page.mjs`,
`simple_llm.mjs`: gpt's decoding loop in JavaScript). The server exports the model and serves
files; it computes nothing for the generation.

The JavaScript runtime is served by this app when it is installed (`npm ci`), else the browser
loads it from the CDN with integrity hashes, and only once a user picks this backend: the import
map in the page's head names the modules, it fetches nothing by itself. Picking the backend loads
the runtime at once (`probe_js`), so a runtime that cannot arrive (no `npm ci` and no internet)
is reported within `IMPORT_TIMEOUT_S`, with what to do, before any export runs.

Every text the scripts show comes from `webapp.i18n` (the `browser.*` keys), in the browser's language.
"""

from __future__ import annotations

import json
from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from export import BrowserRuntime, browser_runtime, runtime_tags
from webapp.i18n import js_tables, page_language_js

BROWSER = "browser"
ROUTE = "simple-llm-web"  # the app serves this backend's files under ./simple-llm-web/<n>/, never under a server path
PRECISIONS = ("fp32", "int8")  # fp32 first, the default: it passes its parity gate on every model (int8 failed it
# on the tiny preset: top-1 agreement 93.8% < 95%), and gives PyTorch's greedy tokens
IMPORT_TIMEOUT_S = 20  # the runtime's modules must arrive within this, else the user is told why they may not


ISOLATION_HEADERS = {
    # The app's page is cross-origin isolated, so onnxruntime-web may start WebAssembly threads
    # (`SharedArrayBuffer`). "credentialless", not "require-corp": the CDN's runtime (no `npm ci`)
    # and a signed-in visitor's avatar still load, without cookies.
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "credentialless",
    # COOP/COEP isolate a top-level page only: in a Space the app is an iframe of huggingface.co,
    # which is not isolated. This header isolates the frame itself (Chromium 137+); other browsers
    # ignore it and run one thread there.
    "Document-Isolation-Policy": "isolate-and-credentialless",
}


class IsolationHeaders:
    """ASGI middleware: `ISOLATION_HEADERS` on every HTTP response of the app (a header a route
    sets itself is kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_isolated(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in ISOLATION_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_isolated)


def middleware() -> list[Middleware]:
    """The app's middleware for this backend (for `launch`'s `app_kwargs`)."""
    return [Middleware(IsolationHeaders)]


def runtime() -> BrowserRuntime:
    return browser_runtime()


def static_paths(found: BrowserRuntime) -> list[Path]:
    """Folders the app serves for this backend: the page's modules and the installed runtime."""
    paths = [found.page_modules]
    if found.local:
        paths += sorted({Path(path).parent for path in found.modules.values()} | {Path(found.wasm_dir)})
    return paths


def routes(found: BrowserRuntime) -> list[Mount]:
    """The app's routes for `static_paths`, each folder at `./simple-llm-web/<n>/` (for `launch`'s
    `app_kwargs`): the page names files by these addresses, never by where they are on the server."""
    return [Mount(f"/{ROUTE}/{n}", StaticFiles(directory=folder)) for n, folder in enumerate(static_paths(found))]


def _url(target: Path | str, found: BrowserRuntime) -> str:
    """The address of a served file or folder relative to the app's root (a CDN address stays)."""
    if not isinstance(target, Path):
        return target
    for n, folder in enumerate(static_paths(found)):
        if target == folder or folder in target.parents:
            return f"./{ROUTE}/{n}/{target.relative_to(folder).as_posix()}".removesuffix("/.")
    raise ValueError(f"{target.name} is not among the served folders")


def head(found: BrowserRuntime) -> str:
    """The import map and runtime settings `page.mjs` reads, for the app's page head."""
    wasm_dir = _url(found.wasm_dir, found) + ("/" if found.local else "")
    imports = {name: _url(target, found) for name, target in found.modules.items()}
    return runtime_tags(imports, found.integrity, wasm_dir, found.wasm_integrity)


def run_js(found: BrowserRuntime) -> str:
    """The event's client-side function: generate in the browser from the files the server gave
    (`models.browser_files`, as Gradio file values) with the Generate tab's settings; it streams
    into the output box and returns (output, statistics)."""
    return _with_page(_RUN_JS, found)


def compare_js(found: BrowserRuntime) -> str:
    """Compare's client-side step on the browser backend: the browser's greedy ids for the prompt
    PyTorch's reference was made from, and where they first differ, above the server's report."""
    return _with_page(_COMPARE_JS, found)


def probe_js(found: BrowserRuntime) -> str:
    """The backend choice's client-side step: on picking this backend, load the runtime; when it
    cannot be loaded, the statistics line says why and what to do (else it stays as it was)."""
    return _with_page(_PROBE_JS, found)


def strings() -> dict[str, dict[str, str]]:
    """The scripts' texts, per language: the `browser.*` keys of `webapp.i18n`."""
    return js_tables("browser.")


def _with_page(script: str, found: BrowserRuntime) -> str:
    helpers = _HELPERS.replace("STRINGS", json.dumps(strings(), ensure_ascii=False))
    helpers = helpers.replace("PAGE_LANGUAGE", page_language_js())
    helpers = helpers.replace("IMPORT_TIMEOUT_S", str(IMPORT_TIMEOUT_S))
    page = json.dumps(_url(found.page_modules / "page.mjs", found))
    return script.replace("HELPERS;", helpers).replace("PAGE_URL", page)


# Shared by the scripts: texts in the browser's language, and the page's modules loaded within
# IMPORT_TIMEOUT_S, a failure naming what is missing (the CDN's runtime: `npm ci` on the server).
_HELPERS = """
  const T = STRINGS[PAGE_LANGUAGE];
  const say = (key, values = {}) => T[key].replace(/\\{(\\w+)\\}/g, (_, name) => String(values[name]));
  const missing = (error) => {
    const found = document.getElementById("simple-llm-runtime");
    const cdn = found ? JSON.parse(found.textContent).cdn : null;
    return cdn ? say("browser.no_runtime_cdn", { cdn }) : say("browser.no_runtime_local", { error: error.message || error });
  };
  const loadPage = () => {
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(say("browser.slow", { seconds: IMPORT_TIMEOUT_S }))), IMPORT_TIMEOUT_S * 1000);
    });
    return Promise.race([import(new URL(PAGE_URL, document.baseURI).href), late]).then(  // relative to the app
      (page) => { clearTimeout(timer); return page; },
      (error) => { clearTimeout(timer); throw new Error(missing(error)); },
    );
  };
  // page.mjs marks a runtime file it could not fetch (the CDN's WebAssembly) with code "runtime"
  const problem = (error) => say("browser.error", { error: error.code === "runtime" ? missing(error) : error.message || error });
"""


STOP_JS = "() => { window.simpleLLMStop = true; }"

_PROBE_JS = """
async (backend, stats) => {
  if (backend !== "browser") return stats;
  HELPERS;
  try {
    await loadPage();
    return stats;
  } catch (error) {
    return problem(error);
  }
}
"""

_COMPARE_JS = """
async (backend, files, reference, report) => {
  if (backend !== "browser" || !reference || !reference.expected) return report;
  HELPERS;
  try {
    const page = await loadPage();
    const { model, tokenizer, precision } = await page.loadFromFiles(files);
    const got = [];
    for await (const token of model.generateTokens(reference.ids, { maxNewTokens: reference.expected.length }, [])) got.push(token);
    const first = reference.expected.findIndex((token, i) => got[i] !== token);
    const n = reference.expected.length;
    const verdict = first < 0 ? say("browser.agree", { n }) : say("browser.differ", { position: first });
    const text = tokenizer.decode(got).replaceAll("`", "'").replaceAll("\\n", "⏎");
    return `${say("browser.title", { precision })}: ${verdict}\\n\\n\\`${text}\\`\\n\\n${report}`;
  } catch (error) {
    return `${problem(error)}\\n\\n${report}`;
  }
}
"""

_RUN_JS = """
async (files, prompt, maxNewTokens, mode, temperature, topK, topP, minP, repetitionPenalty, stopStrings, seed) => {
  HELPERS;
  const box = document.querySelector("#gen-output textarea");
  try {
    const page = await loadPage();
    const loaded = await page.loadFromFiles(files);
    const { threads, precision, isolated } = loaded;
    if (mode === "sampling" && (seed === "" || seed === null)) seed = Math.floor(Math.random() * 2 ** 31);
    const sampling = page.samplingFrom({ maxNewTokens, mode, temperature, topK, topP, minP, repetitionPenalty, stopStrings, seed });
    window.simpleLLMStop = false;
    const { text, tokens, seconds } = await page.generateText(
      loaded, prompt, sampling, (text) => (box.value = prompt + text), () => window.simpleLLMStop,
    );
    const rate = (tokens / Math.max(seconds, 1e-9)).toFixed(1);
    const isolation = isolated ? say("browser.isolated") : say("browser.not_isolated");
    const parts = [say("browser.tokens", { tokens }), say("browser.rate", { rate }), say("browser.where", { precision, threads, isolation })];
    if (mode === "sampling") parts.push(say("browser.seed", { seed }));
    if (window.simpleLLMStop) parts.push(say("browser.stopped"));
    return [prompt + text, parts.join(" · ")];
  } catch (error) {
    return [prompt, problem(error)];
  }
}
"""
