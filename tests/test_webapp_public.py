"""The web app as a public Space sees it: outside users through `gradio_client` on loopback.

Four sessions train, export and generate at once (two trainings and two exports may run side by
side), each gets its own model; adversarial values get a clear message while the server keeps
answering; a full queue answers "try again"; a server killed with `kill -9` during a training and
an export restarts clean.
"""

import json
import os
import resource
import signal
import threading
from pathlib import Path

import pytest
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from webapp_common import (
    TINY,
    app_settings,
    client,
    connect,
    free_port,
    launch,
    start_server,
    text,
    train_args,
    wait_for,
)
from webapp_common import generate_args as common_generate_args

pytestmark = [
    pytest.mark.slow,  # servers and browsers: not in the fast tier
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*(no_silent_downcasting|copy keyword).*"),
]

OWNER = "restart-test-owner-key-0123456789abcdef"  # an owner key, as a browser keeps it


def generate_args(prompt: str = "the", backend: str = "torch", **options) -> list:
    return common_generate_args(prompt, backend, **{"max_new_tokens": 16, **options})


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> list[Path]:
    """Four texts with disjoint vocabularies, so each session's model writes only its own words."""
    folder = tmp_path_factory.mktemp("texts")
    vocabularies = [
        "the cat sat on a mat and".split(),
        "zebra quartz vixen jumps over lazy fog".split(),
        "кот сидел на ковре у окна дома".split(),
        "alpha beta gamma delta epsilon zeta eta".split(),
    ]
    paths = []
    for n, words in enumerate(vocabularies):
        path = folder / f"text-{n}.txt"
        path.write_text(text(1500, seed=n, words=words), encoding="utf-8")
        paths.append(path)
    return paths


APP_SETTINGS = dict(  # conftest's `settings`
    max_upload_mb=1,
    max_text_mb=1,
    max_steps=2000,
    max_params=300_000,
    generate_threads=1,
    train_concurrency=2,
    export_concurrency=2,  # two sessions' exports side by side, as two trainings are
    max_train_memory_mb=512,
)


@pytest.fixture(scope="module")
def server(settings):
    demo, url = launch(settings)
    yield demo, url
    demo.close()


def session_flow(url: str, file: Path, results: dict, n: int) -> None:
    """One outside user: train, export, generate on both backends, read the model info."""
    try:
        c = client(url)
        status, *_ = c.predict(*train_args(file, 40), api_name="/train")
        _, parity = c.predict("fp32", api_name="/export")
        torch_text, _ = c.predict(*generate_args(), api_name="/generate")
        onnx_text, _ = c.predict(*generate_args(backend="ort-cpu"), api_name="/generate")
        results[n] = dict(
            status=status, parity=parity, torch=torch_text, onnx=onnx_text, info=c.predict(api_name="/model_info")
        )
    except Exception as err:  # reported by the test
        results[n] = dict(error=f"{type(err).__name__}: {err}")


def test_four_sessions_train_export_and_generate_at_once(server, texts):
    _, url = server
    results: dict[int, dict] = {}
    threads = [threading.Thread(target=session_flow, args=(url, file, results, n)) for n, file in enumerate(texts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert len(results) == 4
    for n, result in results.items():
        assert "error" not in result, result
        assert "Finished at step 40" in result["status"].replace("**", ""), result["status"]
        assert "PASS" in result["parity"]
        assert result["torch"] == result["onnx"], "each session's exported model matches its own torch model"
        assert f"text-{n}.txt" in result["info"], "each session sees its own model"
        words = set(texts[n].read_text(encoding="utf-8").split())
        others = set().union(*(set(p.read_text(encoding="utf-8").split()) for p in texts if p != texts[n])) - words
        continuation = result["torch"][len("the") :]
        assert not others & set(continuation.split()), "no other session's words"
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert peak_gib < 4, f"the server process (with the test) peaked at {peak_gib:.1f} GiB"


ADVERSARIAL = [
    (generate_args(mode="sampling", seed="inf"), "seed"),
    (generate_args(mode="sampling", seed="1e999"), "seed"),
    (generate_args(mode="sampling", seed=-3), "seed"),
    (generate_args(mode="sampling", top_p="nan"), "top_p"),
    (generate_args(mode="sampling", min_p="1e999"), "min_p"),
    (generate_args(mode="sampling", temperature="-inf"), "temperature"),
    (generate_args(max_new_tokens=10**12), "max_new_tokens"),
    (generate_args(top_k=[1, 2]), "top_k"),
    (generate_args(repetition_penalty={"x": 1}), "repetition_penalty"),
]


def test_adversarial_values_get_a_message_and_the_server_keeps_answering(server, texts):
    _, url = server
    c = client(url)
    c.predict(*train_args(texts[0], 5), api_name="/train")
    for args, name in ADVERSARIAL:
        with pytest.raises(AppError, match=name):
            c.predict(*args, api_name="/generate")
    for steps, name in (("inf", "steps"), ("nan", "steps"), (10**40, "steps")):
        with pytest.raises(AppError, match=name):
            c.predict(*train_args(texts[0], steps), api_name="/train")
    with pytest.raises(AppError, match="learning_rate"):
        c.predict(*train_args(texts[0], 5, learning_rate="nan"), api_name="/train")
    with pytest.raises(AppError, match="training memory budget"):
        c.predict(*train_args(texts[0], 5, batch_size=1024, context=4096, emb_size=16), api_name="/train")
    with pytest.raises(AppError, match="max_new_tokens"):
        c.predict("the", "1e999", "torch", api_name="/compare")
    assert c.predict(*generate_args(), api_name="/generate")[0].startswith("the")


def test_a_full_queue_answers_try_again(tmp_path, texts):
    settings = app_settings(tmp_path, max_queue=1, max_params=300_000)  # a server of its own: a queue of one
    demo, url = launch(settings)
    try:
        running = client(url).submit(*train_args(texts[0], 2000), api_name="/train")
        wait_for(lambda: running.status().code in (Status.PROCESSING, Status.ITERATING), "the first training", 60)
        waiting = [client(url).submit(*train_args(texts[1], 5), api_name="/train") for _ in range(3)]
        wait_for(lambda: any(job.done() for job in waiting), "an answer to a request beyond the queue", 60)
        errors = [str(job.exception()) for job in waiting if job.done() and job.exception() is not None]
        assert any("Queue is full" in e and "try again" in e for e in errors), errors
        running.cancel()
    finally:
        demo.close()


# restart safety ---------------------------------------------------------------------------------------
def test_a_server_killed_during_training_export_and_save_restarts_clean(tmp_path, texts):
    artifacts, port = tmp_path / "artifacts", free_port()
    url = f"http://127.0.0.1:{port}/"
    process = start_server(artifacts, port)
    try:
        saver = connect(url, process)
        saver.predict(*train_args(texts[0], 20), api_name="/train")
        saver.predict("kept", OWNER, api_name="/save_model")  # a key kept by the browser survives a restart
        trainer = client(url)
        training = trainer.submit(*train_args(texts[1], 500), api_name="/train")
        exporting = saver.submit("int8", api_name="/export")
        sessions = artifacts / "sessions" / f"{process.pid}-1"
        wait_for(
            lambda: list(sessions.glob("*/runs/*/checkpoints/*")) and list(sessions.glob("*/exports/*")),
            "the training's first checkpoint and the export's folder",
            seconds=120,
        )
        # a save interrupted half-way, as `kill -9` leaves it: a hidden temporary folder of the dead server
        half = artifacts / "models" / f".saving-{process.pid}-process-x1"
        half.mkdir(parents=True)
        (half / "model.safetensors").write_bytes(b"half")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        del training, exporting
    finally:
        if process.poll() is None:
            process.kill()

    process = start_server(artifacts, port)
    try:
        c = connect(url, process)
        assert not half.exists(), "an unfinished save is deleted at start"
        assert not sessions.exists(), "the dead server's session folders are deleted at start"
        listed = c.predict(OWNER, api_name="/list_models")
        names = [choice[1] if isinstance(choice, (list, tuple)) else choice for choice in _choices(listed)]
        assert names == ["kept"], names
        summary, message = c.predict("kept", OWNER, api_name="/load_model")
        assert message == "Loaded kept."
        assert c.predict(*generate_args(), api_name="/generate")[0].startswith("the")
        [config_file] = (artifacts / "owners").glob("*/kept/config.json")
        config = json.loads(config_file.read_text())
        assert config["num_layers"] == TINY["num_layers"]
    finally:
        process.kill()
        process.wait(timeout=30)


def _choices(update) -> list:
    if isinstance(update, dict):
        return update.get("choices", [])
    return [update] if update else []
