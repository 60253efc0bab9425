"""The ecosystem loads our folders unchanged: a model trained by `python -m gpt train` and exported
with default options (the session's tiny model, conftest.py), in transformers, optimum,
transformers.js and onnxruntime-genai, each generating our torch model's greedy ids.

optimum and transformers.js run outside this environment (`tests/interop.py` says how they are
installed; `.ci/run` installs both) and skip with the reason when they are not installed (under
`CI=true` they fail instead).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from needs import need_module

from export import OnnxGPT
from gpt import GPT, GPTConfig
from gpt.hub import read_config_values

REPO = Path(__file__).resolve().parents[1]
PROMPT = "ROMEO:\nWhat light"
NEW_TOKENS = 24
TEXTS = [
    "KING HENRY:\nOnce more unto the breach, dear friends, once more;\n\n\tOr close the wall up.",
    "héllo wörld — 世界 🙂  two  spaces<|endoftext|>after the end",
    " leading space and trailing newline\n",
]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    """The session's tiny model: `python -m gpt train` on the shipped excerpt, GPT-2-shaped (conftest.py)."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def exported(tiny_export) -> Path:
    """Its fp32 export with default options, in a folder named `onnx` (optimum once matched its
    `subfolder="onnx"` against the whole path)."""
    return tiny_export("fp32")


@pytest.fixture(scope="module")
def model(tiny_model) -> GPT:
    return tiny_model


@pytest.fixture(scope="module")
def prompt_ids(model) -> list[int]:
    return model.tokenizer.encode(PROMPT)


@pytest.fixture(scope="module")
def greedy(model, prompt_ids) -> list[int]:
    """Our torch model's greedy continuation: what every runtime must reproduce."""
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, len(prompt_ids) :].tolist()


# --- transformers ---------------------------------------------------------------------------------


def test_transformers_loads_the_checkpoint_as_gpt2_with_our_logits_and_greedy_ids(
    checkpoint, model, prompt_ids, greedy
):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    warned = _Records()
    logging.getLogger("transformers").addHandler(warned)  # transformers' loggers do not propagate
    assert isinstance(hf.config, GPT2Config) and hf.config.n_embd == model.config.emb_size
    ids = torch.tensor([model.tokenizer.encode(TEXTS[0])[: model.config.max_seq_len]])
    with torch.no_grad():
        difference = (hf(ids).logits - model(ids)).abs().max().item()
    assert difference < 1e-4
    try:
        out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
    finally:
        logging.getLogger("transformers").removeHandler(warned)
    assert out[0, len(prompt_ids) :].tolist() == greedy  # pad and end ids from generation_config.json
    assert not [m for m in warned.messages if "max_length" in m], warned.messages  # no "Both max_new_tokens and"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("folder", ["checkpoint", "exported"])
def test_autotokenizer_gives_our_ids(request, folder, model):
    from transformers import AutoConfig, AutoTokenizer

    path = request.getfixturevalue(folder)
    tokenizer = AutoTokenizer.from_pretrained(path)
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == model.tokenizer.encode(text)
        assert tokenizer.decode(model.tokenizer.encode(text)) == text
    assert tokenizer.eos_token_id == model.tokenizer.eos_token_id
    assert AutoConfig.from_pretrained(path).model_type == "gpt2"


def test_one_config_file_for_both_readers(checkpoint, model):
    values = json.loads((checkpoint / "config.json").read_text())
    assert values["n_layer"] == model.config.num_layers and values["num_layers"] == model.config.num_layers
    assert values["activation_function"] == "gelu_new" and values["eos_token_id"] == model.tokenizer.eos_token_id
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    assert generation["eos_token_id"] == model.tokenizer.eos_token_id and "max_length" not in generation
    assert GPTConfig.from_dict(read_config_values(values)) == model.config
    with pytest.raises(ValueError, match="n_embd = 48 disagrees with emb_size = 32"):
        read_config_values({**values, "n_embd": 48})
    with pytest.raises(ValueError, match="model_type 'llama' is not a GPT-2 config"):
        read_config_values({**values, "model_type": "llama"})
    plain = {key: values[key] for key in ("model_type", "n_embd", "n_head", "n_layer", "vocab_size")}
    with pytest.raises(ValueError, match="without simple-llm's fields"):
        read_config_values(plain)


def test_other_shapes_say_they_are_not_gpt2_compatible(tmp_path):
    from gpt.hub import gpt2_incompatibility

    config = GPTConfig(vocab_size=300, max_seq_len=32, emb_size=24, num_heads=4, head_size=8, bias=False)
    assert gpt2_incompatibility(config) == (
        "bias=False (GPT-2 has biases in every layer); num_heads * head_size = 4 * 8 = 32 differs from emb_size = 24"
    )
    folder = GPT(config).save(tmp_path / "m")
    assert json.loads((folder / "config.json").read_text()) == config.to_dict()  # no model_type: not a GPT-2
    assert GPT.load(folder).config == config


# --- the runtimes that load the export folder -------------------------------------------------------


def test_onnxruntime_genai_generates_our_greedy_ids_and_tokens(exported, model, prompt_ids, greedy):
    og = need_module("onnxruntime_genai", "install with: pip install --no-deps onnxruntime-genai")
    genai_model = og.Model(str(exported))
    params = og.GeneratorParams(genai_model)
    params.set_search_options(do_sample=False, max_length=len(prompt_ids) + NEW_TOKENS)
    generator = og.Generator(genai_model, params)
    generator.append_tokens([prompt_ids])
    while not generator.is_done():
        generator.generate_next_token()
    assert list(generator.get_sequence(0))[len(prompt_ids) :] == greedy
    tokenizer = og.Tokenizer(genai_model)  # reads tokenizer.json + tokenizer_config.json
    assert list(tokenizer.encode(PROMPT)) == prompt_ids
    assert tokenizer.decode(greedy) == model.tokenizer.decode(greedy)


@pytest.mark.slow  # a side environment
def test_optimum_generates_our_greedy_ids(exported, prompt_ids, greedy):
    from interop import optimum_generate

    generated, graph = optimum_generate(exported, prompt_ids, NEW_TOKENS)
    assert Path(graph) == exported / "onnx" / "model.onnx"  # the portable graph, found by a plain load
    assert generated == greedy


@pytest.mark.slow  # a side environment
def test_transformers_js_generates_our_greedy_ids_and_tokens(exported, model, prompt_ids, greedy):
    from interop import transformers_js_encode, transformers_js_generate

    assert transformers_js_generate(exported, prompt_ids, NEW_TOKENS) == greedy
    for text in TEXTS:
        assert transformers_js_encode(exported, text) == model.tokenizer.encode(text)


@pytest.mark.slow  # a side environment
def test_transformers_js_runs_the_int8_graph(tiny_export, prompt_ids):
    """An int8 export's `onnx/model_quantized.onnx` is what transformers.js's "q8" loads: its greedy
    ids are native onnxruntime's on that same graph, every one of them."""
    from interop import transformers_js_generate

    folder = tiny_export("int8")
    native = OnnxGPT.load(folder, graph="onnx/model_quantized.onnx", threads=1)
    expected = native.generate([prompt_ids], NEW_TOKENS, do_sample=False)[0, len(prompt_ids) :].tolist()
    generated = transformers_js_generate(folder, prompt_ids, NEW_TOKENS, dtype="q8")
    assert len(generated) == NEW_TOKENS and generated == expected
