"""Web app, in process: settings, languages, uploads, zips, training runs (stop and resume),
generation on both backends, comparison, export and models — every handler called directly.

Models are tiny and train a few dozen steps on one thread; every export is shared per module.
"""

import json
import re
import zipfile
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
from webapp_common import TINY, Request, error_of, generate, plain, text, train

from export.precision import weight_bytes
from gpt import MODEL_FILES, count_parameters
from webapp import archive, backends, browser, corpus, evaluation, generation, owners, training
from webapp.app import toast_js
from webapp.i18n import EN, LANGUAGES, RU, TABLES, Msg, UserError, language, page_language_js, t
from webapp.settings import MB, Settings

APP_SETTINGS = dict(max_upload_mb=1, max_text_mb=2, max_steps=500, max_params=200_000)  # conftest's `handlers`


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "корпус.txt"
    path.write_text(text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(handlers, text_file) -> tuple[Request, list[tuple]]:
    """A session with a model trained 30 steps on an uploaded Russian-named file."""
    request = Request("trained")
    return request, train(handlers, request, [text_file])


# settings and languages --------------------------------------------------------------------------
def test_settings_come_from_the_environment(tmp_path):
    settings = Settings.from_env(
        {"SIMPLE_LLM_ARTIFACTS": str(tmp_path), "SIMPLE_LLM_MAX_STEPS": "7", "SIMPLE_LLM_MAX_TRAIN_MINUTES": "0.5"}
    )
    assert (settings.artifacts, settings.max_steps, settings.max_train_minutes) == (tmp_path.resolve(), 7, 0.5)
    assert settings.models_dir == tmp_path.resolve() / "models"
    assert Settings.from_env({}).artifacts.name == "artifacts"
    with pytest.raises(ValueError, match="SIMPLE_LLM_MAX_PARAMS"):
        Settings.from_env({"SIMPLE_LLM_MAX_PARAMS": "lots"})
    with pytest.raises(ValueError, match="> 0"):
        Settings.from_env({"SIMPLE_LLM_TRAIN_CONCURRENCY": "0"})


def test_every_message_exists_in_both_languages_with_the_same_fields():
    assert set(TABLES) == set(LANGUAGES) == {"en", "ru"}
    assert set(EN) == set(RU)
    fields = re.compile(r"\{(\w+)")
    for key in EN:
        assert sorted(fields.findall(EN[key])) == sorted(fields.findall(RU[key])), key
    assert re.search("[а-я]", RU["tab.train"])


def test_page_scripts_take_their_texts_from_the_tables_in_the_pages_language():
    """The browser backend's scripts say only what `webapp.i18n` holds, in every language, and pick
    the language as the page does; no module but `i18n` writes Russian (or any text of its own)."""
    runtime = browser.runtime()
    scripts = [browser.run_js(runtime), browser.compare_js(runtime), browser.probe_js(runtime), toast_js()]
    used = set(re.findall(r'say\("([\w.]+)"', browser._HELPERS + browser._RUN_JS + browser._COMPARE_JS))
    tables = browser.strings()
    assert used and set(tables) == set(LANGUAGES)
    assert all(set(table) == used for table in tables.values())  # each key used, none missing
    assert all(page_language_js() in script for script in scripts)
    webapp_dir = Path(browser.__file__).parent
    cyrillic = [
        f.name for f in webapp_dir.glob("*.py") if f.name != "i18n.py" and re.search("[а-яА-ЯёЁ]", f.read_text())
    ]
    assert cyrillic == []


@pytest.mark.parametrize(
    "header, expected",
    [
        ("ru-RU,ru;q=0.9,en;q=0.8", "ru"),
        ("en-US,en;q=0.9,ru;q=0.8", "en"),
        ("de-DE,ru;q=0.5", "ru"),
        ("fr", "en"),
        ("", "en"),
        ("en;q=0.2, ru;q=0.9", "ru"),
    ],
)
def test_language_comes_from_accept_language(header, expected):
    assert language(header) == expected


def test_user_errors_speak_both_languages():
    err = UserError("error.heads_divide", emb=30, heads=4)
    assert "30" in str(err) and "divisible" in err.message("en")
    assert "делиться" in err.message("ru")
    assert t("xx", "tab.train") == "Train"
    nested = t("ru", "model.trained_on", corpus=Msg("sample.python-stdlib"))
    assert nested == "обучена на: Стандартная библиотека Python (встроена)"


# uploads and samples ----------------------------------------------------------------------------
def test_builtin_sample_is_built_from_the_standard_library():
    texts = corpus.stdlib_texts()
    assert 300_000 <= sum(len(t.encode()) for t in texts) <= 500_000
    assert any("def " in t for t in texts)
    assert corpus.STDLIB_SAMPLE in corpus.samples()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", b"", "is empty"),
        ("blank.md", b" \n\n ", "is empty"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("latin1.txt", "café crème".encode("latin-1"), "not valid UTF-8"),
        ("controls.txt", bytes(range(1, 32)) * 20, "binary"),
        ("table.csv", b"a,b\n1,2\n", "unsupported file type"),
    ],
)
def test_bad_uploads_are_refused_with_a_reason(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        corpus.read_uploads([path], 1, 2)


def test_upload_size_limits(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (MB + 1))
    with pytest.raises(UserError, match="over the 1 MB limit"):
        corpus.read_uploads([big], 1, 10)
    parts = [tmp_path / f"part{i}.txt" for i in range(3)]
    for part in parts:
        part.write_bytes(b"b" * (MB - 10))
    with pytest.raises(UserError, match="together exceed the 2 MB"):
        corpus.read_uploads(parts, 1, 2)
    with pytest.raises(UserError, match="No file"):
        corpus.read_uploads([], 1, 2)


def test_good_uploads_keep_unicode_and_drop_a_bom(tmp_path):
    path = tmp_path / "заметки.md"
    path.write_bytes("\ufeff# Привет\nмир\n".encode())
    found = corpus.read_uploads([path], 1, 2)
    assert found.texts == ["# Привет\nмир\n"] and found.label == "заметки.md"


# zips -------------------------------------------------------------------------------------------
def make_zip(path: Path, entries: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive_:
        for name, data in entries.items():
            archive_.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16  # a symbolic link
            archive_.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("name", ["../evil/config.json", "/etc/config.json", "C:/config.json", "a/../../config.json"])
def test_zip_entries_outside_the_folder_are_refused(tmp_path, name):
    path = make_zip(tmp_path / "slip.zip", {"model/tokenizer.json": b"{}", name: b"{}"})
    with pytest.raises(UserError, match="points outside"):
        archive.safe_extract(path, tmp_path / "out", ["config.json"], MB)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out" / "config.json").exists()


def test_zip_links_bombs_and_junk_are_refused(tmp_path):
    with pytest.raises(UserError, match="link"):
        archive.safe_extract(
            make_zip(tmp_path / "link.zip", {}, link="config.json"), tmp_path / "a", ["config.json"], MB
        )
    bomb = make_zip(tmp_path / "bomb.zip", {"model.safetensors": bytes(20 * MB)})
    assert bomb.stat().st_size < MB
    with pytest.raises(UserError, match="more than 1 MB"):
        archive.safe_extract(bomb, tmp_path / "b", ["model.safetensors"], MB)
    assert not (tmp_path / "b" / "model.safetensors").exists()
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="not a zip"):
        archive.safe_extract(junk, tmp_path / "c", ["config.json"], MB)


def test_zip_bomb_with_lying_headers_stops_while_copying(tmp_path):
    path = make_zip(tmp_path / "liar.zip", {"config.json": bytes(3 * MB)})
    data = bytearray(path.read_bytes())
    for offset in (m.start() for m in re.finditer(rb"PK\x03\x04|PK\x01\x02", bytes(data))):  # declare 10 bytes
        field = offset + (22 if data[offset + 2] == 3 else 24)
        data[field : field + 4] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(UserError):
        archive.safe_extract(path, tmp_path / "out", ["config.json"], MB)
    assert not (tmp_path / "out" / "config.json").exists()


def test_zip_round_trip_takes_only_the_wanted_files(tmp_path):
    path = make_zip(
        tmp_path / "ok.zip", {"run/config.json": b"{}", "run/notes.txt": b"x", "run/deep/x/model.safetensors": b"no"}
    )
    found = archive.safe_extract(path, tmp_path / "out", ["config.json", "model.safetensors"], MB)
    assert list(found) == ["config.json"] and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json"]


# training settings ------------------------------------------------------------------------------
def test_presets_are_valid_configs(settings):
    for name, preset in training.MODEL_PRESETS.items():
        config = training.make_config(Settings(artifacts=settings.artifacts), **{**preset.__dict__})
        assert config == preset, name
    assert count_parameters(training.MODEL_PRESETS["tiny"].gpt_config(512)) < 200_000


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(emb_size=30, num_heads=4), "divisible by the number of heads"),
        (dict(steps=501), "over this server's limit of 500"),
        (dict(num_layers=0), "num_layers"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(context="many"), "context"),
        (dict(learning_rate=0), "learning_rate"),
        (dict(dropout=1.0), "dropout"),
        (dict(vocab_size=100), "vocab_size"),
        (dict(device="tpu"), "device"),
    ],
)
def test_inconsistent_settings_are_refused(settings, handlers, change, message):
    with pytest.raises(UserError, match=message):
        training.make_config(settings, **{**TINY, "steps": 30, **change})
    assert message.split()[0] in error_of(lambda: train(handlers, Request("bad-settings"), **change))


@pytest.mark.skipif(backends.devices()["cuda"].available, reason="this machine has CUDA for torch")
def test_unavailable_device_is_refused_with_the_reason(settings):
    with pytest.raises(UserError, match="not available here: PyTorch sees no CUDA GPU"):
        training.make_config(settings, **{**TINY, "steps": 30, "device": "cuda"})


def test_caps_on_model_size_and_text_length(handlers, tmp_path):
    message = error_of(lambda: train(handlers, Request("big"), emb_size=256, num_layers=4, num_heads=4))
    assert "over this server's limit of 200 K" in message
    short = tmp_path / "short.txt"
    short.write_text("just a few words", encoding="utf-8")
    message = error_of(lambda: train(handlers, Request("short"), [short]))
    assert "too short" in message and "context 16" in message
    ru = error_of(lambda: train(handlers, Request("short", "ru-RU"), [short]))
    assert "слишком короткий" in ru


def test_bad_upload_through_the_handler_leaves_the_session_usable(handlers, tmp_path, text_file):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("Привет".encode("cp1251"))
    request = Request("bad-upload", "ru")
    assert "не в кодировке UTF-8" in error_of(lambda: train(handlers, request, [bad]))
    session = handlers.services.session(request)
    assert session.model is None and session.job is None


# training runs ----------------------------------------------------------------------------------
def test_training_streams_progress_plot_samples_and_model(trained, handlers):
    request, outputs = trained
    assert outputs[0][0].startswith("Training the tokenizer")
    status, plot, sample, summary = outputs[-1]
    assert "**Step 30 / 30**" in status and "tokens/s" in status and "Finished at step 30" in plain(status)
    assert "корпус.txt" in plain(status)
    frame = plot["value"]
    drawn = frame.dropna()  # every series has one empty row: the plot's colour scale holds them all
    assert isinstance(frame, pd.DataFrame) and set(drawn["split"]) == {"train", "validation"}
    assert drawn["step"].max() == 30 and len(frame) - len(drawn) == len(training.SERIES)
    assert list(plot["color_map"].values()) == list(training.COLOURS.values())
    assert sample.startswith("[step 30]")
    assert "parameters: 8" in summary and "context 16" in summary
    session = handlers.services.session(request)
    assert session.job.completed and training.latest_checkpoint(session.job.checkpoint_dir).name == "step-00000030"
    assert "already at step 30" in error_of(lambda: list(handlers.train.resume(30, request=request)))


def test_stop_keeps_the_last_checkpoint_and_resume_finishes_the_run(handlers, text_file):
    request = Request("stop-resume")
    run = handlers.train.train(
        "upload", [str(text_file)], "", 1, 2, 16, 16, 300, 1e-2, 8, 400, 0.0, False, "cpu", "new", None, request=request
    )
    session = handlers.services.session(request)
    for _ in run:
        if session.job is not None and session.job.steps_done >= 5:
            break
    run.close()  # what a Gradio cancel does: the handler's `finally` stops the run at a clean step
    job = session.job
    assert job.done.is_set() and not session.training
    stopped_at = job.steps_done
    assert 5 <= stopped_at < 400 and job.stop_reason == training.STOPPED
    assert training.latest_checkpoint(job.checkpoint_dir).name == f"step-{stopped_at:08d}"
    status, *_ = handlers.train.stop(request=request)
    assert f"Stopped at step {stopped_at}" in plain(status) and "Resume" in plain(status)
    assert session.model is job.model  # the stopped model is usable right away
    assert generate(handlers, request)[0].startswith("the cat")

    target = stopped_at + 20
    outputs = list(handlers.train.resume(target, request=request))
    resumed = session.job
    assert resumed is not job and resumed.steps_done == target and f"Finished at step {target}" in plain(outputs[-1][0])
    assert resumed.trainer.history.steps == list(range(1, target + 1))  # one history across the stop
    plot = outputs[-1][1]["value"].dropna()
    assert plot[plot["split"] == "train"]["step"].min() == 1
    assert f"already at step {target}" in error_of(lambda: list(handlers.train.resume(target, request=request)))


def test_stop_without_a_run_and_resume_without_a_run(handlers):
    request = Request("idle")
    assert handlers.train.stop(request=request)[0] == "Nothing is training."
    assert "no stopped run" in error_of(lambda: list(handlers.train.resume(10, request=request)))


def test_a_second_training_in_the_same_session_is_refused(handlers, text_file):
    request = Request("twice")
    run = handlers.train.train(
        "upload", [str(text_file)], "", 1, 2, 16, 16, 300, 1e-2, 8, 400, 0.0, False, "cpu", "new", None, request=request
    )
    next(run), next(run)
    try:
        assert "already running" in error_of(lambda: train(handlers, request, [text_file]))
        assert "is training" in error_of(lambda: generate(handlers, request))
    finally:
        run.close()


# generation -------------------------------------------------------------------------------------
def test_generate_before_any_model(handlers):
    assert "no model yet" in error_of(lambda: generate(handlers, Request("empty")))
    assert "Модели ещё нет" in error_of(lambda: generate(handlers, Request("empty", "ru")))


@pytest.mark.slow  # an ONNX export of its own, in a child process: not in the fast tier
def test_greedy_output_is_the_same_on_torch_and_onnxruntime(trained, handlers):
    request, _ = trained
    torch_text, torch_stats = generate(handlers, request)
    onnx_text, onnx_stats = generate(handlers, request, backend=backends.ORT_CPU)
    assert torch_text == onnx_text and torch_text.startswith("the cat") and len(torch_text) > len("the cat")
    assert "tokens/s" in torch_stats and "`torch cpu`" in torch_stats
    assert "`CPUExecutionProvider`" in onnx_stats and "(fp32)" in onnx_stats


def test_sampling_is_reproducible_with_a_seed_and_presets_fill_the_settings(trained, handlers):
    request, _ = trained
    values = handlers.generate.sampling_preset("creative")
    assert values == ("sampling", 1.2, 60, 0.9)
    options = dict(temperature=values[1], top_k=values[2], top_p=values[3], repetition_penalty=1.1)
    first = generate(handlers, request, mode="sampling", seed="7", **options)
    again = generate(handlers, request, mode="sampling", seed="7", **options)
    assert first[0] == again[0] and "seed 7" in first[1]
    drawn = generate(handlers, request, mode="sampling", **options)[1]
    assert re.search(r"seed \d+", drawn)
    assert all(v == gr.skip() for v in handlers.generate.sampling_preset("custom"))


def test_min_p_one_keeps_only_the_top_token(trained, handlers):
    request, _ = trained
    greedy = generate(handlers, request, max_new_tokens=30)[0]
    assert generate(handlers, request, mode="sampling", seed="5", min_p=1.0, max_new_tokens=30)[0] == greedy
    assert generate(handlers, request, mode="sampling", seed="5", min_p=0.0, max_new_tokens=30)[0] != greedy


def test_stop_strings_end_the_output(trained, handlers):
    request, _ = trained
    sampled = dict(mode="sampling", seed="3", max_new_tokens=60)
    continuation = generate(handlers, request, **sampled)[0][len("the cat") :]
    stop = next(word for word in continuation.split() if len(word) >= 2 and "\ufffd" not in word)[:2]
    cut = generate(handlers, request, stop_strings=f"\\n\n{stop}", **sampled)[0][len("the cat") :]
    assert cut == continuation[: len(cut)] and stop not in cut and "\n" not in cut
    assert continuation.find(stop) == len(cut) or continuation.find("\n") == len(cut)
    assert generation.parse_stop_strings("a\\nb\n\n\\t\na\\nb") == ("a\nb", "\t")


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(mode="sampling", top_p=0.0), "top_p"),
        (dict(mode="sampling", temperature=-1), "temperature"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(seed="abc"), "seed = 'abc' is not valid"),
        (dict(mode="beam"), "mode"),
        (dict(backend="tpu"), "backend"),
    ],
)
def test_bad_generation_settings(trained, handlers, options, message):
    request, _ = trained
    assert message in error_of(lambda: generate(handlers, request, **options))


@pytest.mark.skipif(backends.backends()[backends.ORT_CUDA].available, reason="onnxruntime CUDA works here")
def test_unavailable_backend_says_why(trained, handlers):
    request, _ = trained
    reason = backends.backends()[backends.ORT_CUDA].reason
    message = error_of(lambda: generate(handlers, request, backend=backends.ORT_CUDA))
    assert "onnxruntime CUDA is not available here" in message and reason.message("en") in message
    russian = error_of(lambda: generate(handlers, Request("trained", "ru"), backend=backends.ORT_CUDA))
    assert "здесь недоступен" in russian and reason.message("ru") in russian
    backend_note = handlers.generate.page_labels(request=Request("trained", "ru"))
    _, device_note = handlers.train.page_labels(request=Request("trained", "ru"))
    assert backend_note["info"].startswith("Здесь недоступно: onnxruntime CUDA: ")


def test_compare_backends_reports_logit_difference_and_greedy_agreement(trained, handlers):
    request, _ = trained
    report = list(handlers.generate.compare("the cat sat", 12, backends.TORCH, request=request))[-1]
    assert "Max logit difference:" in report and "agree (12 of 12)" in report and "PASS" in report
    match = re.search(r"Max logit difference:\*\* ([0-9.e+-]+)", report)
    assert float(match.group(1)) < 1e-3
    russian = list(handlers.generate.compare("the cat", 5, backends.ORT_CPU, request=Request("trained", "ru")))[-1]
    assert "разница логитов" in russian


# models and export ------------------------------------------------------------------------------
def test_export_zip_holds_the_onnx_folder_and_its_report(trained, handlers):
    request, _ = trained
    outputs = list(handlers.models.export("fp32", request=request))
    zip_path, report = outputs[-1]
    names = {n.split("/", 1)[1] for n in zipfile.ZipFile(zip_path).namelist()}  # inside its top folder
    assert {"web/index.html", "web/simple_llm.mjs", "web/model.json"} <= names  # unpacked and served: a demo
    assert {
        "model_fast.onnx",
        "onnx/model.onnx",
        "README.md",
        "config.json",
        "tokenizer.json",
        "genai_config.json",
        "tokenizer_config.json",
        "export_report.json",
    } <= names
    assert Path(zip_path).name.endswith("-onnx-fp32.zip")
    assert "max logit difference" in report and "**PASS**" in report
    with zipfile.ZipFile(zip_path) as archive_:
        inner = next(n for n in archive_.namelist() if n.endswith("export_report.json"))
        assert json.loads(archive_.read(inner))["parity"]["passed"]
    assert "precision" in error_of(lambda: list(handlers.models.export("fp8", request=request)))
    assert "no model yet" in error_of(lambda: list(handlers.models.export("fp32", request=Request("nobody"))))


def test_save_list_load_download_and_upload_models(trained, handlers, settings, tmp_path):
    request, _ = trained
    key = owners.new_key()  # the browser's owner key: a reload is a new session with the same key
    update, summary, message = handlers.models.save_model("моя модель", key, request=request)
    assert message == "Saved as моя-модель." and update["value"] == "моя-модель"
    assert "моя-модель" in [value for _, value in handlers.models.model_choices(key, request=request)["choices"]]
    assert "already exists" in error_of(lambda: handlers.models.save_model("моя модель", key, request=request))
    assert "Enter a name" in error_of(lambda: handlers.models.save_model("  ", key, request=request))

    other = Request("loader")  # the same owner in another session (the page reloaded)
    summary, message = handlers.models.load_model("моя-модель", key, request=other)
    assert message == "Loaded моя-модель." and "**моя-модель**" in summary
    assert generate(handlers, other)[0] == generate(handlers, request)[0]
    assert "no saved model called '../models'" in error_of(
        lambda: handlers.models.load_model("../models", key, request=other)
    )

    zip_path = Path(handlers.models.download_model("моя-модель", key, request=other))
    names = [Path(n).name for n in zipfile.ZipFile(zip_path).namelist()]
    assert sorted(names) == sorted(MODEL_FILES)  # weights, configs, tokenizer and the training record
    upload = tmp_path / "копия.zip"
    upload.write_bytes(zip_path.read_bytes())
    update, summary, message = handlers.models.upload_checkpoint(str(upload), key, request=Request("uploader"))
    assert update["value"] == "копия" and "копия" in message
    update, *_ = handlers.models.upload_checkpoint(str(upload), key, request=Request("uploader"))
    assert update["value"] == "копия-2"  # never overwrites


def test_bad_checkpoint_uploads_are_refused(trained, handlers, tmp_path):
    request, _ = trained
    folder = handlers.services.session(request).model.save(tmp_path / "good")
    good = {f.name: f.read_bytes() for f in folder.iterdir()}

    def upload(name: str, **files: bytes | None) -> str:
        entries = {f"ckpt/{k}": v for k, v in {**good, **files}.items() if v is not None}
        return error_of(
            lambda: handlers.models.upload_checkpoint(
                str(make_zip(tmp_path / name, entries)), request=Request("bad-zip")
            )
        )

    assert "not a usable checkpoint" in upload(
        "corrupt.zip", **{"model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!"}
    )
    assert "not a usable checkpoint" in upload("config.zip", **{"config.json": b"{not json"})
    config = json.loads(good["config.json"])
    assert "not a usable checkpoint" in upload(
        "shape.zip", **{"config.json": json.dumps({**config, "emb_size": 32, "n_embd": 32}).encode()}
    )
    assert "n_embd = 32 disagrees with emb_size = 16" in upload(
        "disagree.zip", **{"config.json": json.dumps({**config, "n_embd": 32}).encode()}
    )
    huge = json.dumps({**config, "emb_size": 1024, "n_embd": 1024, "num_layers": 12, "n_layer": 12}).encode()
    assert "over this server's limit" in upload("huge.zip", **{"config.json": huge})
    assert "lacks tokenizer.json" in upload("partial.zip", **{"tokenizer.json": None})
    slip = tmp_path / "slip.zip"
    make_zip(slip, {"../config.json": b"{}"})
    assert "points outside" in error_of(
        lambda: handlers.models.upload_checkpoint(str(slip), request=Request("bad-zip"))
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert "expected .zip" in error_of(
        lambda: handlers.models.upload_checkpoint(str(notes), request=Request("bad-zip"))
    )
    session = handlers.services.session(Request("bad-zip"))
    assert session.model is None and not any((session.folder / "uploads").glob("*/*"))  # nothing kept


def test_sessions_are_isolated_and_closed(trained, handlers, settings, text_file):
    request, _ = trained
    assert handlers.services.session(request).model is not None
    assert handlers.services.session(Request("stranger")).model is None
    assert handlers.models.model_info(request=Request("stranger")).startswith("No model yet")
    handlers.services.session(Request("../../etc"))  # a hostile session id becomes a safe folder name
    assert handlers.services.session(Request("../../etc")).folder.parent == handlers.services.sessions.folder
    assert handlers.services.sessions.folder.parent == settings.sessions_dir
    closing = Request("closing")
    train(handlers, closing, [text_file], steps=10)
    folder = handlers.services.session(closing).folder
    assert folder.is_dir()
    handlers.services.unload(request=closing)
    assert not folder.exists() and "closing" not in handlers.services.sessions


@pytest.mark.slow  # an ONNX export of its own, in a child process: not in the fast tier
def test_reduced_precision_exports(trained, handlers):
    request, _ = trained
    for precision in ("fp16", "int8"):
        zip_path, report = list(handlers.models.export(precision, request=request))[-1]
        assert zip_path.endswith(f"-onnx-{precision}.zip") and f"**{precision}**" in report and "PASS" in report
    text, stats = generate(handlers, request, backend=backends.ORT_CPU)
    assert "(int8)" in stats  # onnxruntime runs the newest export of the current model


def test_idle_sessions_are_swept_but_not_while_training(handlers, settings):
    idle, busy = Request("idle-one"), Request("busy-one")
    handlers.services.session(idle).last_seen -= settings.session_ttl_minutes * 60 + 1
    handlers.services.session(busy).last_seen -= settings.session_ttl_minutes * 60 + 1

    class Running:
        running = True

        def stop(self, reason):
            pass

        def wait(self, timeout):
            return True

    handlers.services.session(busy).job = Running()
    handlers.services.sessions.sweep()
    assert "idle-one" not in handlers.services.sessions and "busy-one" in handlers.services.sessions
    handlers.services.session(busy).job = None


def test_unexpected_failures_become_a_message(trained, handlers, monkeypatch):
    request, _ = trained

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("webapp.models.summary", broken)
    message = error_of(lambda: handlers.models.model_info(request=request))
    assert "Something went wrong on the server (RuntimeError: disk on fire)" in message
    assert "Ошибка на сервере" in error_of(lambda: handlers.models.model_info(request=Request("trained", "ru")))


def test_webapp_uses_only_the_public_api_of_gpt_and_export() -> None:
    """webapp/ imports from `gpt` and `export` only the names their `__all__` exports: no
    submodules (`gpt.training`, `export.runtime`), no `from gpt import checkpoint`."""
    import ast

    import export
    import gpt

    public = {"gpt": set(gpt.__all__), "export": set(export.__all__)}
    webapp_dir = Path(__file__).resolve().parents[1] / "webapp"
    wrong = []
    for path in sorted(webapp_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(webapp_dir.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                wrong += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in public]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in public:
                package = node.module.split(".")[0]
                if node.module != package:
                    wrong.append(f"{where} from {node.module} import ...")
                else:
                    wrong += [f"{where} {package}.{a.name}" for a in node.names if a.name not in public[package]]
    assert not wrong, "webapp/ uses names outside gpt.__all__ / export.__all__:\n" + "\n".join(wrong)


# the browser backend -------------------------------------------------------------------------------
@pytest.mark.slow  # a training and an ONNX export of its own: not in the fast tier
def test_a_model_with_rotary_positions_trains_and_generates_alike_on_torch_and_onnxruntime(handlers, text_file):
    request = Request("rotary")
    train(handlers, request, [text_file], rotary=True)
    model = handlers.services.session(request).model
    assert model.config.rotary and "transformer.wpe.weight" not in model.state_dict()
    torch_text, _ = generate(handlers, request)
    onnx_text, onnx_stats = generate(handlers, request, backend=backends.ORT_CPU)
    assert torch_text == onnx_text and "`CPUExecutionProvider`" in onnx_stats
    files = [Path(f) for f in list(handlers.generate.browser_model("fp32", request=request))[-1]]
    assert json.loads(files[-1].read_text()) == {
        "graph": "web/model.onnx",
        "precision": "fp32",
    }  # not GPT-2: no portable graph


def test_the_browser_backend_gets_files_and_never_runs_on_the_server(trained, handlers):
    request, _ = trained
    files = [Path(f) for f in list(handlers.generate.browser_model("int8", request=request))[-1]]
    assert [f.name for f in files] == [  # the browser's own int8 graph (8-bit weights dequantized at load)
        "model.onnx",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.json",
    ]
    assert json.loads(files[-1].read_text()) == {"graph": "web/model.onnx", "precision": "int8"}
    assert all(
        f.is_relative_to(handlers.services.session(request).downloads) for f in files
    )  # where the app may serve from
    assert "runs in your browser" in error_of(lambda: generate(handlers, request, backend="browser"))
    assert "precision = 'fp16' is not valid" in error_of(
        lambda: list(handlers.generate.browser_model("fp16", request=request))
    )
    assert "no model yet" in error_of(lambda: list(handlers.generate.browser_model("int8", request=Request("nobody"))))

    # the precision control says what each download weighs: the int8 graph just made, within its ops' share
    def labels(request: Request) -> dict[str, str]:
        return {value: label for label, value in handlers.generate.browser_precisions(request)["choices"]}

    model = handlers.services.session(request).model  # its weights' bytes: export.precision.weight_bytes (tested there)
    assert labels(request) == {p: f"{p} · {weight_bytes(model, p) / 1e6:.2g} MB" for p in ("fp32", "int8")}
    assert labels(Request("trained", "ru-RU"))["int8"].endswith(" МБ")
    assert handlers.generate.browser_precisions(Request("nobody"))["choices"] == ["fp32", "int8"]  # no model yet


def test_the_browser_backends_settings_are_checked_on_the_server_in_the_visitors_language(handlers):
    """The browser generates with settings the server never sees: they are checked first, with the
    server backends' rules and messages (the page's own checks speak English)."""
    good = ["the cat", 20, "sampling", 0.8, 40, 0.9, 0.0, 1.1, "", "7"]
    assert handlers.generate.browser_settings(*good, request=Request("browser-settings", "en")) is None
    for position, bad, name in (
        (9, "abc", "seed"),
        (9, str(2**63), "seed"),
        (3, -1, "temperature"),
        (1, 0, "max_new_tokens"),
    ):
        values = [*good[:position], bad, *good[position + 1 :]]
        with pytest.raises(gr.Error, match=f"{name} = .*недопустимое значение"):
            handlers.generate.browser_settings(*values, request=Request("browser-settings", "ru"))


def test_compare_on_the_browser_backend_hands_over_pytorchs_greedy_ids(trained, handlers):
    request, _ = trained
    assert list(handlers.generate.browser_reference("the cat", 8, "torch", "fp32", request=request)) == [
        (gr.skip(), gr.skip())
    ]
    files, reference = list(handlers.generate.browser_reference("the cat", 8, "browser", "fp32", request=request))[-1]
    model = handlers.services.session(request).model
    assert reference["ids"] == model.tokenizer.encode("the cat") and len(reference["expected"]) == 8
    assert model.generate([reference["ids"]], 8)[0, len(reference["ids"]) :].tolist() == reference["expected"]
    assert json.loads(Path(files[-1]).read_text())["precision"] == "fp32"


# defaults a newcomer meets (issue 22) -------------------------------------------------------------
def _repetitive(text: str, n: int = 4) -> float:
    """The share of the text's character n-grams that repeat an earlier one (1.0: one n-gram over and over)."""
    grams = [text[i : i + n] for i in range(len(text) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def test_the_generate_tabs_defaults_write_varied_text_from_the_training_texts_start(trained, handlers, text_file):
    request, _ = trained
    start = text_file.read_text(encoding="utf-8").splitlines()[0]
    prompt = handlers.generate.suggested_prompt(
        generation.default_prompt(), request
    )  # the model came: its text's start
    assert prompt and start.startswith(prompt)
    assert handlers.generate.suggested_prompt("my own words", request) == gr.skip()  # a typed prompt stays
    key = owners.new_key()
    handlers.models.save_model("prompt-model", key, request=request)
    loaded = Request("loads-prompt-model")
    handlers.models.load_model("prompt-model", key, request=loaded)  # a saved model keeps its text's start
    assert handlers.generate.suggested_prompt("", loaded) == prompt
    defaults = {**generation.DEFAULTS, "seed": "3", "max_new_tokens": 120}
    text = generate(handlers, request, prompt=prompt, **defaults)[0][len(prompt) :]
    assert len(text) > 40 and _repetitive(text) < 0.6, text
    greedy = generate(handlers, request, prompt=prompt, max_new_tokens=120)[0][len(prompt) :]
    assert _repetitive(greedy) > _repetitive(text), (greedy, text)  # what the old default (greedy) did


def test_why_it_wrote_this_says_the_browser_backend_is_not_covered(trained, handlers):
    request, _ = trained
    generate(handlers, request)
    tokens, note = handlers.generate.look_view(backends.BROWSER, request=request)
    assert tokens == [] and "generation on the server" in note
    assert "на сервере" in handlers.generate.look_view(backends.BROWSER, request=Request("trained", "ru"))[1]
    tokens, note = handlers.generate.look_view(backends.TORCH, request=request)
    assert tokens and "Click a token" in note


def test_plot_titles_and_the_empty_evaluation_table_speak_the_readers_language(handlers):
    plot, _ = handlers.train.page_labels(request=Request("labels", "ru-RU"))
    table = handlers.models.page_labels(request=Request("labels", "ru-RU"))
    assert (plot["x_title"], plot["y_title"], plot["color_title"]) == ("шаг", "потери", "кривая")
    assert list(table.columns) == [RU[f"eval.col_{name}"] for name in evaluation.COLUMNS] and table.empty
    assert backends.choice_label(backends.backends()[backends.BROWSER]).key == "gen.backend_browser"


def test_training_progress_is_drawn_over_the_plot_not_over_the_status_text(tmp_path):
    """Gradio draws a run's progress text over the component it shows progress on: the status
    line (step, loss, ETA) must stay readable, so the progress goes to the plot."""
    from webapp.app import build_demo

    demo = build_demo(Settings(artifacts=tmp_path, train_threads=1))
    for name in ("train", "resume"):
        (fn,) = [fn for fn in demo.fns.values() if fn.api_name == name]
        assert [block.elem_id for block in fn.show_progress_on] == ["train-plot"], name


# failures stay in the status line (issue 22, item 6) ------------------------------------------------
def _streamed_until_error(stream) -> tuple[list[tuple], str]:
    """The outputs a train or resume stream yielded before its error, and the error's (toast) text."""
    outputs = []
    with pytest.raises(gr.Error) as info:
        for output in stream:
            outputs.append(output)  # noqa: PERF402 (list() would lose them when it raises)
    return outputs, info.value.message


@pytest.mark.parametrize("lang, reason", [("en", "too short"), ("ru", "слишком короткий")])
def test_a_failed_training_says_why_in_the_status_line(handlers, tmp_path, lang, reason):
    short = tmp_path / "short.txt"
    short.write_text("just a few words", encoding="utf-8")
    request = Request(f"short-status-{lang}", lang)
    values = [{**TINY, "steps": 30}[name] for name in training.SETTING_FIELDS]
    stream = handlers.train.train("upload", [str(short)], "", *values, "cpu", "new", None, request=request)
    outputs, toast = _streamed_until_error(stream)
    assert outputs[0][0] == t(lang, "train.preparing")  # the status line said it was preparing the data...
    status = outputs[-1][0]
    assert reason in toast and toast in status  # ...and then why that failed, in the reader's language
    assert status.startswith(t(lang, "train.not_run", error="").split(":")[0])
    assert all(value == gr.skip() for value in outputs[-1][1:])  # plot, sample and model stay as they were


def test_a_refused_resume_says_why_in_the_status_line(handlers):
    for lang, reason in (("en", "no stopped run"), ("ru", "нет")):
        outputs, toast = _streamed_until_error(handlers.train.resume(10, request=Request("no-run", lang)))
        assert len(outputs) == 1 and toast in outputs[0][0] and reason in outputs[0][0]
