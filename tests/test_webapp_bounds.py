"""The server bounded as a whole, through its handlers: evaluation memory and text size, live
sessions, models held in memory, heavy jobs admitted by one budget, disk reserved before work,
and the smaller defects found on the way (issue 21)."""

import threading
import zipfile

import gradio as gr
import pytest
import torch
from webapp_common import Request, app_settings, error_of, generate, text, train

from gpt import GPT, GPTConfig, Tokenizer, estimate_evaluation_memory, evaluation_batch_size
from webapp import sessions, storage
from webapp.app import SimpleLLM
from webapp.settings import MB, Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def make_handlers(tmp_path, **overrides) -> SimpleLLM:
    """Handlers of their own, for a test that fills or caps the server (conftest's `handlers` is the
    module's shared one, for tests in sessions of their own)."""
    return SimpleLLM.create(app_settings(tmp_path / "artifacts", **overrides))


def evaluate(handlers, request, pasted="", which="current", saved=None):
    return handlers.models.evaluate(which, saved, pasted, None, request=request)


# Evaluation -------------------------------------------------------------------------------------
def test_evaluation_counts_bytes_not_characters(handlers):
    request = Request("eval-bytes")
    train(handlers, request, steps=4)
    emoji = "😀" * (2 * 1024 * 1024 // 4 + 1)  # 0.5 M characters, 2 MiB of UTF-8
    assert "MB of UTF-8 text, over the 2 MB limit" in error_of(lambda: evaluate(handlers, request, emoji))


def test_a_lone_surrogate_is_refused_as_text_not_as_a_checkpoint(handlers):
    request = Request("eval-surrogate")
    train(handlers, request, steps=4)
    message = error_of(lambda: evaluate(handlers, request, "the cat \ud800 sat"))
    assert "not valid Unicode text" in message and "checkpoint" not in message


def test_evaluation_picks_its_batch_from_the_budget_and_reserves_its_estimate(handlers, monkeypatch):
    request = Request("eval-plan")
    train(handlers, request, steps=4)
    reserved = []
    admit = handlers.services.sessions.capacity.admit

    def spy(job, memory, *args, **kwargs):
        reserved.append((job, memory))
        return admit(job, memory, *args, **kwargs)

    monkeypatch.setattr(handlers.services.sessions.capacity, "admit", spy)
    evaluate(handlers, request, text(300))
    config = handlers.services.session(request).model.config
    [(job, memory)] = reserved
    assert job == "evaluation" and memory >= estimate_evaluation_memory(config, len(text(300).encode()), 1)
    huge = GPTConfig(vocab_size=32768, max_seq_len=2048, emb_size=16, num_heads=2, num_layers=1)
    assert evaluation_batch_size(huge, 20_000, budget=2 * 1024**3) < 8  # the report's 6.6 GB case: smaller batches
    assert evaluation_batch_size(huge, 20_000, budget=1) == 1


def test_evaluation_does_not_keep_activations_and_its_estimate_bounds_its_peak():
    """Scoring without an autograd graph: the peak is the estimate's logits and tokens, not every batch's activations."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.train([text(3000)], vocab_size=300)
    config = GPTConfig(vocab_size=300, max_seq_len=64, emb_size=32, num_heads=2, num_layers=2)
    model = GPT.from_config(config)
    model.tokenizer = tokenizer
    kept = []
    original = model.window_logits

    def watch(ids):
        logits = original(ids)
        kept.append(logits.requires_grad)
        return logits

    model.window_logits = watch
    from gpt import token_losses

    _, losses = token_losses(model, text(3000), batch_size=4)
    assert kept and not any(kept) and not losses.requires_grad


# Sessions and the models they hold --------------------------------------------------------------
def test_live_sessions_are_capped_and_the_longest_idle_goes_first(tmp_path, monkeypatch):
    monkeypatch.setattr(sessions, "MIN_IDLE_S", 0.0)
    handlers = make_handlers(tmp_path, max_sessions=3)
    for n in range(5):
        handlers.services.session(Request(f"visitor-{n}"))
    assert len(handlers.services.sessions) == 3
    assert "visitor-4" in handlers.services.sessions and "visitor-0" not in handlers.services.sessions


def test_a_full_server_refuses_a_new_session_while_every_one_is_busy(tmp_path):
    handlers = make_handlers(tmp_path, max_sessions=2)  # sessions seen in the last seconds are busy
    handlers.services.session(Request("a"))
    handlers.services.session(Request("b"))
    with pytest.raises(Exception) as info:
        handlers.services.session(Request("c"))
    assert "as many visitors as it can serve (2)" in str(info.value)


def test_idle_sessions_models_are_dropped_for_room_and_reload_from_their_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(sessions, "MIN_IDLE_S", 0.0)
    first, second = Request("first"), Request("second")
    handlers = make_handlers(tmp_path)
    train(handlers, first, steps=6)
    held = handlers.services.sessions.capacity.held("first")
    assert held == sessions.model_bytes(handlers.services.session(first).model) > 0
    before, _ = generate(handlers, first, max_new_tokens=12)

    handlers.services.sessions.capacity.models_cap = held + held // 2  # room for one model of this size
    train(handlers, second, steps=6)
    assert handlers.services.session(first).model is None  # dropped: the other session needed the room
    assert handlers.services.sessions.capacity.usage().models == handlers.services.sessions.capacity.held("second")
    after, _ = generate(handlers, first, max_new_tokens=12)  # reloaded from its checkpoint
    assert after == before
    assert handlers.services.session(second).model is None  # and now it made room for the first
    for name in ("first", "second"):
        handlers.services.sessions.close(name)
    assert handlers.services.sessions.capacity.usage().models == 0


def test_a_training_waits_for_memory_and_says_the_server_is_busy(tmp_path):
    handlers = make_handlers(tmp_path)
    capacity = handlers.services.sessions.capacity
    capacity.wait_s = 0.5
    with capacity.admit("evaluation", capacity.job_budget - 1024):  # another job holds the whole budget
        message = error_of(lambda: train(handlers, Request("busy"), steps=4))
    assert "The server is busy" in message
    assert capacity.usage().jobs == 0
    train(handlers, Request("busy"), steps=4)  # and runs once the memory is free
    assert handlers.services.session(Request("busy")).model is not None


def test_a_training_larger_than_the_whole_budget_is_refused_before_it_starts(tmp_path):
    handlers = make_handlers(tmp_path, memory_mb=1, max_train_memory_mb=100_000)
    handlers.services.sessions.capacity.baseline = 0
    message = error_of(lambda: train(handlers, Request("big"), steps=4))
    assert "more than this server can give one job" in message
    assert not list((tmp_path / "artifacts" / "sessions").glob("*/*/runs/*"))  # nothing was written


# Disk -------------------------------------------------------------------------------------------
def test_disk_reservations_cannot_overcommit_a_session_or_the_server(tmp_path):
    settings = Settings(artifacts=tmp_path / "artifacts", max_session_disk_mb=10, max_disk_mb=15, min_free_disk_mb=1)
    a, b = settings.sessions_dir / "a", settings.sessions_dir / "b"
    with storage.reserve(a, settings, 8 * MB):
        with pytest.raises(Exception) as info:  # the session's own reservation counts
            storage.make_room(a, settings, 4 * MB)
        assert "this session's limit is 10 MB" in str(info.value)
        with pytest.raises(Exception) as info:  # and the server's: 8 + 8 > 15
            storage.make_room(b, settings, 8 * MB)
        assert "would pass their 15 MB limit" in str(info.value)
    storage.make_room(b, settings, 8 * MB)  # released


def test_concurrent_reservations_admit_only_what_fits(tmp_path):
    settings = Settings(artifacts=tmp_path / "artifacts", max_session_disk_mb=100, max_disk_mb=10, min_free_disk_mb=1)
    admitted, refused, release = [], [], threading.Event()

    def work(n):
        try:
            with storage.reserve(settings.sessions_dir / f"s{n}", settings, 4 * MB):
                admitted.append(n)
                release.wait(5)
        except Exception:
            refused.append(n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    while len(admitted) + len(refused) < 6:
        threading.Event().wait(0.01)
    release.set()
    for thread in threads:
        thread.join()
    assert len(admitted) == 2 and len(refused) == 4  # 2 x 4 MB fit under 10 MB


# Smaller defects --------------------------------------------------------------------------------
def test_a_checkpoint_whose_tokenizer_outruns_the_vocabulary_is_refused_at_upload(tmp_path, handlers):
    tokenizer = Tokenizer.train([text(2000)], vocab_size=400)
    model = GPT.from_config(GPTConfig(vocab_size=300, max_seq_len=16, emb_size=16, num_heads=2, num_layers=1))
    model.tokenizer = tokenizer
    folder = tmp_path / "bad"
    model.save(folder)
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in folder.iterdir():
            z.write(path, path.name)
    message = error_of(lambda: handlers.models.upload_checkpoint(str(archive), request=Request("upload")))
    assert f"has {tokenizer.vocab_size} tokens, more than the model's vocabulary of 300" in message


def test_token_details_answer_any_event_data(handlers):
    request = Request("details")
    for data in ({}, {"index": []}, {"index": None}, {"value": 1}, None, {"index": [3, 4]}):
        assert "Generate some text first" in handlers.generate.token_details(gr.EventData(None, data), request=request)
