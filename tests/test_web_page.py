"""The page inside every export (`web/`): served by `python -m http.server`, it runs the model in
Chromium with onnxruntime-web and writes PyTorch's greedy text; its logits match onnxruntime's.
Playwright drives Debian's Chromium, as in the app's browser test; skips without them."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from needs import need, need_npm_package

from export import OnnxGPT, to_onnx, webpage
from gpt import GPT

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 120_000
IMPORT_TIMEOUT_S = 20  # export/web/index.html's limit for the runtime's modules


@pytest.fixture(scope="module")
def model(tiny_model) -> GPT:
    return tiny_model


@pytest.fixture(scope="module")
def options_model(tiny_model) -> GPT:
    """A model with every option that is not GPT-2 (random weights, the tiny model's tokenizer)."""
    torch.manual_seed(0)
    shape = dict(max_seq_len=48, emb_size=32, num_heads=4, num_layers=2, dropout=0.0)
    model = GPT(vocab_size=tiny_model.config.vocab_size, **shape, qk_norm=True, logit_softcap=30.0, rotary=True)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(30)  # logits far apart: greedy choices without near ties
    model.tokenizer = tiny_model.tokenizer
    return model.eval()


@pytest.fixture(scope="module")
def exports(tiny_export, tiny_model, options_model, tmp_path_factory) -> dict[str, Path]:
    """The session's fp32 and int8 exports of the tiny model, linked side by side into a folder of
    this module's (the pages without the runtime are copies beside them), a CPU fp16 export and an
    export of `options_model`."""
    root = tmp_path_factory.mktemp("web-exports")
    for precision in ("fp32", "int8"):
        (root / precision).symlink_to(tiny_export(precision), target_is_directory=True)
    found = {p: root / p for p in ("fp32", "int8")}
    found["fp16"] = to_onnx(tiny_model, root / "fp16", precision="fp16", provider="cpu", portable=False, threads=1)
    found["options"] = to_onnx(options_model, root / "options", threads=1)
    return found


def test_runtime_pins_match_the_installed_packages():
    need_npm_package("onnxruntime-web")
    package = json.loads((REPO / "package.json").read_text())["dependencies"]
    for name, pinned in webpage.RUNTIME["packages"].items():
        assert package[name] == pinned["version"]  # package.json and runtime.json pin the same versions
    assert webpage.local_runtime() is not None  # every file there, with the pinned hash


@pytest.mark.slow  # the int8 export, which no other fast test needs: not in the fast tier
def test_every_export_holds_the_page(tiny_export):
    folder, int8 = tiny_export("fp32"), tiny_export("int8")
    names = {p.name for p in (folder / "web").iterdir()}
    assert {"index.html", "page.mjs", "simple_llm.mjs", "worker.mjs", "model.json"} <= names
    page = json.loads((folder / "web" / "model.json").read_text())  # fp32: the portable graph (growing pasts)
    assert page == {"graph": "onnx/model.onnx", "precision": "fp32"} and (folder / page["graph"]).is_file()
    page = json.loads((int8 / "web" / "model.json").read_text())  # int8: its own, dequantized at load
    assert page == {"graph": "web/model.onnx", "precision": "int8"} and (int8 / page["graph"]).is_file()
    if webpage.local_runtime() is not None:  # offline: the runtime is beside the page, no CDN address anywhere
        assert {
            "ort.wasm.min.mjs",
            "ort-wasm-simd-threaded.mjs",
            "ort-wasm-simd-threaded.wasm",
            "tokenizers.min.mjs",
        } <= names
        assert "https://" not in (folder / "web" / "index.html").read_text()


def test_without_the_installed_runtime_the_page_uses_the_cdn_with_integrity(tmp_path):
    notes = webpage.write_page(tmp_path, "model_fast.onnx", "fp32", node_modules=tmp_path / "none")
    assert notes and "npm ci" in notes[0]
    html = (tmp_path / "web" / "index.html").read_text()
    importmap = json.loads(html.split('<script type="importmap">', 1)[1].split("</script>", 1)[0])
    url = "https://cdn.jsdelivr.net/npm/onnxruntime-web@1.30.0/dist/ort.wasm.min.mjs"
    assert importmap["imports"]["onnxruntime-web"] == url and importmap["integrity"][url].startswith("sha384-")
    glue = "https://cdn.jsdelivr.net/npm/onnxruntime-web@1.30.0/dist/ort-wasm-simd-threaded.mjs"
    assert glue in importmap["integrity"]  # the module onnxruntime-web imports itself
    runtime = json.loads(html.split('id="simple-llm-runtime">', 1)[1].split("</script>", 1)[0])
    assert (
        runtime["wasmIntegrity"]
        == webpage.RUNTIME["packages"]["onnxruntime-web"]["files"]["dist/ort-wasm-simd-threaded.wasm"]
    )
    assert not (tmp_path / "web" / "ort-wasm-simd-threaded.wasm").exists()


# --- in a real browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(chromium):
    need(
        webpage.local_runtime() is not None,
        "the JavaScript runtime is not installed (ONNXRUNTIME_NODE_INSTALL=skip npm ci): an offline page needs it",
    )
    return chromium


@pytest.fixture(scope="module")
def served(exports, tmp_path_factory):
    """`python -m http.server` over the folder that holds both exports, as a user would serve one."""
    root = exports["fp32"].parent
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    yield url
    server.terminate()
    server.wait(10)


def _open(browser, server: str, path: str):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    outside = []  # anything not from the static server: fonts, CDNs, analytics
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server, "data:", "blob:")) else None)
    page.goto(server + path)
    page.wait_for_function("document.querySelector('#status').textContent.includes('Ready')")
    return page, outside


def test_the_served_page_writes_pytorchs_greedy_text(browser, served, model):
    page, outside = _open(browser, served, "/fp32/web/index.html")
    prompt = "ROMEO:\n"
    expected = model.generate_text(prompt, 60)
    page.fill("#prompt", prompt)
    page.fill("#max-new-tokens", "60")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Done')")
    assert page.eval_on_selector("#output", "e => e.textContent") == prompt + expected
    assert "tokens/s" in page.inner_text("#status") and outside == []
    page.close()


def test_onnxruntime_web_logits_match_onnxruntime(browser, served, exports, model):
    page, _ = _open(browser, served, "/fp32/web/index.html")
    ids = model.tokenizer.encode("KING HENRY:\nOnce more unto the breach")
    web = page.evaluate(
        "async (ids) => { const { model } = await window.simpleLLM.ready;"
        " return Array.from((await model.step(ids, null, 0, 0)).logits); }",
        ids,
    )
    onnx = OnnxGPT.load(exports["fp32"], threads=1)
    positions = np.arange(len(ids), dtype=np.int64)[None]
    logits, _ = onnx.run(np.array([ids], np.int64), np.ones((1, len(ids)), np.int64), positions)
    assert np.abs(np.array(web, np.float32) - logits[0, -1]).max() < 1e-4
    page.close()


def test_the_int8_page_writes_native_onnxruntime_int8s_greedy_text(browser, served, exports):
    page, outside = _open(browser, served, "/int8/web/index.html")
    assert "int8" in page.inner_text("#status")
    prompt = "JULIET:\n"
    graph = json.loads((exports["int8"] / "web" / "model.json").read_text(encoding="utf-8"))["graph"]
    expected = OnnxGPT.load(exports["int8"], threads=1, graph=graph).generate_text(prompt, 40)  # the page's graph
    page.fill("#prompt", prompt)
    page.fill("#max-new-tokens", "40")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Done')")
    assert page.eval_on_selector("#output", "e => e.textContent") == prompt + expected and outside == []
    page.close()


def test_the_apps_browser_backend_falls_back_to_the_cdn_with_integrity(tmp_path):
    from webapp import browser

    cdn = webpage.browser_runtime(tmp_path / "none")
    assert not cdn.local and browser.static_paths(cdn) == [webpage.SOURCE]  # only the page's own modules
    head = browser.head(cdn)
    importmap = json.loads(head.split('<script type="importmap">', 1)[1].split("</script>", 1)[0])
    assert all(url.startswith("https://cdn.jsdelivr.net/npm/") for url in importmap["imports"].values())
    assert set(importmap["imports"].values()) <= set(importmap["integrity"])
    if webpage.local_runtime() is not None:
        local = webpage.browser_runtime()
        assert local.local and "https://" not in browser.head(local)
        assert webpage.NODE_MODULES / "onnxruntime-web" / "dist" in browser.static_paths(local)
    for found in (cdn, webpage.browser_runtime()):  # the page names files by the app's routes, never by server paths
        scripts = browser.head(found) + browser.run_js(found) + browser.compare_js(found)
        assert str(webpage.SOURCE) not in scripts and str(webpage.NODE_MODULES) not in scripts
        assert "./simple-llm-web/0/page.mjs" in scripts
        assert [route.path for route in browser.routes(found)] == [
            f"/simple-llm-web/{n}" for n in range(len(browser.static_paths(found)))
        ]


# --- without the runtime: the page says what is missing, within seconds ----------------------------


def _cdn_page(exports, name: str) -> None:
    """A copy of the fp32 export, beside the served ones, whose page was written without the
    installed runtime (as on a clone without `npm ci`): it loads the runtime from the CDN."""
    folder = exports["fp32"].parent / name
    if not folder.exists():
        shutil.copytree(exports["fp32"], folder)
        shutil.rmtree(folder / "web")
        assert webpage.write_page(folder, "model_fast.onnx", "fp32", node_modules=folder / "none") == [webpage.CDN_NOTE]


def _error_status(page) -> str:
    """The page's status once it shows an error; fails (never hangs) when none comes in time."""
    limit_ms = (IMPORT_TIMEOUT_S + 40) * 1000  # generous: the page's own limit is IMPORT_TIMEOUT_S
    page.wait_for_function("document.querySelector('#status').classList.contains('error')", timeout=limit_ms)
    return page.inner_text("#status")


def test_a_page_without_the_runtime_and_offline_says_to_run_npm_ci(chromium, served, exports):
    _cdn_page(exports, "cdn")
    page = chromium.new_page()
    page.route("https://cdn.jsdelivr.net/**", lambda route: route.abort("internetdisconnected"))  # no network
    page.goto(served + "/cdn/web/index.html")
    status = _error_status(page)
    assert "onnxruntime-web could not be loaded from the CDN (https://cdn.jsdelivr.net/npm/)" in status, status
    assert "`npm ci`" in status and "Loading" not in status
    page.close()


def test_a_page_whose_webassembly_cannot_arrive_says_to_run_npm_ci(browser, served, exports):
    """The CDN's modules arrive (from node_modules, with the pinned hashes) but its WebAssembly does not."""
    _cdn_page(exports, "cdn-wasm")
    files = {
        f"{webpage.RUNTIME['cdn']}{package}@{pinned['version']}/{file}": webpage.NODE_MODULES / package / file
        for package, pinned in webpage.RUNTIME["packages"].items()
        for file in pinned["files"]
    }

    def cdn(route):
        url = route.request.url
        if url.endswith(".wasm") or url not in files:
            route.abort("internetdisconnected")
        else:  # the CDN answers cross-origin requests with CORS headers: integrity checks need them
            cors = {"access-control-allow-origin": "*"}
            route.fulfill(path=str(files[url]), content_type="text/javascript", headers=cors)

    page = browser.new_page()
    page.route("https://cdn.jsdelivr.net/**", cdn)
    page.goto(served + "/cdn-wasm/web/index.html")
    status = _error_status(page)
    assert "could not be loaded from the CDN" in status and "`npm ci`" in status, status
    page.close()


# --- the worker, Stop, retries, int8 and fp16 pages -------------------------------------------------


def test_the_int8_page_gives_native_onnxruntimes_greedy_tokens_on_its_graph(browser, served, exports, model):
    """The browser's int8 graph (8-bit weights, dequantized once at load) decodes as onnxruntime does."""
    page, _ = _open(browser, served, "/int8/web/index.html")
    graph = json.loads((exports["int8"] / "web" / "model.json").read_text())["graph"]
    ids = model.tokenizer.encode("ROMEO:\n")
    web = page.evaluate(
        "async (ids) => { const { model } = await window.simpleLLM.ready; const got = [];"
        " for await (const t of model.generateTokens(ids, { maxNewTokens: 60 })) got.push(t); return got; }",
        ids,
    )
    native = OnnxGPT.load(exports["int8"], threads=1, graph=graph).generate([ids], 60)[0, len(ids) :].tolist()
    assert web == native
    page.close()


LONG_GENERATION = 1_000_000  # tokens: minutes of decoding at the page's speed


def test_the_page_decodes_in_a_worker_and_stays_responsive(browser, served):
    page, _ = _open(browser, served, "/fp32/web/index.html")
    assert page.evaluate("async () => Boolean((await window.simpleLLM.ready).model.worker)")
    # long enough to outlast this process's round trips: the worker wrote 1,024 tokens in 0.7 s once,
    # before the checks below had run on a loaded machine; Stop ends it long before its end
    page.fill("#max-new-tokens", str(LONG_GENERATION))
    page.click("#generate")
    page.wait_for_function("window.simpleLLM.progress().tokens > 5")
    page.fill("#prompt", "typed while generating")  # the page takes input meanwhile
    assert page.input_value("#prompt") == "typed while generating"
    assert page.inner_text("#status").startswith("Generating")
    seen = page.evaluate(
        "() => { const n = window.simpleLLM.progress().tokens; document.getElementById('stop').click(); return n; }"
    )
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Done')")
    status = page.inner_text("#status")
    assert "stopped" in status
    tokens = int(status.split(":", 1)[1].split("tokens", 1)[0])
    assert seen <= tokens <= seen + 1 < LONG_GENERATION  # Stop ends the generation within one token
    page.close()


def test_the_model_downloads_while_onnxruntime_web_starts(browser, served):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    requested = []
    page.on("request", lambda r: requested.append(r.url.rsplit("/", 1)[-1]))
    page.goto(served + "/fp32/web/index.html")
    page.wait_for_function("document.querySelector('#status').textContent.includes('Ready')")
    assert requested.index("model.onnx") < requested.index("ort-wasm-simd-threaded.wasm")  # not one after the other
    page.close()


def test_a_loaded_model_warms_up_while_the_visitor_types_and_then_writes_pytorchs_text(browser, served, model):
    page, _ = _open(browser, served, "/fp32/web/index.html")
    page.wait_for_function("window.simpleLLM.ready.then((loaded) => (window.loaded = loaded)) && window.loaded")
    page.wait_for_function("window.loaded.model.warmUpTokens > 0")  # decoded, then ended by itself (2 s)
    page.fill("#prompt", "ROMEO:\n")
    page.fill("#max-new-tokens", "40")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Done')")
    assert page.eval_on_selector("#output", "e => e.textContent") == "ROMEO:\n" + model.generate_text("ROMEO:\n", 40)
    page.close()


def test_a_failed_load_is_retried_and_a_replaced_model_released(browser, served, exports):
    page, _ = _open(browser, served, "/fp32/web/index.html")
    files = {}
    for name in ("fp32", "int8"):
        graph = json.loads((exports[name] / "web" / "model.json").read_text())["graph"]
        paths = [graph, "config.json", "tokenizer.json", "tokenizer_config.json", "web/model.json"]
        files[name] = [{"orig_name": Path(p).name, "url": f"{served}/{name}/{p}"} for p in paths]
    failing = {"on": True}
    graph = files["fp32"][0]["url"].removeprefix(served)
    page.route(f"**{graph}", lambda route: route.abort() if failing["on"] else route.continue_())
    load = "async (files) => { const page = await import('./page.mjs'); return (await page.loadFromFiles(files)).precision; }"
    with pytest.raises(Exception):
        page.evaluate(load, files["fp32"])
    failing["on"] = False
    assert page.evaluate(load, files["fp32"]) == "fp32"  # tried again, not the cached failure
    released, reused, text = page.evaluate(
        "async ([a, b]) => { const page = await import('./page.mjs'); const first = await page.loadFromFiles(a);"
        " let released = false; const release = first.model.release.bind(first.model);"
        " first.model.release = () => { released = true; return release(); };"
        " const second = await page.loadFromFiles(b); const loop = await import('./simple_llm.mjs'); let text = '';"
        " for await (const piece of loop.streamText(second.model, second.tokenizer, second.eosId, 'ROMEO:',"
        " { maxNewTokens: 8 })) text += piece;"
        " return [released, second.model.worker === first.model.worker, text]; }",
        [files["fp32"], files["int8"]],
    )
    assert released and reused  # the replaced model's session freed, its worker (compiled, warm) loads the next
    graph = json.loads((exports["int8"] / "web" / "model.json").read_text(encoding="utf-8"))["graph"]
    assert text == OnnxGPT.load(exports["int8"], threads=1, graph=graph).generate_text("ROMEO:", 8)  # the new model
    page.close()


def test_a_model_with_the_options_that_are_not_gpt2_writes_pytorchs_greedy_text(
    browser, served, exports, options_model
):
    assert json.loads((exports["options"] / "web" / "model.json").read_text())["graph"] == "web/model.onnx"
    page, _ = _open(browser, served, "/options/web/index.html")
    page.fill("#prompt", "ROMEO:\n")
    page.fill("#max-new-tokens", "30")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Done')")
    expected = "ROMEO:\n" + options_model.generate_text("ROMEO:\n", 30)
    assert page.eval_on_selector("#output", "e => e.textContent") == expected
    page.close()


def test_a_cpu_fp16_export_has_a_page_that_generates(browser, served, exports):
    assert json.loads((exports["fp16"] / "web" / "model.json").read_text()) == {
        "graph": "model_fast.onnx",
        "precision": "fp16",
    }
    page, _ = _open(browser, served, "/fp16/web/index.html")
    page.fill("#prompt", "ROMEO:\n")
    page.fill("#max-new-tokens", "20")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Done')")
    assert (
        "Done: 20 tokens" in page.inner_text("#status")
        and len(page.eval_on_selector("#output", "e => e.textContent")) > 7
    )
    page.close()


def test_seeds_take_the_apps_whole_range(browser, served):
    page, _ = _open(browser, served, "/fp32/web/index.html")
    seeds = page.evaluate(
        "async () => { const page = await import('./page.mjs'); const seed = (s) => {"
        " try { return String(page.samplingFrom({ maxNewTokens: 1, mode: 'sampling', temperature: 1, topK: 0, topP: 1,"
        " minP: 0, repetitionPenalty: 1, stopStrings: '', seed: s }).seed); } catch (e) { return 'error'; } };"
        " return [seed('9223372036854775807'), seed('9223372036854775808'), seed('-1'), seed('7')]; }"
    )
    assert seeds == ["9223372036854775807", "error", "error", "7"]
    page.close()
