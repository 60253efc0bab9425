"""The simple-llm web app: `python webapp/app.py` from the repository root, or a Hugging Face Space
(`app_file: webapp/app.py`, which runs this file).

Serves on GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860), fully offline. Server
settings (artifact folder, caps, concurrency, threads) come from environment variables: see
`webapp/settings.py`. This module only assembles the page: each tab is one module with its layout,
events and handlers (`webapp.ui_train`, `webapp.ui_generate`, `webapp.ui_models`), all over one
`webapp.services.Services`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `python webapp/app.py` puts webapp/, not the repository root, on sys.path
    sys.path.insert(0, str(_ROOT))

import gradio as gr  # noqa: E402

from webapp import browser, library, owners, ui_generate, ui_models, ui_train  # noqa: E402
from webapp.i18n import I18N, LANGUAGES, page_language_js, t  # noqa: E402
from webapp.services import Services  # noqa: E402
from webapp.settings import Settings  # noqa: E402


@dataclass(frozen=True)
class SimpleLLM:
    """The app's server side: the shared `services` and each tab's handlers. `build_demo` puts it on
    `demo.simple_llm`; tests and embedding apps call a handler as a page would, e.g.
    `app.train.train(...)`, `app.models.save_model(name, owner_key, request=...)`, and reach the
    sessions as `app.services.sessions`. `SimpleLLM.create(settings)` makes one without a page."""

    services: Services
    train: ui_train.TrainHandlers
    generate: ui_generate.GenerateHandlers
    models: ui_models.ModelsHandlers

    @classmethod
    def create(cls, settings: Settings) -> SimpleLLM:
        services = Services(settings)
        return cls(
            services,
            ui_train.TrainHandlers(services),
            ui_generate.GenerateHandlers(services),
            ui_models.ModelsHandlers(services),
        )


def build_demo(settings: Settings | None = None) -> gr.Blocks:
    """The page: three tabs, each built and wired by its own module over one `SimpleLLM` shared by
    every user (`demo.simple_llm`); the tabs' components that another tab uses are passed explicitly."""
    settings = settings or Settings.from_env()
    app = SimpleLLM.create(settings)
    runtime = browser.runtime()
    with gr.Blocks(title="simple-llm", delete_cache=(3600, 24 * 3600), analytics_enabled=False) as demo:
        demo.simple_llm = app  # for tests and embedding apps
        # for `launch`: the owner key's storage where the browser denies it, the browser backend's import map
        demo.simple_llm_head = owners.storage_fallback_head() + browser.head(runtime)
        demo.simple_llm_routes = browser.routes(runtime)  # and the files it names
        demo.simple_llm_css = ui_train.css() + ui_generate.css()
        gr.Markdown("# simple-llm")
        gr.Markdown(I18N("app.intro"))
        if owners.oauth_enabled():  # a Space with `hf_oauth: true`: signed-in visitors own by their user
            gr.LoginButton()
        owner = gr.BrowserState(  # the visitor's owner key (`webapp.owners`), kept across reloads
            None, storage_key=owners.STORAGE_KEY, secret=owners.browser_secret(library.root(settings))
        )
        with gr.Tabs():
            train = ui_train.build(settings)
            generate = ui_generate.build(settings)
            models = ui_models.build()
        ui_train.wire(demo, train, app.train, current=models.current, owner=owner)
        ui_generate.wire(demo, generate, app.generate, runtime, current=models.current)
        ui_models.wire(demo, models, app.models, owner=owner, start_model=train.start_model)
        demo.unload(app.services.unload)
    demo.queue(max_size=settings.max_queue, default_concurrency_limit=settings.generate_concurrency)
    return demo


def toast_js() -> str:
    """Gradio titles its toasts with their type in English ("Error"): this page script gives them
    the reader's language (chosen as the page's labels choose it: `i18n.page_language_js`)."""
    titles = json.dumps({lang: {"error": t(lang, "error.title")} for lang in LANGUAGES}, ensure_ascii=False)
    return f"""() => {{
  const own = {titles}[{page_language_js()}];
  const retitle = (root) => root.querySelectorAll(".toast-title").forEach((title) => {{
    const kind = Object.keys(own).find((k) => title.classList.contains(k));
    const text = [...title.childNodes].find((n) => n.nodeType === Node.TEXT_NODE && n.nodeValue.trim());
    if (kind && text && text.nodeValue.trim() !== own[kind]) text.nodeValue = own[kind] + " ";
  }});
  new MutationObserver(() => retitle(document)).observe(document.body, {{ childList: true, subtree: true }});
}}"""


def launch_kwargs(settings: Settings, demo: gr.Blocks) -> dict:
    """Everything `launch` needs besides host and port (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT decide those)."""
    return dict(
        i18n=I18N,
        theme=gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]),
        css=demo.simple_llm_css,
        head=demo.simple_llm_head,
        js=toast_js(),
        max_file_size=f"{settings.max_upload_mb}mb",
        footer_links=["api", "settings"],
        # the browser backend's files (before Gradio's own routes) and the headers that let it use threads
        app_kwargs={"routes": demo.simple_llm_routes, "middleware": browser.middleware()},
    )


if __name__ == "__main__":
    _settings = Settings.from_env()
    _demo = build_demo(_settings)
    _demo.launch(**launch_kwargs(_settings, _demo))
