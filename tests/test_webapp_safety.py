"""Web app on a public Space, in process: every number of every endpoint checked on the server,
memory and disk bounded before work starts, the previous model kept when a run gives no checkpoint,
what a crashed server left behind cleaned at start, and no server path in any message.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from webapp_common import TINY, Request, error_of, generate, text, train

from webapp import generation, library, models, owners, storage, training
from webapp.app import SimpleLLM
from webapp.i18n import UserError, without_paths
from webapp.settings import MB, Settings

APP_SETTINGS = dict(  # conftest's `handlers`
    max_upload_mb=1, max_text_mb=2, max_steps=500, max_params=200_000, max_train_memory_mb=64, max_new_tokens=64
)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "story.txt"
    path.write_text(text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(handlers, text_file) -> Request:
    request = Request("safety-trained")
    train(handlers, request, [text_file])
    return request


# every number, on the server ----------------------------------------------------------------------
def test_a_training_number_reaches_its_check_by_name(handlers, monkeypatch):
    """Each /train number goes to its own field of `make_config` (every rule: test_validation.py),
    and a bad one is the clear error."""
    seen = {}
    make_config = training.make_config

    def recording(settings, **values):
        seen.update(values)
        return make_config(settings, **values)

    monkeypatch.setattr(training, "make_config", recording)
    values = {**TINY, "emb_size": 24, "steps": "nan"}  # every field's value its own
    message = error_of(lambda: train(handlers, Request("bad-train"), **values))
    assert "steps" in message and "not valid" in message, message
    assert [seen[name] for name in training.SETTING_FIELDS] == [values[name] for name in training.SETTING_FIELDS]


def test_a_generation_number_reaches_its_check_by_name(handlers, trained, monkeypatch):
    """Each /generate number goes to its own argument of `make_options` (every rule:
    test_validation.py), with the server's cap, and a bad one is the clear error."""
    seen = []
    make_options = generation.make_options

    def recording(*args):
        seen.extend(args)
        return make_options(*args)

    monkeypatch.setattr(generation, "make_options", recording)
    options = dict(max_new_tokens=20, temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, repetition_penalty=1.1)
    options.update(stop_strings="end", seed="nan")
    message = error_of(lambda: generate(handlers, trained, mode="sampling", **options))
    assert "seed" in message and "not valid" in message, message
    assert seen == [20, "sampling", 0.7, 5, 0.9, 0.05, 1.1, "end", "nan", 64]  # 64: this module's max_new_tokens


def test_empty_fields_mean_off_and_big_exact_seeds_work(handlers, trained):
    greedy = generate(handlers, trained, top_k="", top_p=None, min_p="", seed="")[0]
    assert greedy == generate(handlers, trained)[0]
    first = generate(handlers, trained, mode="sampling", seed=str(2**63 - 1))[0]
    assert first == generate(handlers, trained, mode="sampling", seed=2**63 - 1)[0]


def test_compare_numbers_are_checked(handlers, trained):  # 65: over this module's max_new_tokens
    message = error_of(lambda: list(handlers.generate.compare("the cat", 65, "torch", request=trained)))
    assert "max_new_tokens" in message and "1..64" in message, message


def test_resume_numbers_are_checked(handlers, trained):
    message = error_of(lambda: list(handlers.train.resume("nan", request=trained)))
    assert "steps" in message and "not valid" in message, message


def test_text_fields_are_bounded(handlers, trained):
    assert "prompt is 100001 characters long" in error_of(lambda: generate(handlers, trained, prompt="x" * 100_001))
    assert "prompt" in error_of(lambda: generate(handlers, trained, prompt=["not", "text"]))
    assert "stop_strings" in error_of(
        lambda: generate(handlers, trained, stop_strings="\n".join(f"s{i}" for i in range(100)))
    )


# memory and disk, before work starts ---------------------------------------------------------------
def test_a_run_over_the_memory_budget_is_refused_with_its_estimate(handlers, settings):
    request = Request("big-batch")
    message = error_of(lambda: train(handlers, request, batch_size=1024, context=4096, emb_size=32))
    assert "over this server's training memory budget of 64 MB" in message
    assert "GiB" in message and "batch size or the context" in message
    assert handlers.services.session(request).job is None and not list(handlers.services.session(request).folder.glob("runs/*"))


def test_model_size_bounds_come_from_arithmetic(settings):
    config = training.TrainConfig(num_layers=48, emb_size=4096, num_heads=64, context=4096, vocab_size=65536)
    with pytest.raises(UserError, match="parameters, over this server's limit"):
        training.check_size(config, config.vocab_size, settings)


def test_session_disk_prunes_old_runs_and_refuses_what_cannot_fit(tmp_path):
    settings = Settings(artifacts=tmp_path / "artifacts", max_session_disk_mb=3, min_free_disk_mb=1)
    session = tmp_path / "session"
    for n, kind in enumerate(["runs/runs-001", "exports/exports-002", "runs/runs-003"]):
        folder = session / kind
        folder.mkdir(parents=True)
        (folder / "weights.bin").write_bytes(b"\0" * MB)
        os.utime(folder, (1_000_000 + n, 1_000_000 + n))
    storage.make_room(session, settings, MB // 2, keep=[session / "runs/runs-001"])
    assert (session / "runs/runs-001").is_dir(), "a kept folder is never pruned"
    assert not (session / "exports/exports-002").exists(), "the oldest unkept folder goes first"
    assert (session / "runs/runs-003").is_dir(), "no more is pruned than needed"
    with pytest.raises(UserError, match="this session's limit is 3 MB"):
        storage.make_room(session, settings, 4 * MB)


def test_saved_models_have_a_count_and_size_cap(trained, handlers, settings, tmp_path):
    small = Settings(artifacts=tmp_path / "artifacts", max_saved_models=1, max_saved_mb=1000, min_free_disk_mb=1)
    session = handlers.services.session(trained)
    owner = owners.of_key(owners.new_key())
    assert models.save_current(session, owner, "first", small) == "first"
    with pytest.raises(UserError, match="You already have 1 saved models, the limit of one owner"):
        models.save_current(session, owner, "second", small)
    tiny = Settings(artifacts=tmp_path / "other", max_saved_mb=1, min_free_disk_mb=1)
    with pytest.raises(UserError, match="would pass the 1 MB limit"):
        models.save_current(session, owner, "third", tiny)
    assert not list(library.root(tiny).rglob("config.json")), "a refused save leaves nothing"


def test_too_little_free_disk_refuses_new_work(settings):
    huge = Settings(artifacts=settings.artifacts, min_free_disk_mb=10**9)
    with pytest.raises(UserError, match="disk is nearly full"):
        storage.check_free_disk(huge)


# the previous model stays until the new run has a checkpoint ------------------------------------
def test_a_refused_or_failed_run_keeps_the_previous_model(trained, handlers, text_file, tmp_path, monkeypatch):
    session = handlers.services.session(trained)
    before, label = session.model, session.model_label
    short = tmp_path / "short.txt"
    short.write_text("a few words", encoding="utf-8")
    assert "too short" in error_of(lambda: train(handlers, trained, [short]))
    assert session.model is before and session.model_label == label

    def broken_fit(self, *args, **kwargs):
        raise RuntimeError("out of memory in step 1")

    monkeypatch.setattr("gpt.model.GPT.fit", broken_fit)
    assert "out of memory in step 1" in error_of(lambda: train(handlers, trained, [text_file]))
    assert session.model is before and session.model_label == label
    status = training.outcome_text(session.job, "en")
    assert "the previous model is kept" in status
    assert generate(handlers, trained)[0].startswith("the cat")


def test_a_run_with_a_checkpoint_replaces_the_model(trained, handlers, text_file):
    session = handlers.services.session(trained)
    before = session.model
    train(handlers, trained, [text_file], steps=3)
    assert session.model is not before and session.job.usable


# restart safety and messages -----------------------------------------------------------------------
def test_stale_folders_of_dead_servers_are_cleaned_at_start(tmp_path):
    settings = Settings(artifacts=tmp_path / "artifacts")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = settings.sessions_dir / f"{dead_pid}-1" / "some-session" / "runs"
    live = settings.sessions_dir / "1-1" / "session"  # pid 1 is alive (init), owned by another server
    saving = settings.models_dir / f".saving-{dead_pid}-process-abc"
    good = settings.models_dir / "good"
    for folder in (stale, live, saving, good):
        folder.mkdir(parents=True)
    SimpleLLM.create(settings)
    assert not stale.parent.parent.exists() and not saving.exists()
    assert live.is_dir() and good.is_dir()


def test_messages_show_no_server_paths(trained, handlers, settings, tmp_path):
    assert without_paths(f"{settings.artifacts}/sessions/1/x/config.json: bad") == "config.json: bad"
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    message = error_of(lambda: handlers.models.upload_checkpoint(str(broken), request=trained))
    assert str(tmp_path) not in message and str(settings.artifacts) not in message
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text('{"vocab_size": 300, "max_seq_len": 16, "num_layers": 1000000}')
    with pytest.raises(UserError) as info:
        models.load_checked(config_only, settings)
    assert "num_layers" in info.value.message("en") and str(config_only) not in info.value.message("en")


def test_a_huge_config_is_refused_without_building_the_model(settings, tmp_path):
    folder = tmp_path / "huge"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"vocab_size": 65536, "max_seq_len": 4096, "emb_size": 4096, "num_heads": 64, "num_layers": 1024}'
    )
    with pytest.raises(UserError, match="over this server's limit"):
        models.load_checked(folder, settings)


def test_tiny_settings_are_valid():
    assert training.make_config(Settings(artifacts=Path("/tmp/unused")), **{**TINY, "steps": 10}).steps == 10
