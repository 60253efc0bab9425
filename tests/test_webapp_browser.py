"""Web app in a real browser: Playwright for Python driving Debian's Chromium (never a downloaded one).

Clicks through train -> generate (PyTorch, then onnxruntime CPU) -> compare -> export -> download,
then opens the page in Russian. Screenshots go to $SIMPLE_LLM_SCREENSHOTS (the README's come from
`SIMPLE_LLM_SCREENSHOTS=docs/screenshots python -m pytest tests/test_webapp_browser.py`), else to
a temporary folder. Skips when /usr/bin/chromium or playwright is missing (fails under CI=true).
"""

import contextlib
import http.server
import io
import os
import re
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from needs import REPO, need_chromium, need_npm_package
from PIL import Image
from webapp_common import app_settings, launch

from gpt import GPT, Tokenizer
from webapp import training

SCREENSHOTS = os.environ.get("SIMPLE_LLM_SCREENSHOTS")
PRESET_STEPS = 1500  # the tiny preset's step count, the field's default
TRAIN_STEPS = PRESET_STEPS if SCREENSHOTS else 300  # the README's screenshots show the whole tiny preset
TIMEOUT_MS = 180_000
TRAIN_TIMEOUT_MS = 900_000  # the app trains at nice 10: when other processes keep both cores busy,
# it gets about a tenth of the CPU, and 300 steps that take 20 s on a quiet machine took over 180 s
RUNTIME_INSTALLED = (REPO / "node_modules" / "onnxruntime-web").is_dir()  # by `npm ci`
DONE = r"^(?![\s\S]*generating)[\s\S]*"  # a regex prefix: the stats line of a finished generation

sync_api = need_chromium(module_level=True)  # skips the module without them (fails it under CI=true)

pytestmark = [
    pytest.mark.slow,  # servers and browsers: not in the fast tier
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*(no_silent_downcasting|copy keyword).*"),
]


@pytest.fixture(scope="module")
def server(settings):
    demo, address = launch(settings)
    yield address.rstrip("/"), demo
    demo.close()


@pytest.fixture(scope="module")
def cdn_server(tmp_path_factory):
    """The app as on a clone without `npm ci`: no runtime of its own, the browser backend's is the CDN's."""
    from export import browser_runtime
    from webapp import browser as browser_backend

    settings = app_settings(tmp_path_factory.mktemp("artifacts-cdn"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(browser_backend, "runtime", lambda: browser_runtime(tmp_path_factory.mktemp("no-node-modules")))
        demo, address = launch(settings)
    assert "https://cdn.jsdelivr.net/" in demo.simple_llm_head
    yield address.rstrip("/")
    demo.close()


@pytest.fixture(scope="module")
def browser(chromium):
    return chromium


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(SCREENSHOTS or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, url: str, locale: str, frame_delay_ms: int = 0):
    """A new browser context on the app; `frame_delay_ms` holds back every animation frame's callbacks
    by that long, as a busy machine does."""
    context = browser.new_context(locale=locale, viewport={"width": 1360, "height": 900}, accept_downloads=True)
    page = context.new_page()
    if frame_delay_ms:
        page.add_init_script(SLOW_FRAMES_JS % frame_delay_ms)
    page.set_default_timeout(TIMEOUT_MS)
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None)
    page.goto(url, wait_until="load")
    page.wait_for_selector("#train-start")
    return context, page, outside


def wait_text(page, selector: str, pattern: str, timeout_ms: int = TIMEOUT_MS) -> str:
    try:
        page.wait_for_function(
            "([s, p]) => { const e = document.querySelector(s); return e && new RegExp(p).test(e.innerText); }",
            arg=[selector, pattern],
            timeout=timeout_ms,
        )
    except sync_api.TimeoutError:
        shown = page.locator(selector).inner_text(timeout=1000) if page.locator(selector).count() else "(absent)"
        pytest.fail(f"{selector} never matched {pattern!r} in {timeout_ms / 1000:.0f} s; it shows: {shown!r}")
    return page.inner_text(selector)


SLOW_FRAMES_JS = """
const frame = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => frame((time) => setTimeout(() => callback(time), %d));
"""
TWO_FRAMES_JS = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"
ADVANCED = "#train-advanced button, #train-advanced .label-wrap"
STOP_ONCE_TEXT_APPEARS = """() => {
    const watch = () => document.querySelector('#gen-output textarea').value.length > 8
        ? document.querySelector('#gen-stop').click()
        : requestAnimationFrame(watch);
    watch();
}"""


def reveal(page, opener, shown: str) -> None:
    """Open an accordion or a tab the way a user does: click `opener`, see `shown`, then act.

    Gradio 6 mounts a closed accordion's or an unvisited tab's components on their first reveal and,
    an animation frame later, sets them again to the values the page was loaded with
    (`render_previously_invisible_children` in its js/core/src/init.svelte.ts): a value typed before
    that frame is lost. A person cannot type that fast (the frame runs before the field is drawn); a
    test can, and on a busy machine the frame comes late: CI saw steps typed right after opening
    "Advanced" come back as 1500. So this waits two frames once `shown` is there."""
    (page.locator(opener) if isinstance(opener, str) else opener).click()
    page.locator(shown).first.wait_for()
    page.evaluate(TWO_FRAMES_JS)


def type_number(page, selector: str, value: int) -> None:
    """Type `value` into a number field the way a user does (type, then leave the field)."""
    field = page.locator(selector)
    field.fill(str(value))
    field.press("Tab")
    sync_api.expect(field).to_have_value(str(value))


def test_typed_settings_stay_whatever_else_the_page_updates(browser, server):
    """Typed values stay whatever else updates the Train tab's controls. Two causes of a typed step
    count coming back as the preset's were found: the presets applied on `.change`, which also fires
    when the page re-renders the radio (they now apply on `.input`, a user's pick), and Gradio's
    first reveal of the "Advanced" accordion (see `reveal`). The page runs with slow animation
    frames, as on a busy machine: typing right after the first click on "Advanced" loses the value
    on every run."""
    url, _ = server
    context, page, _ = open_page(browser, url, "en-US", frame_delay_ms=400)
    reveal(page, ADVANCED, "#train-steps input")
    steps, dropout = page.locator("#train-steps input"), page.locator("#train-dropout input")
    sync_api.expect(steps).to_have_value(str(PRESET_STEPS))
    type_number(page, "#train-steps input", 300)
    type_number(page, "#train-dropout input", 0.2)
    rotary = page.locator("#train-rotary input[type=checkbox]")
    sync_api.expect(rotary).not_to_be_checked()
    rotary.check()
    for start in ("saved", "new", "current", "new"):  # hides and shows the presets and the model picker
        page.locator(f'#train-start-from input[value="{start}"]').check()
        sync_api.expect(page.locator("#train-preset")).to_be_visible(visible=start == "new")
    for source in ("upload", "sample"):
        page.locator(f'#train-source input[value="{source}"]').check()
    page.get_by_role("tab", name="Generate").click()  # the other tabs, and back
    page.get_by_role("tab", name="Models").click()
    page.get_by_role("tab", name="Train").click()
    page.wait_for_timeout(1000)  # any late page-load update
    sync_api.expect(steps).to_have_value("300")
    sync_api.expect(dropout).to_have_value("0.2")
    sync_api.expect(rotary).to_be_checked()
    page.locator('#train-preset input[value="small"]').check()  # the user's pick: the preset's values
    sync_api.expect(steps).not_to_have_value("300")
    sync_api.expect(rotary).not_to_be_checked()  # the presets are GPT-2 models
    context.close()


def test_train_generate_compare_export_download(browser, server, shots, tmp_path):
    url, _ = server
    context, page, outside = open_page(browser, url, "en-US")
    reveal(page, ADVANCED, "#train-steps input")
    sync_api.expect(page.locator("#train-steps input")).to_have_value(str(PRESET_STEPS))
    type_number(page, "#train-steps input", TRAIN_STEPS)
    page.click("#train-start")
    # The run must start (tokenizer first) within TIMEOUT_MS, else the failure says the click was
    # never answered, not that training was slow.
    wait_text(page, "#train-status", "Training the tokenizer|step")
    status = wait_text(page, "#train-status", f"Finished at step {TRAIN_STEPS}\\b", TRAIN_TIMEOUT_MS)
    assert "tokens/s" in status and "Python standard library" in status
    page.wait_for_selector("#train-plot canvas, #train-plot svg")
    assert "[step" in page.locator("#train-sample textarea").input_value()
    page.screenshot(path=str(shots / "train.png"), full_page=True)

    reveal(page, page.get_by_role("tab", name="Generate"), "#gen-prompt textarea")
    cuda = page.locator('#gen-backend label:has(input[value="ort-cuda"])')
    if "Unavailable here" in page.inner_text("#gen-backend"):
        assert float(cuda.evaluate("e => getComputedStyle(e).opacity")) < 1  # greyed out with the reason shown
    prompt = page.locator("#gen-prompt textarea")  # the start of the training text (the first module's docstring)
    sync_api.expect(prompt).to_have_value(re.compile('^"""'))
    sync_api.expect(page.locator("#gen-mode input[value=sampling]")).to_be_checked()  # the default: sampling
    page.locator("#gen-mode label", has_text="Greedy").click()  # greedy: the backends must agree
    page.click("#gen-start")
    torch_stats = wait_text(page, "#gen-stats", DONE + "tokens/s")
    torch_text = page.locator("#gen-output textarea").input_value()
    assert torch_text.startswith(prompt.input_value()) and "torch cpu" in torch_stats
    page.click("#gen-look button, #gen-look .label-wrap")  # why it wrote this: tokens by probability
    wait_text(page, "#gen-token-details", "Click a token")
    page.locator("#gen-tokens .token").nth(1).click()
    assert "most likely tokens" in wait_text(page, "#gen-token-details", "had probability")
    page.locator("#gen-backend label", has_text="onnxruntime CPU").click()
    page.click("#gen-start")
    wait_text(page, "#gen-stats", DONE + "CPUExecutionProvider")
    assert page.locator("#gen-output textarea").input_value() == torch_text  # greedy: same text on both backends
    generate_in_the_browser(page, server[1], torch_text)
    page.click("#gen-compare")
    report = wait_text(page, "#gen-compare-report", "Max logit difference")
    assert re.search(r"greedy tokens:\s*agree", report)
    page.click("#gen-preset input")  # the "code" preset of the original design switches to sampling
    page.get_by_role("option", name="Code").click()
    page.wait_for_function("document.querySelector('#gen-temperature input[type=number]').value === '0.8'")
    page.locator("#gen-seed input").fill("1")
    page.click("#gen-start")
    wait_text(page, "#gen-stats", DONE + "seed 1")
    page.screenshot(path=str(shots / "generate.png"), full_page=True)

    reveal(page, page.get_by_role("tab", name="Models"), "#model-save-name input")
    page.locator("#model-save-name input").fill("stdlib-tiny")
    page.click("#model-save")
    wait_text(page, "#model-message", "Saved as stdlib-tiny")
    page.click("#model-download")
    model_link = page.locator("#model-zip a").first
    model_link.wait_for()
    assert model_link.get_attribute("href").endswith("stdlib-tiny.zip")
    page.click("#export-start")
    wait_text(page, "#export-report", "max logit difference")
    link = page.locator("#export-zip a").first
    link.wait_for()
    assert link.get_attribute("href").endswith(".zip")
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "export.zip"
    download.value.save_as(saved)
    names = {n.split("/", 1)[1] for n in zipfile.ZipFile(saved).namelist()}  # inside its top folder
    expected = {"model_fast.onnx", "onnx/model.onnx", "config.json", "tokenizer.json", "genai_config.json"}
    assert expected | {"export_report.json", "README.md"} <= names
    page.screenshot(path=str(shots / "models.png"), full_page=True)
    assert outside == []  # fully offline: no fonts, CDNs or analytics
    context.close()


def test_train_a_saved_model_further_on_another_text(browser, server, shots):
    url, demo = server
    texts = [Path("data/shakespeare-excerpt.txt").read_text(encoding="utf-8")[:20_000]]
    seed = GPT(vocab_size=300, max_seq_len=32, emb_size=16, num_heads=2, num_layers=1)
    seed.tokenizer = Tokenizer.train(texts, vocab_size=300)
    seed.save(demo.simple_llm.services.settings.models_dir / "seed-model")
    context, page, outside = open_page(browser, url, "en-US")
    page.locator("#train-start-from label", has_text="A saved model").click()
    sync_api.expect(page.locator("#train-preset")).to_be_hidden()  # the server's answer: the model picker instead
    page.click("#train-start-model input")
    page.get_by_role("option", name=re.compile("^seed-model")).click()
    page.locator("#train-source label", has_text="Built-in sample").click()
    page.click("#train-sample-corpus input")
    page.get_by_role("option", name=re.compile("^Shakespeare")).click()
    sync_api.expect(page.locator("#train-sample-corpus input")).to_have_value(re.compile("^Shakespeare"))
    reveal(page, ADVANCED, "#train-steps input")
    type_number(page, "#train-steps input", 30)
    page.click("#train-start")
    wait_text(page, "#train-status", r"Finished at step 30\b", TRAIN_TIMEOUT_MS)
    page.locator("#train-start-from label", has_text="The current model").click()  # and further again
    type_number(page, "#train-steps input", 20)
    page.click("#train-start")
    wait_text(page, "#train-status", r"Finished at step 20\b", TRAIN_TIMEOUT_MS)
    page.wait_for_timeout(500)  # the last frame drawn
    for series, colour in training.COLOURS.items():  # the earlier curve too, each in its own colour
        assert colour_pixels(page.locator("#train-plot").screenshot(), colour) > 20, f"{series} ({colour}) not drawn"
    page.screenshot(path=str(shots / "train-further.png"), full_page=True)
    reveal(page, page.get_by_role("tab", name="Models"), "#eval-text textarea")
    summary = wait_text(page, "#model-current", "trained further on")
    assert "seed-model, trained further on Shakespeare" in summary and "context 32" in summary  # its shape
    held_out = "KING RICHARD:\nNow is the winter of our discontent\nMade glorious summer by this sun of York."
    page.locator("#eval-text textarea").fill(held_out)
    page.click("#eval-start")
    assert "nats per byte" in wait_text(page, "#eval-message", "nats per byte")
    page.locator("#eval-model label", has_text="The saved model chosen above").click()
    page.click("#model-saved input")
    page.get_by_role("option", name="seed-model").click()
    page.click("#eval-start")
    wait_text(page, "#eval-message", "^seed-model on")  # the saved one, before it trained further
    table = page.inner_text("#eval-table")
    assert table.count("seed-model") == 2 and "trained further" in table and "nats per byte" in table
    page.screenshot(path=str(shots / "evaluate.png"), full_page=True)
    assert outside == []
    context.close()


def colour_pixels(png: bytes, colour: str) -> int:
    """How many pixels of a screenshot are within a small distance of `colour` ("#rrggbb")."""
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(int)
    return int((np.abs(pixels - target).sum(axis=1) < 24).sum())


def generate_in_the_browser(page, demo, torch_text: str) -> None:
    """The browser backend: the same greedy text as PyTorch, computed by onnxruntime-web in this
    page from the app's own copy of the runtime, without a generate call reaching the server."""
    need_npm_package("onnxruntime-web")  # without it the page would fetch the runtime from the CDN
    fn = {fn.api_name: i for i, fn in demo.fns.items()}
    calls, files = [], []
    page.on("request", lambda r: calls.append(r.post_data or "") if "queue/join" in r.url else None)
    page.on("request", lambda r: files.append(r.url) if "/simple-llm-web/" in r.url else None)
    page.locator("#gen-backend label", has_text="In your browser").click()
    sync_api.expect(page.locator("#gen-start")).to_be_hidden()  # its own button instead (after a server round trip)
    sync_api.expect(page.locator("#gen-browser")).to_be_visible()
    # the default precision, untouched: it passes its parity gate on the preset's model (int8 did not)
    sync_api.expect(page.locator("#gen-browser-precision input:checked")).to_have_value("fp32")
    page.click("#gen-browser")
    stats = wait_text(page, "#gen-stats", "in your browser|Error")
    assert "in your browser (onnxruntime-web, fp32" in stats and "tokens/s" in stats, stats
    # the app's headers isolate the page; it decodes on one thread, the fastest (page.mjs `DEFAULT_THREADS`)
    assert "fp32, 1 thread(s), page cross-origin isolated)" in stats, stats
    assert page.locator("#gen-output textarea").input_value() == torch_text
    assert "generation on the server" in page.inner_text("#gen-token-details")  # why it wrote this: what it covers
    assert any(url.endswith("ort-wasm-simd-threaded.wasm") for url in files)  # served by the app
    called = [body.replace(" ", "") for body in calls]
    assert any(f'"fn_index":{fn["browser_model"]},' in body for body in called)  # the files, from the server
    assert not any(f'"fn_index":{fn["generate"]},' in body for body in called)  # the tokens, from this page
    page.click("#gen-compare")  # Compare covers it: the browser's greedy ids against PyTorch's
    report = wait_text(page, "#gen-compare-report", "In your browser|Error in your browser")
    assert re.search(
        r"In your browser \(onnxruntime-web, fp32\): greedy tokens agree with PyTorch \((\d+) of \1\)", report
    )
    page.locator("#gen-max-new input[type=number]").fill("1024")  # Stop ends a long one, between two steps
    page.locator("#gen-max-new input[type=number]").press("Tab")
    page.evaluate("document.querySelector('#gen-output textarea').value = ''")
    # Stop is clicked by the page itself in the first frame with text: a click from this process comes
    # a round trip later, which a loaded machine can stretch past the 1,024 tokens' end (1.5 s)
    page.evaluate(STOP_ONCE_TEXT_APPEARS)
    page.click("#gen-browser")
    stopped = wait_text(page, "#gen-stats", "stopped|1024 tokens")
    assert "stopped" in stopped and int(stopped.split(" tokens")[0]) < 1024, stopped
    page.locator("#gen-seed textarea, #gen-seed input").first.fill("abc")  # checked on the server first
    page.click("#gen-browser")
    page.get_by_test_id("toast-text").filter(has_text="seed = 'abc' is not valid").wait_for()
    page.locator("#gen-seed textarea, #gen-seed input").first.fill("")
    page.locator("#gen-backend label", has_text="PyTorch").click()


SPACE_FRAME = """<!doctype html><title>a Space</title>
<iframe id="app" src="%s" style="width: 100%%; height: 90vh"
  allow="clipboard-read; clipboard-write; fullscreen"
  sandbox="allow-downloads allow-forms allow-modals allow-popups allow-same-origin allow-scripts"></iframe>"""


@contextlib.contextmanager
def serve_page(html: str):
    """`html` at http://localhost:<port>/: another origin than the app's 127.0.0.1, both loopback
    (Chromium's local-network checks block a public page from framing a local one)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(html.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_the_page_is_cross_origin_isolated_alone_and_inside_another_sites_frame(browser, server):
    """The browser backend's WebAssembly threads need a cross-origin isolated page. The app's own
    page is isolated by its COOP/COEP headers; inside another site's iframe, as a Hugging Face Space
    shows it (huggingface.co, not isolated, framing the app's own origin), COOP/COEP cannot isolate
    it and Document-Isolation-Policy does (Chromium 137+). The framing page here is another origin,
    its iframe sandboxed as a Space's is. Headless Chromium denies such a frame its storage (as a
    browser blocking third-party cookies does): the page still loads, its owner key in memory."""
    url, _ = server
    context, page, _ = open_page(browser, url + "/", "en-US")
    assert page.evaluate("crossOriginIsolated")
    with serve_page(SPACE_FRAME % (url + "/")) as space:
        page.goto(space)
        page.frame_locator("#app").locator("#train-start").wait_for()
        app = next(frame for frame in page.frames if frame.url.startswith(url))
        assert not page.evaluate("crossOriginIsolated")  # the framing page
        assert app.evaluate("crossOriginIsolated") and app.evaluate("typeof SharedArrayBuffer") == "function"
        assert app.evaluate("localStorage.constructor.name") == "MemoryStorage"  # owners.storage_fallback_head
    context.close()


def test_russian_interface_and_messages(browser, server, shots):
    url, demo = server
    context, page, outside = open_page(browser, url, "ru-RU")
    assert page.get_by_role("tab", name="Обучение").is_visible()
    assert page.locator("#train-start").inner_text().strip() == "Обучить"
    plot = wait_text(page, "#train-plot", "шаг")  # axis and legend titles, set on load
    assert not re.search(r"\b(step|loss|split)\b", plot), plot
    page.get_by_role("tab", name="Генерация").click()
    backend = page.inner_text("#gen-backend")
    assert "В вашем браузере (onnxruntime-web)" in backend and "In your browser" not in backend, backend
    page.click("#gen-look button, #gen-look .label-wrap")
    page.locator("#gen-backend label", has_text="В вашем браузере").click()  # why it wrote this: what it covers
    assert "на сервере" in wait_text(page, "#gen-token-details", "PyTorch, onnxruntime")
    page.locator("#gen-backend label", has_text="PyTorch").click()
    page.click("#gen-start")  # this new session has no model yet
    toast = page.get_by_test_id("toast-text").filter(has_text="Модели ещё нет")
    toast.wait_for()
    assert toast.is_visible()
    title = page.get_by_test_id("toast-body").filter(has_text="Модели ещё нет").locator(".toast-title")
    sync_api.expect(title).to_have_text("Ошибка")  # Gradio's own title is its type in English
    page.get_by_role("tab", name="Модели").click()
    headers = page.inner_text("#eval-table")  # the empty results table names its columns
    assert "нат на байт" in headers and not re.search(r"\b1\s+2\s+3\b", headers), headers
    page.get_by_role("tab", name="Генерация").click()
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(800)  # let the toast finish sliding in
    page.screenshot(path=str(shots / "generate-ru.png"))  # the viewport, with the error toast
    if RUNTIME_INSTALLED:
        assert outside == []
    else:  # picking the browser backend loads the runtime: from the CDN only, without `npm ci`
        assert all(u.startswith("https://cdn.jsdelivr.net/npm/") for u in outside), outside
    sessions = len(demo.simple_llm.services.sessions)
    page.goto("about:blank")  # leaving the page ends its session: its folders are deleted
    page.wait_for_function("1")
    deadline = time.monotonic() + 30
    while len(demo.simple_llm.services.sessions) >= sessions and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(demo.simple_llm.services.sessions) == sessions - 1
    context.close()


@pytest.mark.parametrize(
    ("locale", "tab", "expected"),
    [
        ("en-US", "Generate", "onnxruntime-web could not be loaded from the CDN (https://cdn.jsdelivr.net/npm/)"),
        ("ru-RU", "Генерация", "Не удалось загрузить onnxruntime-web из CDN (https://cdn.jsdelivr.net/npm/)"),
    ],  # fmt: skip
)
def test_without_npm_ci_and_offline_the_browser_backend_says_so_at_once(browser, cdn_server, locale, tab, expected):
    """Picking the browser backend loads its runtime: offline, from a server without `npm ci`, the
    statistics line says what is missing and how to get it, in the page's language, within
    browser.IMPORT_TIMEOUT_S (checked with a generous limit that fails instead of hanging)."""
    from webapp import browser as browser_backend

    context, page, outside = open_page(browser, cdn_server, locale)
    page.route("https://cdn.jsdelivr.net/**", lambda route: route.abort("internetdisconnected"))  # no network
    page.get_by_role("tab", name=tab).click()
    page.locator('#gen-backend label:has(input[value="browser"])').click()
    stats = wait_text(page, "#gen-stats", "npm ci", (browser_backend.IMPORT_TIMEOUT_S + 40) * 1000)
    assert expected in stats and "dynamically imported module" not in stats, stats
    assert "page.mjs" not in stats and "/simple-llm-web/" not in stats  # names what is missing, not the importer
    assert outside and all(url.startswith("https://cdn.jsdelivr.net/npm/") for url in outside)  # only the CDN was tried
    context.close()
