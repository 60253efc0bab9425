"""export/web/simple_llm.mjs, the decoding loop the in-browser page runs, against gpt's: the same
greedy ids and text from the same export (cache buffers and growing pasts, across a window
rebuild), and the same sampling rules on the same logits. It runs under Node with onnxruntime-node
here (the browser runs the same file with onnxruntime-web); skips with the reason without Node."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from interop import node_answer
from tiny_training import TINY_CONTEXT

from gpt import GPT, SamplingConfig
from gpt.generation import apply_repetition_penalty, min_p_filter, top_k_filter, top_p_filter

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "js" / "simple_llm_node.mjs"
ORT_NODE = REPO / "node_modules" / "onnxruntime-node"
CONTEXT = TINY_CONTEXT


def _node(request: dict) -> dict:
    return node_answer(SCRIPT, request, ORT_NODE)


@pytest.fixture(scope="module")
def model(tiny_model) -> GPT:
    return tiny_model


@pytest.fixture(scope="module")
def exported(tiny_export) -> Path:
    return tiny_export("fp32")  # with the portable graph


@pytest.mark.parametrize("graph", ["model_fast.onnx", "onnx/model.onnx"])
def test_greedy_ids_equal_torch_across_a_window_rebuild(model, exported, graph):
    ids = model.tokenizer.encode("ROMEO:\nBut soft")
    expected = model.generate([ids], CONTEXT * 2, do_sample=False)[0, len(ids) :].tolist()  # past max_seq_len
    answer = _node({"folder": str(exported), "graph": graph, "ids": ids, "sampling": {"maxNewTokens": CONTEXT * 2}})
    assert answer["capacity"] == (CONTEXT if graph == "model_fast.onnx" else None)
    assert answer["tokens"] == expected


def test_greedy_text_with_penalty_and_stop_strings_equals_torch(model, exported):
    options = {"repetition_penalty": 1.3, "stop_strings": ["\n\n", "KING"]}
    for prompt in ("JULIET:\n", ""):
        expected = list(model.stream_text(prompt, 80, **options))
        sampling = {"maxNewTokens": 80, "repetitionPenalty": 1.3, "stopStrings": options["stop_strings"]}
        assert _node({"folder": str(exported), "prompt": prompt, "sampling": sampling})["pieces"] == expected


def test_seeded_sampling_is_reproducible(exported, model):
    ids = model.tokenizer.encode("KING:")
    sampling = {"maxNewTokens": 30, "doSample": True, "temperature": 1.2, "topK": 40, "seed": 7}
    first = _node({"folder": str(exported), "ids": ids, "sampling": sampling})["tokens"]
    assert first == _node({"folder": str(exported), "ids": ids, "sampling": sampling})["tokens"]
    assert first != _node({"folder": str(exported), "ids": ids, "sampling": {**sampling, "seed": 8}})["tokens"]


SETTINGS = [
    {"temperature": 0.7, "top_k": 5},
    {"temperature": 1.3, "top_p": 0.6},
    {"temperature": 1.0, "min_p": 0.2},
    {"temperature": 0.9, "top_k": 12, "top_p": 0.8, "min_p": 0.05, "repetition_penalty": 1.4},
    {"temperature": 1.0, "top_k": 3, "repetition_penalty": 0.7},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_sampling_keeps_the_same_tokens_as_gpt(settings):
    generator = torch.Generator().manual_seed(len(str(settings)))
    logits = torch.randn(1, 50, generator=generator) * 3
    logits[0, 7] = logits[0, 3]  # a tie
    seen = [3, 7, 11, 20]
    config = SamplingConfig(do_sample=True, **settings)
    expected = logits.clone()
    if config.repetition_penalty != 1.0:
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[0, seen] = True
        expected = apply_repetition_penalty(expected, mask, config.repetition_penalty)
    expected = expected / config.temperature
    if config.top_k is not None:
        expected = top_k_filter(expected, config.top_k)
    if config.top_p is not None:
        expected = top_p_filter(expected, config.top_p)
    if config.min_p is not None:
        expected = min_p_filter(expected, config.min_p)
    names = {"top_k": "topK", "top_p": "topP", "min_p": "minP", "repetition_penalty": "repetitionPenalty"}
    sampling = {"doSample": True, **{names.get(k, k): v for k, v in settings.items()}}
    answer = _node({"filter": {"logits": logits[0].tolist(), "seen": seen, "sampling": sampling}})
    assert answer["kept"] == torch.isfinite(expected[0]).nonzero()[:, 0].tolist()


def test_greedy_choice_and_bad_settings():
    logits = [0.5, 2.0, 2.0, -1.0]
    assert _node({"filter": {"logits": logits, "sampling": {}}})["choice"] == 1  # the first of equal logits
    assert torch.tensor(logits).argmax().item() == 1
    penalized = _node({"filter": {"logits": logits, "seen": [1], "sampling": {"repetitionPenalty": 2.0}}})
    assert penalized["choice"] == 2
    with pytest.raises(AssertionError, match="topP must be in \\(0, 1\\]"):
        _node({"filter": {"logits": logits, "sampling": {"doSample": True, "topP": 0}}})
