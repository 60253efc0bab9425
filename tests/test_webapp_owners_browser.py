"""Saved models belong to their owner, in a real browser (Playwright for Python driving Debian's
Chromium, as tests/test_webapp_browser.py does): three visitors, two anonymous browsers and a reload
of the first. The first uploads a model, still has it after reloading the page (its owner key stays
in the browser), the second does not see it until the first publishes it, and cannot delete it then.
Skips when /usr/bin/chromium or playwright is missing (fails under CI=true)."""

import re
import zipfile
from pathlib import Path

import pytest
from test_webapp_browser import TIMEOUT_MS, reveal, wait_text
from webapp_common import launch

from gpt import GPT, MODEL_FILES, Tokenizer
from webapp import library
from webapp.settings import Settings

pytestmark = [
    pytest.mark.slow,  # servers and browsers: not in the fast tier
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*(no_silent_downcasting|copy keyword).*"),
]


@pytest.fixture(scope="module")
def server(settings):
    demo, address = launch(settings)
    yield address.rstrip("/"), settings
    demo.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small model's checkpoint zip, as a visitor would upload it."""
    folder = tmp_path_factory.mktemp("checkpoint")
    model = GPT(vocab_size=300, max_seq_len=16, emb_size=16, num_heads=2, num_layers=1)
    model.tokenizer = Tokenizer.train(["the cat sat on the mat, the dog ran to the sun. " * 40], vocab_size=300)
    model.save(folder / "model")
    path = folder / "mine.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in MODEL_FILES:
            if (folder / "model" / name).is_file():
                archive.write(folder / "model" / name, f"mine/{name}")
    return path


def open_models_tab(context, url: str):
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url, wait_until="load")
    reveal(page, page.get_by_role("tab", name="Models"), "#model-upload")  # before setting files
    wait_text(page, "#model-owner-note", "private to this browser")  # the page has its owner key
    return page


def choices(page) -> list[str]:
    """The values the saved-model picker offers (each label starts with its value)."""
    page.click("#model-saved input")
    options = page.get_by_role("option")
    texts = options.all_inner_texts() if options.count() else []
    page.keyboard.press("Escape")
    return [text.split(" — ")[0].split("\n")[-1].strip() for text in texts]  # without the "✓" of the chosen one


def picked(page, name: str) -> None:
    """Wait until the picker shows `name` (the input shows its label, which starts with it)."""
    page.wait_for_function(
        "n => document.querySelector('#model-saved input').value.startsWith(n + ' — ')", arg=name
    )


def owner_folders(settings: Settings) -> list[Path]:
    root = library.root(settings)
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def test_three_visitors_own_publish_and_keep_their_models(server, checkpoint, chromium):
    url, settings = server
    first, second = (chromium.new_context(locale="en-US", viewport={"width": 1360, "height": 900}) for _ in "ab")

    page = open_models_tab(first, url)
    page.locator("#model-upload input[type=file]").set_input_files(str(checkpoint))
    page.locator("#model-upload a, #model-upload .file-name, #model-upload table").first.wait_for()
    page.click("#model-upload-start")
    wait_text(page, "#model-message", "Uploaded and loaded as mine")
    [owner] = owner_folders(settings)
    assert owner.name.startswith("k-") and (owner / "mine").is_dir()  # a hash names the owner, not the key

    page.reload(wait_until="load")  # the second visitor: the first, after a reload
    page.get_by_role("tab", name="Models").click()
    wait_text(page, "#model-owner-note", "private to this browser")
    picked(page, "mine")
    assert choices(page) == ["mine"]
    assert owner_folders(settings) == [owner]  # the same owner: no new key was made

    other = open_models_tab(second, url)  # the third visitor: another browser
    assert "mine" not in choices(other) and not any(c.startswith("mine@") for c in choices(other))

    page.click("#model-publish")
    message = wait_text(page, "#model-message", "Published mine")
    public = re.search(r"see it as (\S+@\w+)\.", message).group(1)
    other.click("#model-refresh")
    picked(other, public)
    assert choices(other) == [public]
    other.click("#model-load")
    wait_text(other, "#model-message", re.escape(f"Loaded {public}."))
    other.click("#model-delete")
    other.get_by_test_id("toast-text").filter(has_text="is not yours").wait_for()
    assert (owner / "mine").is_dir()

    page.click("#model-unpublish")
    wait_text(page, "#model-message", "mine is private again")
    other.click("#model-refresh")
    other.wait_for_function("document.querySelector('#model-saved input').value === ''")
    assert choices(other) == []
    first.close()
    second.close()
