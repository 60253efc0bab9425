"""Saved models belong to their owner, through the handlers: a visitor (an owner key, as the page
keeps it in the browser; a signed-in user; or, without a key, the session) sees and uses only their
own models, the server's, and models published explicitly; nobody else's private model can be
listed, loaded, downloaded, evaluated or trained from, and asking for one by name gets the answer a
name that does not exist gets. Owners delete and publish their own models only. Caps are per owner
and server-wide, reserved under a lock (concurrent saves cannot pass them), and anonymous saves
expire after days without use."""

import os
import threading
import time
from pathlib import Path

import pytest
from needs import need_module
from webapp_common import Request, app_settings, error_of, text, train

from gpt import GPT
from webapp import library, owners
from webapp.app import SimpleLLM
from webapp.settings import Settings

APP_SETTINGS = dict(max_steps=500)  # conftest's `handlers`


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "story.txt"
    path.write_text(text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def alice(handlers, text_file) -> Request:
    """A session with a trained model: its owner saves it in each test under a new name."""
    request = Request("alice-page")
    train(handlers, request, [text_file], steps=10)
    return request


def names(handlers: SimpleLLM, key: str | None, request: Request) -> list[str]:
    return [value for _, value in handlers.models.model_choices(key, request=request)["choices"]]


def missing(name: str) -> str:
    return f"There is no saved model called {name!r}."


def test_a_private_model_is_invisible_to_other_owners_and_refused_as_if_it_did_not_exist(handlers, alice, text_file):
    a_key, b_key = owners.new_key(), owners.new_key()
    handlers.models.save_model("private", a_key, request=alice)
    bob = Request("bob-page")
    assert "private" in names(handlers, a_key, alice)
    assert "private" in names(handlers, a_key, Request("alice-reloaded"))  # the same key after a reload
    assert not any(n.startswith("private") for n in names(handlers, b_key, bob))
    assert not any(n.startswith("private") for n in names(handlers, None, bob))  # a session of its own
    tag = owners.of_key(a_key).tag
    for name in ("private", f"private@{tag}"):  # by its name, and by the name it would have if published
        for key in (b_key, None):
            assert error_of(lambda: handlers.models.load_model(name, key, request=bob)) == missing(name)
            assert error_of(lambda: handlers.models.download_model(name, key, request=bob)) == missing(name)
            evaluated = lambda: handlers.models.evaluate("saved", name, "the cat sat", None, key, request=bob)  # noqa: E731
            assert error_of(evaluated) == missing(name)
            go_on = dict(start="saved", start_model=name, owner_key=key)
            assert error_of(lambda: train(handlers, bob, [text_file], steps=3, **go_on)) == missing(name)
    assert handlers.services.session(bob).model is None
    for action in (handlers.models.delete_model, handlers.models.publish_model, handlers.models.unpublish_model):
        assert error_of(lambda: action("private", b_key, request=bob)) == missing("private")
    assert error_of(lambda: handlers.models.load_model("never-saved", b_key, request=bob)) == missing("never-saved")
    assert "private" in names(handlers, a_key, alice)  # untouched


def test_a_published_model_is_usable_by_everyone_and_changed_only_by_its_owner(handlers, alice, text_file, tmp_path):
    a_key, b_key = owners.new_key(), owners.new_key()
    handlers.models.save_model("shared", a_key, request=alice)
    choices, message = handlers.models.publish_model("shared", a_key, request=alice)
    public = f"shared@{owners.of_key(a_key).tag}"
    assert public in message and choices["value"] == "shared"
    labels = {value: label for label, value in handlers.models.model_choices(a_key, request=alice)["choices"]}
    assert labels["shared"].endswith("yours, published")

    bob = Request("bob-published")
    assert public in names(handlers, b_key, bob) and public in names(handlers, None, Request("rest-call"))
    assert handlers.models.load_model(public, b_key, request=bob)[1] == f"Loaded {public}."
    assert Path(handlers.models.download_model(public, b_key, request=bob)).name == "shared.zip"
    _, message, _ = handlers.models.evaluate("saved", public, text(200, seed=3), None, b_key, request=bob)
    assert message.startswith(f"**{public}** on")
    *_, last = train(handlers, bob, [text_file], steps=3, start="saved", start_model=public, owner_key=b_key)
    assert handlers.services.session(bob).model.training_record["started_from"]["model"] == public
    refusal = f"{public!r} is not yours: only its owner can delete, publish or unpublish it."
    for action in (handlers.models.delete_model, handlers.models.unpublish_model, handlers.models.publish_model):
        assert error_of(lambda: action(public, b_key, request=bob)) == refusal
    handlers.models.save_model("shared", b_key, request=bob)  # names are per owner: Bob's own "shared" is another model
    assert {"shared", public} <= set(names(handlers, b_key, bob))

    handlers.models.unpublish_model("shared", a_key, request=alice)
    assert public not in names(handlers, b_key, bob)
    assert error_of(lambda: handlers.models.load_model(public, b_key, request=bob)) == missing(public)
    assert "shared" in names(handlers, a_key, alice)


def test_owners_delete_their_own_models(handlers, alice):
    key = owners.new_key()
    handlers.models.save_model("short-lived", key, request=alice)
    choices, message = handlers.models.delete_model("short-lived", key, request=alice)
    assert message == "Deleted short-lived." and "short-lived" not in [v for _, v in choices["choices"]]
    assert error_of(lambda: handlers.models.load_model("short-lived", key, request=alice)) == missing("short-lived")
    assert not (library.root(handlers.services.settings) / owners.of_key(key).id / "short-lived").exists()
    handlers.models.save_model("short-lived", key, request=alice)  # the name is free again


def test_models_of_the_server_are_shared_read_only(handlers, alice):
    GPT(vocab_size=64, max_seq_len=8, emb_size=8, num_heads=2, num_layers=1).save(
        handlers.services.settings.models_dir / "from-the-operator"
    )
    key = owners.new_key()
    assert "from-the-operator" in names(handlers, key, alice) and "from-the-operator" in names(handlers, None, alice)
    assert "not yours" in error_of(lambda: handlers.models.delete_model("from-the-operator", key, request=alice))
    assert "already exists" in error_of(lambda: handlers.models.save_model("from-the-operator", key, request=alice))
    assert (handlers.services.settings.models_dir / "from-the-operator").is_dir()


def test_without_a_key_the_session_owns_what_it_saves(handlers, alice):
    handlers.models.save_model("session-owned", None, request=alice)
    assert "session-owned" in names(handlers, None, alice)
    assert handlers.models.load_model("session-owned", None, request=alice)[1] == "Loaded session-owned."
    assert "session-owned" not in names(handlers, None, Request("another-client"))
    assert "session-owned" not in names(handlers, owners.new_key(), alice)


def test_the_page_gets_a_key_once_and_a_signed_in_user_owns_by_name(handlers, alice):
    key, choices, start_choices, note = handlers.models.owner_view(None, request=alice)
    assert owners.valid_key(key) and "private to this browser" in note and "7 days" in note
    assert handlers.models.owner_view(key, request=Request("reloaded"))[0] == key  # kept across reloads
    assert handlers.models.owner_view("not a key", request=alice)[0] != "not a key"  # a damaged one is replaced
    assert "owner key must be" in error_of(lambda: handlers.models.load_model("x", "short", request=alice))
    assert key not in str(list(library.root(handlers.services.settings).rglob("*")))  # only its hash names a folder

    class Profile:
        username = "ada"

    handlers.models.save_model("signed-in", key, request=alice, profile=Profile())
    elsewhere = handlers.models.model_choices(None, request=Request("ada-2"), profile=Profile())  # any session, any key
    assert "signed-in" in [value for _, value in elsewhere["choices"]]
    assert "signed-in" not in names(handlers, key, alice)  # the key owner is someone else
    assert "Signed in as **ada**" in handlers.models.owner_view(key, request=alice, profile=Profile())[3]
    assert (library.root(handlers.services.settings) / "hf-ada" / "signed-in").is_dir()


def capped(tmp_path: Path, **caps) -> SimpleLLM:
    """A server of its own with `caps` (each test here caps it differently)."""
    return SimpleLLM.create(app_settings(tmp_path / "artifacts", **caps))


def test_caps_are_per_owner_and_server_wide(handlers, alice, tmp_path):
    model = handlers.services.session(alice).model
    small = capped(tmp_path, max_saved_models=2, max_total_saved_models=3)
    a_key, b_key = owners.new_key(), owners.new_key()
    a, b = Request("cap-a"), Request("cap-b")
    for request in (a, b):
        small.services.session(request).set_model(model, "trained", "trained")
    small.models.save_model("one", a_key, request=a)
    small.models.save_model("two", a_key, request=a)
    assert "You already have 2 saved models, the limit of one owner" in error_of(
        lambda: small.models.save_model("three", a_key, request=a)
    )
    small.models.save_model("one", b_key, request=b)  # another owner's cap is their own
    server_full = error_of(lambda: small.models.save_model("two", b_key, request=b))
    assert "The server holds as many saved models as it can" in server_full
    small.models.delete_model("one", a_key, request=a)
    small.models.save_model("two", b_key, request=b)  # room again

    tiny = capped(tmp_path / "bytes", max_saved_mb=1)
    tiny.services.session(a).set_model(model, "trained", "trained")
    assert "would pass the 1 MB limit of one owner" in error_of(lambda: tiny.models.save_model("big", a_key, request=a))
    assert not list(library.root(tiny.services.settings).rglob("config.json")), "a refused save leaves nothing"


def test_concurrent_saves_cannot_pass_the_count_cap(handlers, alice, tmp_path, monkeypatch):
    small = capped(tmp_path, max_saved_models=3)
    key = owners.new_key()
    model = handlers.services.session(alice).model
    start = threading.Barrier(8)
    slow_save = GPT.save

    def save(self, folder):  # a slow disk: every save is in progress while the others are checked
        time.sleep(0.3)
        return slow_save(self, folder)

    monkeypatch.setattr(GPT, "save", save)
    results: list[str] = []

    def one(n: int) -> None:
        request = Request(f"racer-{n}")
        small.services.session(request).set_model(model, "trained", "trained")
        start.wait()
        try:
            results.append(small.models.save_model(f"race-{n}", key, request=request)[2])
        except Exception as err:  # gr.Error
            results.append(str(getattr(err, "message", err)))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.startswith("Saved as") for r in results) == 3, results
    assert sum("the limit of one owner" in r for r in results) == 5, results
    assert len(list((library.root(small.services.settings) / owners.of_key(key).id).glob("*/config.json"))) == 3


def test_anonymous_saves_expire_after_days_unused_and_signed_in_ones_stay(handlers, alice, tmp_path):
    fresh = capped(tmp_path, anonymous_save_days=7)
    model = handlers.services.session(alice).model
    request = Request("expiring")
    fresh.services.session(request).set_model(model, "trained", "trained")
    key = owners.new_key()

    class Profile:
        username = "kept"

    for name in ("old", "used", "recent"):
        fresh.models.save_model(name, key, request=request)
    fresh.models.save_model("old-signed-in", None, request=request, profile=Profile())
    folder = library.root(fresh.services.settings)
    eight_days_ago = time.time() - 8 * 86400
    mine = folder / owners.of_key(key).id
    for path in (mine / "old", mine / "used", folder / "hf-kept" / "old-signed-in"):
        os.utime(path, (eight_days_ago, eight_days_ago))
    fresh.models.load_model("used", key, request=request)  # a use resets its clock
    assert library.sweep(fresh.services.settings, force=True) == 1
    assert names(fresh, key, request) == ["recent", "used"]
    assert "old-signed-in" in [v for _, v in fresh.models.model_choices(None, request=request, profile=Profile())["choices"]]
    os.utime(mine / "recent", (eight_days_ago, eight_days_ago))
    SimpleLLM.create(fresh.services.settings)  # a server starting sweeps too
    assert names(fresh, key, request) == ["used"]


def test_a_space_with_oauth_offers_sign_in_and_a_plain_server_does_not(tmp_path, monkeypatch):
    import gradio as gr

    from webapp.app import build_demo

    def login_buttons() -> int:
        demo = build_demo(Settings(artifacts=tmp_path / "artifacts"))
        return sum(isinstance(block, gr.LoginButton) for block in demo.blocks.values())

    assert not owners.oauth_enabled() and login_buttons() == 0  # offline: no sign-in, no requests to hf.co
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/simple-llm")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "client-id")  # what `hf_oauth: true` gives a Space
    monkeypatch.setattr(owners, "OAUTH_MODULES", ("no_such_module_here",))
    assert not owners.oauth_enabled() and login_buttons() == 0  # without gradio[oauth]: keys only, still serving
    monkeypatch.setattr(owners, "OAUTH_MODULES", ())
    need_module("itsdangerous", "gradio[oauth] is not installed (requirements-dev.txt)")
    import gradio.oauth  # reads the Space's OAuth variables once, at import

    for name, value in (("OAUTH_CLIENT_ID", "client-id"), ("OAUTH_CLIENT_SECRET", "secret"),
                        ("OAUTH_SCOPES", "openid profile"), ("OPENID_PROVIDER_URL", "https://huggingface.co")):  # fmt: skip
        monkeypatch.setattr(gradio.oauth, name, value)
    assert owners.oauth_enabled() and login_buttons() == 1


def test_unfinished_saves_and_deletions_are_cleaned(handlers, tmp_path):
    settings = Settings(artifacts=tmp_path / "artifacts")
    folder = library.root(settings) / owners.of_key(owners.new_key()).id
    dead = folder / ".saving-999999999-process-abc"
    deleting = folder / ".deleting-old-123"
    for leftover in (dead, deleting):
        leftover.mkdir(parents=True)
    library.sweep(settings, force=True)
    assert not dead.exists() and not deleting.exists() and not folder.exists()
