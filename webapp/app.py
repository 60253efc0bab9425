"""The simple-llm web app: `python webapp/app.py` from the repository root, or a Hugging Face Space
(`app_file: webapp/app.py`, which runs this file).

Serves on GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860), fully offline. Server
settings (artifact folder, caps, concurrency, threads) come from environment variables: see
`webapp/settings.py`. This module only assembles the tabs (`webapp.tabs`); the work is in `webapp.handlers`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `python webapp/app.py` puts webapp/, not the repository root, on sys.path
    sys.path.insert(0, str(_ROOT))

import gradio as gr  # noqa: E402

from webapp import backends, browser, library, owners, tabs  # noqa: E402
from webapp.handlers import Handlers  # noqa: E402
from webapp.i18n import I18N, LANGUAGES, t  # noqa: E402
from webapp.settings import Settings  # noqa: E402

CSS = """
#train-status, #gen-stats { min-height: 3.5em; }
#train-sample textarea, #gen-output textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
"""


def _disabled_choice_css(elem_id: str, values: list[str]) -> str:
    """Grey out radio choices that cannot run here (the handler refuses them too, with the reason)."""
    return "".join(
        f'#{elem_id} label:has(input[value="{v}"]) {{ opacity: .45; pointer-events: none; }}\n' for v in values
    )


def _css() -> str:
    unavailable = [b.name for b in backends.backends().values() if not b.available]
    unavailable_devices = [d.name for d in backends.devices().values() if not d.available]
    return (
        CSS
        + _disabled_choice_css("gen-backend", unavailable)
        + _disabled_choice_css("train-device", unavailable_devices)
    )


def build_demo(settings: Settings | None = None) -> gr.Blocks:
    """The app: three tabs (`webapp.tabs`), each wired to one `Handlers` shared by every user."""
    settings = settings or Settings.from_env()
    h = Handlers(settings)
    runtime = browser.runtime()
    with gr.Blocks(title="simple-llm", delete_cache=(3600, 24 * 3600), analytics_enabled=False) as demo:
        demo.handlers = h  # for tests and embedding apps
        demo.simple_llm_head = browser.head(runtime)  # the browser backend's import map, for `launch`
        demo.simple_llm_routes = browser.routes(runtime)  # and the files it names
        demo.simple_llm_css = _css()
        gr.Markdown("# simple-llm")
        gr.Markdown(I18N("app.intro"))
        if owners.oauth_enabled():  # a Space with `hf_oauth: true`: signed-in visitors own by their user
            gr.LoginButton()
        owner = gr.BrowserState(  # the visitor's owner key (`webapp.owners`), kept across reloads
            None, storage_key=owners.STORAGE_KEY, secret=owners.browser_secret(library.root(settings))
        )
        with gr.Tabs():
            train = tabs.build_train_tab(settings)
            generate = tabs.build_generate_tab(settings)
            models = tabs.build_models_tab()
        tabs.wire_train_tab(train, h, settings, current=models.current, owner=owner)
        tabs.wire_generate_tab(generate, h, settings, runtime)
        tabs.wire_models_tab(models, h, settings, owner=owner)
        demo.load(  # the owner key (a new one on a first visit), its models, who owns what is saved here
            h.owner_view, owner, [owner, models.saved, train.start_model, models.owner_note], api_name="owner",
            queue=False,
        )  # fmt: skip
        demo.load(h.model_info, None, models.current, api_name="model_info", queue=False)
        demo.load(h.availability, None, [generate.backend, train.device], api_visibility="private", queue=False)
        demo.load(h.page_labels, None, [train.plot, models.eval_table], api_visibility="private", queue=False)
        models.current.change(  # a new model (trained, loaded): its training text's start as the prompt
            h.suggested_prompt, generate.prompt, generate.prompt, api_visibility="private", queue=False
        )
        demo.unload(h.unload)
    demo.queue(max_size=settings.max_queue, default_concurrency_limit=settings.generate_concurrency)
    return demo


def _toast_js() -> str:
    """Gradio titles its toasts with their type in English ("Error"): this page script gives them
    the reader's language (chosen as `webapp/browser.py` chooses it: the browser's language)."""
    titles = json.dumps({lang: {"error": t(lang, "error.title")} for lang in LANGUAGES})
    return f"""() => {{
  const titles = {titles};
  const lang = (navigator.language || "").toLowerCase().split("-")[0];
  const own = titles[lang];
  if (!own) return;
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
        js=_toast_js(),
        max_file_size=f"{settings.max_upload_mb}mb",
        footer_links=["api", "settings"],
        app_kwargs={"routes": demo.simple_llm_routes},  # before Gradio's own routes
    )


if __name__ == "__main__":
    _settings = Settings.from_env()
    _demo = build_demo(_settings)
    _demo.launch(**launch_kwargs(_settings, _demo))
