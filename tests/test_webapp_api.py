"""Web app end to end: `gradio_client` against a live server on loopback.

Upload and train, generate on PyTorch and onnxruntime CPU (same greedy text), compare, export and
download the zip and run it with plain onnxruntime, two clients isolated, a training cancelled
(checkpoint kept, resumed), a queued training, generation served while another session trains,
and bad input of every kind answered with a clear message while the server keeps serving.
"""

import json
import random
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from gradio_client import Client, handle_file
from gradio_client.client import Job
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from webapp_common import WORDS, client, free_port, launch, start_server, train_args, wait_for
from webapp_common import generate_args as common_generate_args

pytestmark = [
    pytest.mark.slow,  # servers and browsers: not in the fast tier
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*(no_silent_downcasting|copy keyword).*"),
]



APP_SETTINGS = dict(  # conftest's `settings`
    max_upload_mb=1, max_text_mb=1, max_unzip_mb=8, max_steps=100_000, max_params=300_000, train_concurrency=1
)


@pytest.fixture(scope="module")
def server(settings):
    demo, url = launch(settings)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("files")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(120)]
    (folder / "story.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


def generate_args(prompt: str = "the cat", backend: str = "torch", **options) -> list:
    return common_generate_args(prompt, backend, **{"max_new_tokens": 24, **options})


def plain(markdown: str) -> str:
    return markdown.replace("**", "")


@pytest.fixture(scope="module")
def trained(server, files, tmp_path_factory) -> Client:
    _, url = server
    c = client(url)
    status, plot, sample, summary = c.predict(*train_args(files / "story.txt", 40), api_name="/train")
    assert "Finished at step 40" in plain(status), status
    return c


def test_train_generate_on_both_backends_compare_export_and_run_the_download(trained, tmp_path):
    assert "story.txt" in trained.predict(api_name="/model_info")
    torch_text, torch_stats = trained.predict(*generate_args(), api_name="/generate")
    onnx_text, onnx_stats = trained.predict(*generate_args(backend="ort-cpu"), api_name="/generate")
    assert torch_text == onnx_text and torch_text.startswith("the cat")
    assert "tokens/s" in torch_stats and "`CPUExecutionProvider`" in onnx_stats

    report = trained.predict("the cat", 10, "ort-cpu", api_name="/compare")
    assert "greedy tokens:** agree (10 of 10)" in report and "PASS" in report

    zip_path, parity = trained.predict("fp32", api_name="/export")
    assert "PASS" in parity
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path)
    folder = next(tmp_path.glob("*/model_fast.onnx")).parent
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*")} >= {
        "model_fast.onnx",
        "onnx/model.onnx",
        "README.md",
        "config.json",
        "tokenizer.json",
        "genai_config.json",
        "export_report.json",
    }
    config = json.loads((folder / "config.json").read_text())
    session = ort.InferenceSession(str(folder / "model_fast.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[5, 6, 7]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(3, dtype=np.int64)[None]}
    for value in session.get_inputs():
        if value.name not in feeds:  # the first step's cache: a buffer of the whole context, or an empty past
            _, heads, positions, size = value.shape
            assert (heads, size) == (config["num_heads"], config["head_size"])
            feeds[value.name] = np.zeros(
                (1, heads, positions if isinstance(positions, int) else 0, size), dtype=np.float32
            )
    logits = session.run(["logits"], feeds)[0]
    assert logits.shape == (1, 3, config["vocab_size"]) and np.isfinite(logits).all()


def test_models_can_be_saved_listed_downloaded_and_uploaded(server, trained, tmp_path):
    _, url = server
    update, summary, message = trained.predict("api model", api_name="/save_model")
    assert message == "Saved as api-model."
    zip_path = trained.predict("api-model", api_name="/download_model")
    other = client(url)
    _, summary, message = other.predict(handle_file(zip_path), api_name="/upload_checkpoint")
    assert "as api-model." in message and "**api-model**" in summary  # names are per owner
    _, summary, message = other.predict(handle_file(zip_path), api_name="/upload_checkpoint")
    assert "api-model-2" in message and "**api-model-2**" in summary  # never overwrites
    assert (
        other.predict(*generate_args(), api_name="/generate")[0]
        == trained.predict(*generate_args(), api_name="/generate")[0]
    )
    with pytest.raises(AppError, match="no saved model called 'api-model'"):  # another client's, private
        client(url).predict("api-model", api_name="/load_model")
    _, message = trained.predict("api-model", api_name="/publish_model")
    public = re.search(r"see it as (\S+@\w+)\.", message).group(1)
    stranger = client(url)
    listed = stranger.predict(api_name="/list_models")  # the dropdown's update: its choices and value
    assert [value for _, value in listed["choices"]] == [public]  # the only model it may use
    summary, message = stranger.predict(public, api_name="/load_model")
    assert message == f"Loaded {public}."
    with pytest.raises(AppError, match="is not yours"):
        stranger.predict(public, api_name="/delete_model")


def test_train_goes_on_from_a_saved_model_named_through_the_api(server, files, trained):
    """/train with "saved", "<name>" (the README's form) from a client that never ran the page's
    events; an owner key makes a model reachable from any client, as the page's reload does."""
    _, url = server
    trained.predict("readme-base", api_name="/save_model")  # no key: this client's session owns it
    status, *_ = trained.predict(
        *train_args(files / "story.txt", 5, start="saved", start_model="readme-base"), api_name="/train"
    )
    assert "Finished at step" in plain(status)

    key = client(url).predict(None, api_name="/owner")[0]  # a new owner key, as a page's first load gets
    trained.predict("keyed-base", key, api_name="/save_model")
    fresh = client(url)
    with pytest.raises(AppError, match="no saved model called 'keyed-base'"):
        fresh.predict(*train_args(files / "story.txt", 5, start="saved", start_model="keyed-base"), api_name="/train")
    status, _, _, summary = fresh.predict(
        *train_args(files / "story.txt", 5, key, start="saved", start_model="keyed-base"), api_name="/train"
    )
    assert "Finished at step" in plain(status) and "keyed-base, trained further on story.txt" in plain(summary)


def test_two_clients_are_isolated(server, trained):
    _, url = server
    stranger = client(url)
    assert stranger.predict(api_name="/model_info").startswith("No model yet")
    with pytest.raises(AppError, match="no model yet"):
        stranger.predict(*generate_args(), api_name="/generate")
    assert not trained.predict(api_name="/model_info").startswith("No model yet")


def test_cancelled_training_keeps_its_checkpoint_queues_others_and_resumes(server, files, trained):
    demo, url = server
    sessions = demo.simple_llm.services.sessions
    long_run = client(url)
    job: Job = long_run.submit(*train_args(files / "story.txt", 100_000), api_name="/train")
    wait_for(
        lambda: (
            sessions.get(long_run.session_hash).job is not None
            and sessions.get(long_run.session_hash).job.steps_done > 10
        ),
        "training steps",
    )

    # another session's generation is answered while the training runs
    text, stats = trained.predict(*generate_args(), api_name="/generate")
    assert text.startswith("the cat") and "tokens/s" in stats
    # a second training waits in the queue (concurrency 1) and sees its position
    waiting = client(url)
    queued = waiting.submit(*train_args(files / "story.txt", 20), api_name="/train")
    wait_for(lambda: queued.status().code == Status.IN_QUEUE, "a queued training", 30)
    assert queued.status().rank is not None
    queued.cancel()

    job.cancel()  # as the Stop button does: Gradio closes the handler, which stops the run at a clean step
    session = sessions.get(long_run.session_hash)
    wait_for(lambda: session.job.done.is_set(), "the run to stop")
    stopped_at = session.job.steps_done
    assert session.job.stop_reason == "stopped" and 10 < stopped_at < 100_000
    checkpoints = sorted(p.name for p in session.job.checkpoint_dir.iterdir() if p.name.startswith("step-"))
    assert checkpoints[-1] == f"step-{stopped_at:08d}"
    status, *_ = long_run.predict(api_name="/stop_training")
    assert f"Stopped at step {stopped_at}" in plain(status)

    status, plot, sample, summary = long_run.predict(stopped_at + 15, api_name="/resume")
    assert f"Finished at step {stopped_at + 15}" in plain(status)
    assert session.job.trainer.history.steps[-1] == stopped_at + 15 and session.job.trainer.history.steps[0] == 1


def rest(url: str, endpoint: str, *data) -> tuple[str, object]:
    """A plain REST call (`POST /gradio_api/call/<endpoint>`, then read its event stream): a new
    session every time. Returns (the last event's name, its data)."""
    import urllib.request

    body = json.dumps({"data": list(data)}).encode()
    post = urllib.request.Request(
        f"{url}gradio_api/call/{endpoint}", body, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(post, timeout=60) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{endpoint}/{event_id}", timeout=60) as response:
        lines = response.read().decode().splitlines()
    event = [line[len("event: ") :] for line in lines if line.startswith("event: ")][-1]
    payload = [line[len("data: ") :] for line in lines if line.startswith("data: ")][-1]
    return event, json.loads(payload)


def test_plain_rest_calls_own_by_the_key_they_send(server, trained):
    """Each REST call is its own session: the owner key, the last input, is what reaches a saved model."""
    _, url = server
    key = client(url).predict(None, api_name="/owner")[0]
    trained.predict("rest-model", key, api_name="/save_model")
    event, data = rest(url, "load_model", "rest-model", key)
    assert event == "complete" and data[1] == "Loaded rest-model."
    event, data = rest(url, "load_model", "rest-model", None)  # no key: this call's own session owns nothing
    assert event == "error"
    event, data = rest(url, "list_models", key)
    assert event == "complete" and "rest-model" in [value for _, value in data[0]["choices"]]


def bad_file(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def zipped(folder: Path, name: str, entries: dict[str, bytes]) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)
    return path


def test_bad_input_gets_a_clear_message_and_the_server_keeps_serving(server, files, trained, tmp_path):
    _, url = server
    c = client(url)
    cases = [
        (train_args(bad_file(tmp_path, "empty.txt", b""), 20), "/train", "is empty"),
        (train_args(bad_file(tmp_path, "blob.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00"), 20), "/train", "binary"),
        (train_args(bad_file(tmp_path, "cp1251.txt", "Привет, мир".encode("cp1251")), 20), "/train", "not valid UTF-8"),
        (train_args(bad_file(tmp_path, "short.txt", b"a few words"), 20), "/train", "too short"),
        (train_args(files / "story.txt", 20, emb_size=18, num_heads=4), "/train", "divisible by the number of heads"),
        (train_args(files / "story.txt", 200_000), "/train", "over this server's limit"),
        (generate_args(), "/generate", "no model yet"),
        (
            [handle_file(str(zipped(tmp_path, "slip.zip", {"../../config.json": b"{}"})))],
            "/upload_checkpoint",
            "points outside",
        ),
        (
            [handle_file(str(zipped(tmp_path, "bomb.zip", {"model.safetensors": bytes(20 * 1024 * 1024)})))],
            "/upload_checkpoint",
            "unpacks to more than",
        ),
        (
            [
                handle_file(
                    str(
                        zipped(
                            tmp_path,
                            "corrupt.zip",
                            {"config.json": b"{}", "model.safetensors": b"x", "tokenizer.json": b"{}"},
                        )
                    )
                )
            ],
            "/upload_checkpoint",
            "not a usable checkpoint",
        ),
        (["does-not-exist"], "/load_model", "no saved model"),
    ]
    for args, api_name, message in cases:
        with pytest.raises(AppError, match=message):
            c.predict(*args, api_name=api_name)
    with pytest.raises(
        Exception, match="(?i)too large|exceeds|413|size"
    ):  # refused at the upload itself (max_file_size)
        c.predict(*train_args(bad_file(tmp_path, "huge.txt", b"a" * (1024 * 1024 + 10)), 20), api_name="/train")

    russian = client(url, "ru-RU,ru;q=0.9")
    with pytest.raises(AppError, match="Модели ещё нет"):
        russian.predict(*generate_args(), api_name="/generate")
    assert trained.predict(*generate_args(), api_name="/generate")[0].startswith("the cat")  # still serving


def test_the_app_script_serves_the_page_from_the_repository_root(tmp_path):
    """`python webapp/app.py` as a user runs it: webapp/ (not the root) is first on sys.path."""
    import urllib.request

    port = free_port()
    process = start_server(tmp_path, port)
    try:
        page = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    page = response.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert process.poll() is None, "the server exited"
        assert "<title>simple-llm</title>" in page or "simple-llm" in page
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_readmes_api_calls_fit_the_endpoints(server):
    """README's gradio_client example passes each endpoint the inputs it takes, in number."""
    import ast

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = next(b for b in readme.split("```python")[1:] if "gradio_client" in b).split("```")[0]
    endpoints = client(server[1]).view_api(print_info=False, return_format="dict")["named_endpoints"]
    calls = [
        node
        for node in ast.walk(ast.parse(block))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "predict"
    ]
    assert len(calls) >= 5
    for call in calls:
        name = next(k.value.value for k in call.keywords if k.arg == "api_name")
        parameters = [p["parameter_name"] for p in endpoints[name]["parameters"]]
        given = parameters[: len(call.args)]  # positional: the first ones; only the owner key may be left out
        assert len(call.args) <= len(parameters) and set(parameters) - set(given) <= {"owner_key"}, (name, given)
