"""Models after their first run, through the handlers: going on training the current or a saved
model on new text (the Train tab's "start from"), with bad starting points refused before anything
is written, scoring models on a held-out text (the Models tab's evaluation), and looking inside: a generation's
probabilities and alternatives, a text's surprise."""

import json
import math
import zipfile
from pathlib import Path

import gradio as gr
import pytest
import torch
from tiny_training import assert_same_weights
from webapp_common import Request, error_of, generate, plain, text, train

from gpt import GPT, Tokenizer, evaluate_text, token_losses
from webapp import insight, library, owners, training
from webapp.app import SimpleLLM
from webapp.i18n import t
from webapp.settings import Settings

NEW_WORDS = ["zebra", "quartz", "vixen", "jumps", "over", "lazy", "fog", "under", "amber", "skies"]
OWNER = owners.new_key()  # one visitor's browser: every session below is that visitor's page, reloaded


APP_SETTINGS = dict(max_steps=500)  # conftest's `handlers`


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("texts")
    first, new = folder / "first.txt", folder / "new.txt"
    first.write_text(text(), encoding="utf-8")
    new.write_text(text(words=NEW_WORDS, seed=1), encoding="utf-8")
    return {"first": first, "new": new}


@pytest.fixture(scope="module")
def base(handlers, files) -> Request:
    """A session whose model trained 40 steps on the first text, saved as `base`."""
    request = Request("base")
    train(handlers, request, [files["first"]], steps=40)
    handlers.models.save_model("base", OWNER, request=request)
    return request


def saved(handlers: SimpleLLM, name: str) -> Path:
    return library.root(handlers.services.settings) / owners.of_key(OWNER).id / name


def _runs(handlers: SimpleLLM, request: Request) -> set[str]:
    folder = handlers.services.session(request).folder / "runs"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_the_current_model_goes_on_training_on_new_text(handlers, files, base):
    session = handlers.services.session(base)
    before = session.model
    before_weights = {k: v.clone() for k, v in before.state_dict().items()}
    earlier_end = session.job.steps_done
    new_text = files["new"].read_text(encoding="utf-8")
    loss_before = evaluate_text(before, new_text[:2000]).loss

    outputs = train(handlers, base, [files["new"]], steps=30, start="current", num_layers=3, vocab_size=999)
    _, plot, _, summary = outputs[-1]
    plot = plot["value"].dropna()  # the drawn points (each series also has one empty row)
    after = session.model
    assert after is not before and after.config == before.config  # its shape, not the UI's settings
    assert after.tokenizer is before.tokenizer
    assert all(torch.equal(before_weights[k], v) for k, v in before.state_dict().items())  # trained a copy
    assert evaluate_text(after, new_text[:2000]).loss < loss_before
    assert "trained further on new.txt" in plain(summary)
    assert after.training_record["started_from"]["steps"] == earlier_end
    assert after.training_record["texts"] == ["new.txt"]

    # the loss curve shows the earlier run, then this one from where it ended
    earlier = plot[plot["split"] == "train, before this run"]
    current = plot[plot["split"] == "train"]
    assert len(earlier) > 1 and earlier["step"].max() <= earlier_end
    assert current["step"].min() > earlier_end and current["step"].max() == earlier_end + 30


def test_a_saved_model_goes_on_training_in_another_session(handlers, files, base):
    request = Request("other")
    base_model = GPT.load(saved(handlers, "base"))
    outputs = train(handlers, request, [files["new"]], steps=20, start="saved", start_model="base", owner_key=OWNER)
    model = handlers.services.session(request).model
    assert model.config == base_model.config and model.tokenizer.to_json_str() == base_model.tokenizer.to_json_str()
    assert model.training_record["started_from"]["model"] == "base"
    plot = outputs[-1][1]["value"].dropna()
    base_steps = json.loads((saved(handlers, "base") / "training.json").read_text())["steps"]
    assert plot[plot["split"] == "train"]["step"].min() > base_steps
    handlers.models.save_model("tuned", OWNER, request=request)
    record = json.loads((saved(handlers, "tuned") / "training.json").read_text())
    assert record["started_from"]["model"] == "base" and record["steps"] == 20


def test_a_stopped_continued_run_resumes_as_the_same_run(handlers, files, base):
    request = Request("resumer")
    train(handlers, request, [files["new"]], steps=10, start="saved", start_model="base", owner_key=OWNER)
    first = handlers.services.session(request).job
    *_, last = handlers.train.resume(25, request=request)
    job = handlers.services.session(request).job
    assert job is not first and job.earlier == first.earlier and job.label == first.label
    assert job.model.training_record["started_from"]["model"] == "base"
    assert "trained further on new.txt" in plain(last[3])


@pytest.mark.slow  # an ONNX export of its own, in a child process: not in the fast tier
def test_an_unsaved_model_trained_further_is_named_by_what_it_learned(handlers, files):
    """Issue 22, item 5: no name the user never gave (`simple-llm-runs-001`) in the summary, the
    model card or the export's zip: a model never saved is described by its texts."""
    request = Request("unsaved")
    train(handlers, request, [files["first"]], steps=20)
    first_summary = plain(handlers.models.model_info(request=request))
    summary = train(handlers, request, [files["new"]], steps=10, start="current")[-1][3]
    summary = plain(summary)
    assert "trained on first.txt, trained further on new.txt" in summary and "runs" not in summary
    assert "trained on first.txt" in first_summary and "runs" not in first_summary
    record = handlers.services.session(request).model.training_record
    assert "model" not in record["started_from"] and record["started_from"]["texts"] == ["first.txt"]
    zip_path, _ = list(handlers.models.export("fp32", request=request))[-1]
    assert Path(zip_path).name == "trained-on-first.txt-trained-further-on-new.txt-onnx-fp32.zip"
    with zipfile.ZipFile(zip_path) as archive:
        card = archive.read(next(n for n in archive.namelist() if n.endswith("/README.md"))).decode()
    assert "- went on from a model trained on `first.txt`" in card and "runs-0" not in card
    assert "saved model" not in card

    handlers.models.save_model("mine", OWNER, request=request)  # a name the user gave is the name used from then on
    train(handlers, request, [files["new"]], steps=5, start="current")
    record = handlers.services.session(request).model.training_record
    assert record["started_from"]["model"] == "mine"
    assert "mine, trained further on new.txt" in plain(handlers.models.model_info(request=request))


@pytest.mark.parametrize(
    "start, name, message",
    [
        ("bogus", None, "start = 'bogus' is not valid"),
        ("saved", None, "Choose a saved model first."),
        ("saved", "../base", "no saved model called '../base'"),
        ("current", None, "There is no model yet"),
    ],
)
def test_bad_starting_points_are_refused_before_anything_is_written(handlers, files, start, name, message):
    request = Request(f"bad-{start}-{name}")
    assert message in error_of(lambda: train(handlers, request, [files["new"]], steps=5, start=start, start_model=name))
    assert _runs(handlers, request) == set() and handlers.services.session(request).model is None


def test_a_saved_model_whose_tokenizer_does_not_fit_is_refused(handlers, files, base):
    folder = handlers.services.settings.models_dir / "misfit"
    GPT(vocab_size=100, max_seq_len=16, emb_size=16, num_heads=2, num_layers=1).save(folder)
    (folder / "tokenizer.json").write_text((saved(handlers, "base") / "tokenizer.json").read_text())
    request = Request("misfit")
    message = error_of(lambda: train(handlers, request, [files["new"]], steps=5, start="saved", start_model="misfit"))
    assert "more than the model's vocabulary of 100" in message and handlers.services.session(request).model is None


def _scripted_validation(monkeypatch, first: float, then: float) -> None:
    """Every validation loss `fit` computes from now on: `first` (the start), then `then`, then rising."""
    calls = []

    def scripted(*args, **kwargs) -> float:
        calls.append(None)
        return first if len(calls) == 1 else then + 0.1 * (len(calls) - 2)

    monkeypatch.setattr("gpt.training.evaluate", scripted)


@pytest.mark.parametrize("lang, rose", [("en", "The validation loss rose"), ("ru", "Потери на валидации выросли")])
def test_a_run_that_overfits_keeps_its_best_checkpoint_and_says_so(handlers, files, monkeypatch, lang, rose):
    """Issue 22, item 9: training further on a small text raised the validation loss, and the app
    kept the last model without a word. It keeps the checkpoint of the lowest validation loss."""
    request = Request(f"overfit-{lang}", lang)
    train(handlers, request, [files["first"]], steps=20)
    _scripted_validation(monkeypatch, first=4.0, then=3.0)  # better after the start, then worse and worse
    *_, (status, *_) = train(handlers, request, [files["new"]], steps=20, start="current")
    session = handlers.services.session(request)
    job = session.job
    best = job.trainer.history.evaluations[1][0]  # the first evaluation after the start
    assert job.kept_step == best and job.trainer.history.evaluations[0] == (0, 4.0)
    values = {"best": "3.000", "best_step": best, "last": f"{job.trainer.validation_loss:.3f}", "step": job.steps_done}
    assert rose in status and t(lang, "train.kept_best", **values) in status
    assert session.model is job.model and session.model_source == job.checkpoint_dir / "best"
    assert_same_weights(session.model, GPT.load(job.checkpoint_dir / "best"))
    record = session.model.training_record
    assert record["steps"] == best and record["validation_loss"] == 3.0
    assert training.Curve.from_record(record).end == 20 + best  # its curve ends at the weights kept


def test_a_run_that_only_made_the_model_worse_keeps_the_model_it_started_from(handlers, files, base, monkeypatch):
    request = Request("worse")
    train(handlers, request, [files["first"]], steps=20)
    before = handlers.services.session(request).model
    _scripted_validation(monkeypatch, first=2.0, then=3.0)
    *_, (status, *_) = train(handlers, request, [files["new"]], steps=20, start="current")
    assert handlers.services.session(request).model is before and handlers.services.session(request).job.kept_start
    assert "The validation loss rose" in plain(status) and "kept the model the run started from" in status

    other = Request("worse-saved")  # a saved model: it becomes the current model, as it was saved
    *_, (status, _, _, summary) = train(
        handlers, other, [files["new"]], steps=20, start="saved", start_model="base", owner_key=OWNER
    )
    session = handlers.services.session(other)
    assert session.saved_name == "base" and plain(summary).startswith("base ·")
    assert_same_weights(session.model, GPT.load(saved(handlers, "base")))
    assert session.model.training_record["steps"] == GPT.load(saved(handlers, "base")).training_record["steps"]


def _series(plot: dict) -> dict[str, list[int]]:
    """The steps of each series a loss-plot update draws (its empty rows, one per series, left out)."""
    frame = plot["value"].dropna()
    return {name: sorted(frame[frame["split"] == name]["step"]) for name in frame["split"].unique()}


COLOUR_MAP = {
    "train, before this run": "#93c5fd", "validation, before this run": "#fdba74", "train": "#2563eb",
    "validation": "#ea580c",
}  # fmt: skip


def test_the_earlier_curve_is_whole_and_every_series_has_its_colour(handlers, files):
    """Issue 22, item 4: after training further, the earlier curve is drawn whole, in the legend and
    in its own colour; a series keeps its colour from run to run. Every frame holds every series (one
    empty row each), because the plot fixes its colour scale to the series it holds when a run's first
    frame redraws it; the legend lists the series the run draws."""
    request = Request("curves")
    first_run = train(handlers, request, [files["first"]], steps=40)
    first = first_run[-1][1]
    assert first_run[0][1]["colors_in_legend"] == ["train", "validation"]  # with the stream's first yield
    assert set(first["value"]["split"]) == set(COLOUR_MAP) and first["color_map"] == COLOUR_MAP
    assert set(_series(first)) == {"train", "validation"}
    further_run = train(handlers, request, [files["new"]], steps=20, start="current")
    further = further_run[-1][1]
    assert further_run[0][1]["colors_in_legend"] == list(COLOUR_MAP)  # the earlier curve, in the legend
    shown_at_start = _series(further_run[0][1])  # the earlier curve, before the run's first step
    assert shown_at_start == {"train, before this run": _series(first)["train"],
                              "validation, before this run": _series(first)["validation"]}  # fmt: skip
    series = _series(further)
    assert list(series) == list(COLOUR_MAP) and further["color_map"] == COLOUR_MAP
    assert series["train, before this run"] == sorted(_series(first)["train"])  # the whole first run
    assert series["validation, before this run"] == sorted(_series(first)["validation"])
    assert min(series["train"]) == 41 and max(series["train"]) == 60

    handlers.models.save_model("curvy", OWNER, request=request)  # a saved model keeps its whole curve
    other = Request("curves-ru", "ru")
    saved_further = train(
        handlers, other, [files["new"]], steps=10, start="saved", start_model="curvy", owner_key=OWNER
    )
    plot = saved_further[-1][1]
    series = _series(plot)
    assert len(series["обучение, до этого запуска"]) > 30 and max(series["обучение, до этого запуска"]) == 60
    assert min(series["обучение"]) == 61 and max(series["обучение"]) == 70
    assert list(plot["color_map"].values()) == list(COLOUR_MAP.values())  # in Russian, the same colours
    assert saved_further[0][1]["colors_in_legend"] == list(plot["color_map"])


def test_a_saved_record_gives_the_curve_its_starting_point():
    curve = training.Curve.from_record({"steps": 120, "train_loss": 2.5, "validation_loss": 2.7})
    assert curve.end == 120 and curve.train == ((120, 2.5),) and curve.evaluations == ((120, 2.7),)
    went_on = {"steps": 400, "train_loss": 2.0, "started_from": {"model": "a", "steps": 300, "train_loss": 3.0}}
    assert training.Curve.from_record(went_on).train == ((700, 2.0),)  # 300 steps, then 400 more
    whole = training.Curve(tuple((s, 5.0 - s / 1000) for s in range(1, 2001)), ((1000, 4.5), (2000, 4.0)))
    kept = training.Curve.from_record({"curve": json.loads(json.dumps(whole.to_record())), "steps": 3})
    assert kept.end == 2000 and len(kept.train) == training.PLOT_POINTS and kept.evaluations == whole.evaluations
    malformed = {"curve": {"train": [[1, "x"]]}, "steps": 5, "train_loss": 2.0}
    assert training.Curve.from_record(malformed).end == 5  # a malformed curve is ignored
    assert training.Curve.from_record({}).end == 0
    assert training.Curve.from_record({"steps": "many", "train_loss": "low"}) == training.Curve()


# --- the Models tab's evaluation ---------------------------------------------------------------------


def test_two_models_compare_on_the_same_held_out_text(handlers, files, base):
    request = Request("evaluator")
    train(handlers, request, [files["new"]], steps=20, start="saved", start_model="base", owner_key=OWNER)
    held_out = text(words=NEW_WORDS, seed=9, count=300)
    table, message, _ = handlers.models.evaluate("current", None, held_out, None, request=request)
    table, message, _ = handlers.models.evaluate("saved", "base", held_out, None, OWNER, request=request)
    assert list(table.columns) == [
        "model", "text", "tokens", "loss per token", "perplexity", "nats per byte", "bits per byte"
    ]  # fmt: skip
    assert list(table["model"]) == ["base", handlers.services.session(request).model_label]  # newest first
    expected = evaluate_text(GPT.load(saved(handlers, "base")), held_out)
    assert table["nats per byte"][0] == pytest.approx(expected.nats_per_byte, abs=1e-4)
    assert table["tokens"][0] == expected.tokens and f"{expected.nats_per_byte:.4f} nats per byte" in message
    original, tuned = table["nats per byte"]  # newest first: the saved base, then the current model
    assert tuned < original  # the model trained further on this kind of text predicts it better


def test_an_uploaded_file_is_scored_by_the_upload_rules(handlers, files, base, tmp_path):
    table, message, _ = handlers.models.evaluate("current", None, "", str(files["new"]), request=base)
    assert table["text"][0] == "new.txt" and "new.txt" in message
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"\x7fELF\x02\x01\x01\x00" * 8)
    assert "binary" in error_of(lambda: handlers.models.evaluate("current", None, "", str(blob), request=base))


@pytest.mark.parametrize(
    "which, name, pasted, message",
    [
        ("current", None, "   ", "Paste a text or upload a text file"),
        ("saved", None, "some text", "Choose a saved model first."),
        ("saved", "nope", "some text", "no saved model called 'nope'"),
        ("best", None, "some text", "model = 'best' is not valid"),
        ("current", None, 42, "text = 42 is not valid"),
    ],
)
def test_bad_evaluation_requests_say_why(handlers, base, which, name, pasted, message):
    assert message in error_of(lambda: handlers.models.evaluate(which, name, pasted, None, request=base))


def test_evaluation_without_a_model_or_over_the_text_limit(tmp_path):
    handlers = SimpleLLM.create(Settings(artifacts=tmp_path, max_eval_mb=1))
    assert "no model yet" in error_of(
        lambda: handlers.models.evaluate("current", None, "text", None, request=Request("a"))
    )
    too_long = "a" * (1024 * 1024 + 1)
    assert "over the limit" in error_of(
        lambda: handlers.models.evaluate("current", None, too_long, None, request=Request("a"))
    )


# --- looking inside: the generation's probabilities and a text's surprise ---------------------------


def _select(index: int) -> gr.SelectData:
    return gr.SelectData(None, {"index": index, "value": None})


def test_the_generation_view_shows_each_tokens_probability_and_alternatives(handlers, base):
    text_out, _ = generate(handlers, base, max_new_tokens=24)
    view, hint = handlers.generate.token_view(request=base)
    assert "".join(piece for piece, _ in view) == text_out[len("the cat") :]  # the continuation, piece by piece
    assert all(0.0 <= surprise <= 1.0 for _, surprise in view) and "Click a token" in hint
    pieces = handlers.services.session(base).pieces
    for piece in pieces:  # greedy: every chosen token was the model's most likely one
        assert piece.alternatives[0][1] == pytest.approx(piece.probability, rel=1e-5)
        assert len(piece.alternatives) == 5 and piece.alternatives[0][1] >= piece.alternatives[-1][1]
    details = handlers.generate.token_details(_select(2), request=base)
    assert f"{pieces[2].probability:.1%}" in details and details.count("\n") == 5
    assert "Generate some text first" in handlers.generate.token_details(_select(10_000), request=base)


@pytest.mark.slow  # an ONNX export of its own, in a child process: not in the fast tier
def test_both_backends_show_the_same_probabilities(handlers, base):
    views = {}
    for backend in ("torch", "ort-cpu"):
        generate(handlers, base, backend=backend, max_new_tokens=16)
        views[backend] = handlers.services.session(base).pieces
    assert [p.text for p in views["torch"]] == [p.text for p in views["ort-cpu"]]
    for ours, theirs in zip(views["torch"], views["ort-cpu"]):
        assert ours.probability == pytest.approx(theirs.probability, abs=1e-4)
        assert [a for a, _ in ours.alternatives] == [a for a, _ in theirs.alternatives]


def test_a_fresh_session_has_no_view(handlers):
    view, hint = handlers.generate.token_view(request=Request("no-view"))
    assert view == [] and "Generate some text first" in hint


def test_evaluation_shows_the_text_coloured_by_surprise(handlers, base):
    held_out = "the cat sat on a mat; кот сидел на ковре\n"
    _, _, view = handlers.models.evaluate("current", None, held_out, None, request=base)
    assert "".join(piece for piece, _ in view) == held_out
    model = handlers.services.session(base).model
    ids, losses = token_losses(model, held_out)
    pieces = insight.surprise_pieces(ids, losses, model.tokenizer)
    assert view == [(piece.text, round(1 - piece.probability, 3)) for piece in pieces]
    assert sum(-math.log(piece.probability) for piece in pieces) == pytest.approx(losses.sum().item(), rel=1e-5)


def test_a_character_split_across_tokens_is_one_piece():
    tokenizer = Tokenizer()  # bytes: "é" is two tokens
    ids = tokenizer.encode("aé")
    losses = torch.tensor([0.1, 0.2, 0.3])
    pieces = insight.surprise_pieces(ids, losses, tokenizer)
    assert [p.text for p in pieces] == ["a", "é"]
    assert pieces[1].probability == pytest.approx(math.exp(-0.5))


@pytest.mark.parametrize("lang, early", [("en", "Stopped early"), ("ru", "Остановлено досрочно")])
def test_a_run_whose_validation_loss_stops_falling_stops_early_and_resume_goes_on(
    handlers, files, monkeypatch, lang, early
):
    """The app keeps a run's best checkpoint, so once `EARLY_STOP_EVALUATIONS` evaluations in a row
    found nothing lower, it stops instead of spending the rest of its steps learning the text by heart."""
    request = Request(f"early-{lang}", lang)
    _scripted_validation(monkeypatch, first=3.0, then=3.5)  # the first evaluation stays the best
    *_, (status, *_) = train(handlers, request, [files["first"]], steps=300)
    job = handlers.services.session(request).job
    interval, patience = training.eval_interval(300), training.EARLY_STOP_EVALUATIONS
    assert interval == 10 and job.stop_reason == "early_stopping"
    assert job.steps_done == (1 + patience) * interval and job.kept_step == interval
    assert [step for step, _ in job.trainer.history.evaluations] == [interval * (i + 1) for i in range(1 + patience)]
    message = t(lang, "train.early_stop", step=job.steps_done, steps=300, evaluations=patience)
    assert early in status and message in status and t(lang, "train.kept_best", **_kept(job)) in status
    assert_same_weights(handlers.services.session(request).model, GPT.load(job.checkpoint_dir / "best"))

    *_, (status, *_) = handlers.train.resume(300, request=request)  # on from step 70, the best still step 10
    job = handlers.services.session(request).job
    assert job.stop_reason == "early_stopping" and job.steps_done == 70 + patience * interval
    assert job.kept_step == interval and early in status


def _kept(job) -> dict:
    return {
        "best": "3.000",
        "best_step": job.kept_step,
        "last": f"{job.trainer.validation_loss:.3f}",
        "step": job.steps_done,
    }
