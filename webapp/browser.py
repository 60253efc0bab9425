"""The Generate tab's "In your browser" backend: the session's exported model runs in the visitor's
browser with onnxruntime-web, through the export page's own code (`export/web/page.mjs`,
`simple_llm.mjs`: gpt's decoding loop in JavaScript). The server exports the model and serves
files; it computes nothing for the generation.

The JavaScript runtime is served by this app when it is installed (`npm ci`), else the browser
loads it from the CDN with integrity hashes, and only once a user picks this backend: the import
map in the page's head names the modules, it fetches nothing by itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from export import BrowserRuntime, browser_runtime, runtime_tags

BROWSER = "browser"
ROUTE = "simple-llm-web"  # the app serves this backend's files under ./simple-llm-web/<n>/, never under a server path
PRECISIONS = ("int8", "fp32")  # int8 first: the smaller download


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


def _with_page(script: str, found: BrowserRuntime) -> str:
    return script.replace("PAGE_URL", json.dumps(_url(found.page_modules / "page.mjs", found)))


STOP_JS = "() => { window.simpleLLMStop = true; }"

_COMPARE_JS = """
async (backend, files, reference, report) => {
  if (backend !== "browser" || !reference || !reference.expected) return report;
  const ru = (navigator.language || "").startsWith("ru");
  try {
    const page = await import(new URL(PAGE_URL, document.baseURI).href);
    const { model, tokenizer, precision } = await page.loadFromFiles(files);
    const got = [];
    for await (const token of model.generateTokens(reference.ids, { maxNewTokens: reference.expected.length }, [])) got.push(token);
    const first = reference.expected.findIndex((token, i) => got[i] !== token);
    const n = reference.expected.length;
    const verdict = first < 0
      ? (ru ? `жадные токены совпадают с PyTorch (${n} из ${n})` : `greedy tokens agree with PyTorch (${n} of ${n})`)
      : (ru ? `жадные токены расходятся с PyTorch с позиции ${first}` : `greedy tokens differ from PyTorch from position ${first}`);
    const text = tokenizer.decode(got).replaceAll("`", "'").replaceAll("\\n", "⏎");
    const title = ru ? `**В вашем браузере** (onnxruntime-web, ${precision})` : `**In your browser** (onnxruntime-web, ${precision})`;
    return `${title}: ${verdict}\\n\\n\\`${text}\\`\\n\\n${report}`;
  } catch (error) {
    return `${ru ? "Ошибка в браузере" : "Error in your browser"}: ${error.message || error}\\n\\n${report}`;
  }
}
"""

_RUN_JS = """
async (files, prompt, maxNewTokens, mode, temperature, topK, topP, minP, repetitionPenalty, stopStrings, seed) => {
  const ru = (navigator.language || "").startsWith("ru");
  const box = document.querySelector("#gen-output textarea");
  const fail = (error) => [prompt, (ru ? "Ошибка в браузере: " : "Error in your browser: ") + (error.message || error)];
  try {
    const page = await import(new URL(PAGE_URL, document.baseURI).href);  // relative to the app, not this script
    const loaded = await page.loadFromFiles(files);
    const { threads, precision } = loaded;
    if (mode === "sampling" && (seed === "" || seed === null)) seed = Math.floor(Math.random() * 2 ** 31);
    const sampling = page.samplingFrom({ maxNewTokens, mode, temperature, topK, topP, minP, repetitionPenalty, stopStrings, seed });
    window.simpleLLMStop = false;
    const { text, tokens, seconds } = await page.generateText(
      loaded, prompt, sampling, (text) => (box.value = prompt + text), () => window.simpleLLMStop,
    );
    const rate = (tokens / Math.max(seconds, 1e-9)).toFixed(1);
    const where = ru ? `в вашем браузере (onnxruntime-web, ${precision}, потоков: ${threads})` : `in your browser (onnxruntime-web, ${precision}, ${threads} thread(s))`;
    const parts = [ru ? `${tokens} токенов` : `${tokens} tokens`, ru ? `**${rate} ток/с**` : `**${rate} tokens/s**`, where];
    if (mode === "sampling") parts.push((ru ? "сид " : "seed ") + seed);
    if (window.simpleLLMStop) parts.push(ru ? "остановлено" : "stopped");
    return [prompt + text, parts.join(" · ")];
  } catch (error) {
    return fail(error);
  }
}
"""
