"""ONNX export: folder layout, fp32/fp16/int8 parity with torch, the shared decoding loop on
onnxruntime, providers, and failures that leave nothing behind (onnxruntime-genai and the other
runtimes that load the folder: test_export_interop.py).

Exports take seconds each, so the folders most tests share are session fixtures; a test that
makes an export of its own is marked `slow` (outside the fast tier).
"""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export import (
    TOLERANCES,
    ExportError,
    OnnxGPT,
    ProviderError,
    Tolerance,
    attention,
    compare,
    onnx_export,
    signature,
    to_onnx,
    webpage,
)
from export import precision as precisions
from export.runtime import PROVIDERS, CacheBuffers, session_options
from gpt import GPT, CheckpointError, Tokenizer
from gpt.model import KVBuffer

SHAKESPEARE = Path(__file__).resolve().parents[1] / "data/shakespeare-excerpt.txt"  # shipped with the repository
MAX_SEQ_LEN = 72
RANDOM = dict(
    max_seq_len=MAX_SEQ_LEN, emb_size=24, num_heads=4, head_size=8, num_layers=2, dropout=0.0,
    bias=False, tie_embeddings=False, activation="gelu",
)  # fmt: skip
TRAINED = dict(max_seq_len=MAX_SEQ_LEN, emb_size=64, num_heads=4, num_layers=2, dropout=0.0)


def _web_notes() -> list[str]:
    """What every export notes about its web page: nothing with the runtime installed (`npm ci`),
    else that the page loads it from the CDN."""
    return [] if webpage.local_runtime() is not None else [webpage.CDN_NOTE]


def _model(tokenizer: Tokenizer, **shape) -> GPT:
    torch.manual_seed(0)
    model = GPT(vocab_size=tokenizer.vocab_size, **shape).eval()
    model.tokenizer = tokenizer
    return model


def _train(model: GPT, ids: torch.Tensor, steps: int = 250, batch: int = 16, seq: int = 64) -> None:
    """A plain AdamW loop on random windows of `ids`."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch, 1), generator=generator) + torch.arange(seq + 1)
        windows = ids[starts]
        logits = model(windows[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer()  # byte level: 256 bytes + end-of-text


@pytest.fixture(scope="session")
def random_model(tokenizer):
    """Random weights; head width != emb/heads, no biases, untied head, exact GELU: the less common
    graph shape."""
    return _model(tokenizer, **RANDOM)


@pytest.fixture(scope="session")
def random_dir(random_model, tmp_path_factory) -> Path:
    return to_onnx(random_model, tmp_path_factory.mktemp("random") / "onnx")


@pytest.fixture(scope="session")
def trained_checkpoint(tokenizer, tmp_path_factory) -> Path:
    model = _model(tokenizer, **TRAINED)
    _train(model, torch.tensor(tokenizer.encode(SHAKESPEARE.read_text(encoding="utf-8")[:200_000])))
    return model.save(tmp_path_factory.mktemp("trained") / "checkpoint", tokenizer=tokenizer)


@pytest.fixture(scope="session")
def trained_model(trained_checkpoint) -> GPT:
    return GPT.load(trained_checkpoint)


@pytest.fixture(scope="session")
def trained_dir(trained_checkpoint, tmp_path_factory) -> Path:
    return to_onnx(trained_checkpoint, tmp_path_factory.mktemp("trained_fp32") / "onnx")


@pytest.fixture(scope="session", params=["fp16", "int8"])
def reduced_dir(request, trained_checkpoint, tmp_path_factory) -> tuple[str, Path]:
    precision = request.param
    return precision, to_onnx(trained_checkpoint, tmp_path_factory.mktemp(precision) / "onnx", precision=precision)


@pytest.fixture(params=["random", "trained"])
def pair(request) -> tuple[GPT, OnnxGPT]:
    """(torch model, its fp32 export on the CPU provider)."""
    if request.param == "random":
        return request.getfixturevalue("random_model"), OnnxGPT.load(request.getfixturevalue("random_dir"))
    return request.getfixturevalue("trained_model"), OnnxGPT.load(request.getfixturevalue("trained_dir"))


def _prompts(vocab_size: int, length: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts; rows after the first are left-padded by different amounts."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, : min(length - 1, 3 * row)] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _cuda_model(folder: Path) -> OnnxGPT:
    try:
        return OnnxGPT.load(folder, provider="cuda")
    except ProviderError as err:
        pytest.skip(f"onnxruntime's CUDA provider does not run here: {err}")


# --- the exported folder -------------------------------------------------------------------------


def test_folder_holds_the_fast_and_portable_graphs_and_their_metadata(trained_dir, trained_model):
    files = sorted(p.relative_to(trained_dir).as_posix() for p in trained_dir.rglob("*") if p.is_file())
    assert [f for f in files if not f.startswith("web/")] == [
        "README.md",
        "config.json",
        "export_report.json",
        "genai_config.json",
        "generation_config.json",
        "model_fast.onnx",
        "onnx/model.onnx",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]  # no .onnx.data: weights are inside below 2 GB
    assert {"web/index.html", "web/model.json", "web/simple_llm.mjs"} <= set(files)  # tests/test_web_page.py runs it
    assert not list(trained_dir.parent.glob(".*tmp*"))
    assert OnnxGPT.load(trained_dir).config == trained_model.config
    config = json.loads((trained_dir / "config.json").read_text())
    assert {k: config[k] for k in trained_model.config.to_dict()} == trained_model.config.to_dict()
    assert config["model_type"] == "gpt2" and config["n_embd"] == trained_model.config.emb_size
    genai = json.loads((trained_dir / "genai_config.json").read_text())
    assert genai["search"]["past_present_share_buffer"] is True
    assert genai["model"]["decoder"]["filename"] == "model_fast.onnx"
    assert genai["model"]["decoder"]["session_options"]["provider_options"] == []  # the CPU
    assert genai["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"

    report = json.loads((trained_dir / "export_report.json").read_text())
    assert report["precision"] == "fp32" and report["opset"] == onnx_export.DEFAULT_OPSET
    assert report["exporter"] == "dynamo" and report["gpt2_compatible"] and report["left_out"] == _web_notes()
    assert report["versions"]["torch"] and report["versions"]["onnx"] and report["versions"]["onnxruntime"]
    assert report["parity"]["passed"] and report["parity"]["decode_max_abs"] < 1e-4
    assert list(report["graphs"]) == ["model_fast.onnx", "onnx/model.onnx"]
    assert [g["cache_buffers"] for g in report["graphs"].values()] == [True, False]
    assert all(g["parity"]["passed"] and g["parity"]["greedy_identical"] for g in report["graphs"].values())
    inputs = {v["name"]: v for v in report["signature"]["inputs"]}
    outputs = {v["name"]: v for v in report["signature"]["outputs"]}
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs["input_ids"] == {"name": "input_ids", "dtype": "int64", "shape": ["batch_size", "sequence_length"]}
    assert inputs["attention_mask"]["shape"] == ["batch_size", "total_sequence_length"]
    assert inputs["past_key_values.1.value"] == {
        "name": "past_key_values.1.value",
        "dtype": "float32",
        "shape": ["batch_size", 4, MAX_SEQ_LEN, 16],  # a buffer of the whole context
    }
    assert outputs["logits"]["dtype"] == "float32" and outputs["logits"]["shape"][2] == trained_model.config.vocab_size
    assert list(outputs) == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]

    portable = signature.describe(trained_dir / "onnx" / "model.onnx")
    past = {v["name"]: v for v in portable["inputs"]}["past_key_values.0.key"]
    assert past["shape"] == ["batch_size", 4, "past_sequence_length", 16]  # grows; transformers.js names the batch
    assert [v["name"] for v in portable["inputs"]] == [v["name"] for v in report["signature"]["inputs"]]


def test_a_model_that_is_not_gpt2_shaped_exports_without_the_portable_graph_and_says_why(random_dir, random_model):
    files = sorted(p.relative_to(random_dir).as_posix() for p in random_dir.rglob("*") if p.is_file())
    assert "model_fast.onnx" in files and not any(name.startswith("onnx/") for name in files)
    assert json.loads((random_dir / "config.json").read_text()) == random_model.config.to_dict()  # no GPT-2 fields
    report = json.loads((random_dir / "export_report.json").read_text())
    assert not report["gpt2_compatible"] and list(report["graphs"]) == ["model_fast.onnx", "web/model.onnx"]
    note, *web = report["left_out"]
    assert web == _web_notes()
    assert "not GPT-2 compatible (bias=False" in note and "4 * 8 = 32 differs from emb_size = 24" in note
    assert note in (random_dir / "README.md").read_text()
    inputs = {v["name"]: v for v in report["signature"]["inputs"]}
    assert inputs["past_key_values.1.value"]["shape"] == ["batch_size", 4, MAX_SEQ_LEN, 8]


def test_the_model_card_has_hub_metadata_and_says_how_to_load(trained_dir):
    card = (trained_dir / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers.js" in front and "pipeline_tag: text-generation" in front
    assert "- onnx" in front and "- gpt2" in front
    assert "`onnx/model.onnx` | fp32 |" in card and "ORTModelForCausalLM.from_pretrained" in card
    assert "og.Model(folder)" in card and "AutoModelForCausalLM" in card


def test_one_graph_runs_prefill_from_an_empty_cache_and_decode(random_dir, random_model):
    onnx_model = OnnxGPT.load(random_dir)
    heads, size = random_model.config.num_heads, random_model.config.head_size
    assert onnx_model.cache_capacity == MAX_SEQ_LEN
    ids = np.array([[5, 6, 7]])
    logits, cache = onnx_model.run(ids, np.ones((1, 3), np.int64), np.arange(3)[None])  # a new, empty cache
    assert logits.shape == (1, 3, random_model.config.vocab_size)
    assert isinstance(cache, CacheBuffers) and cache.length == 3
    assert [b.shape() for b in cache.buffers] == [[1, heads, MAX_SEQ_LEN, size]] * 4
    assert [p.shape for p in cache] == [(1, heads, 3, size)] * 4  # the filled part
    buffers = [p.data_ptr() for p in cache.buffers]
    step, same = onnx_model.run(np.array([[8]]), np.ones((1, 4), np.int64), np.array([[3]]), cache)
    assert same is cache and [p.data_ptr() for p in cache.buffers] == buffers  # written in place
    assert (
        step.shape == (1, 1, random_model.config.vocab_size) and [p.shape for p in cache] == [(1, heads, 4, size)] * 4
    )
    assert not np.shares_memory(step, logits)  # a prefill's logits are its own
    assert step is cache.step_logits  # a one-token step's are the cache's, overwritten by its next step
    with torch.no_grad():
        expected, past = random_model(torch.tensor([[5, 6, 7, 8]]), use_cache=True)
    np.testing.assert_allclose(step[0, -1], expected[0, -1].numpy(), atol=1e-5)
    for onnx_value, torch_value in zip(cache, (t for pair in past for t in pair)):
        np.testing.assert_allclose(onnx_value, torch_value.numpy(), atol=1e-5)


@pytest.mark.slow  # an export of its own: not in the fast tier
@pytest.mark.parametrize("case", ["cuda provider", "odd head size"])
def test_growing_pasts_for_the_cuda_provider_and_odd_head_sizes(tokenizer, tmp_path, case):
    """GroupQueryAttention's CUDA kernels are fp16-only without an attention bias, and its CPU
    kernels need a head size that is a multiple of 8: those exports get MultiHeadAttention, whose
    pasts start empty and grow by concatenation, with the same parity."""
    shape, provider = (RANDOM, "cuda") if case == "cuda provider" else ({**RANDOM, "head_size": 5}, "cpu")
    model = _model(tokenizer, **shape)
    folder = to_onnx(model, tmp_path / "onnx", provider=provider)
    ops = Counter(node.op_type for node in onnx.load(str(folder / "model_fast.onnx")).graph.node)
    assert ops["MultiHeadAttention"] == model.config.num_layers and not ops["GroupQueryAttention"]
    report = json.loads((folder / "export_report.json").read_text())
    assert report["provider"] == provider and report["cache_buffers"] is False
    genai = json.loads((folder / "genai_config.json").read_text())
    assert genai["search"]["past_present_share_buffer"] is False
    expected_options = [{"cuda": {}}] if provider == "cuda" else []  # genai then runs it on CUDA
    assert genai["model"]["decoder"]["session_options"]["provider_options"] == expected_options
    onnx_model = OnnxGPT.load(folder)  # runs on the CPU provider too
    assert onnx_model.cache_capacity is None
    _, past = onnx_model.run(np.array([[5, 6, 7]]), np.ones((1, 3), np.int64), np.arange(3)[None])
    assert [p.shape for p in past] == [(1, 4, 3, model.config.head_size)] * 4
    ids, mask = _prompts(model.config.vocab_size, 9, 3)
    report = compare(model, onnx_model, ids, mask, decode_steps=40)
    assert report.passed and report.greedy_identical, report.format()


# head size 16: cache buffers (GroupQueryAttention); 6: growing pasts (MultiHeadAttention)
@pytest.mark.slow  # an export of its own: not in the fast tier
@pytest.mark.parametrize("head_size", [16, 6])
@pytest.mark.parametrize(
    "option", [dict(qk_norm=True), dict(logit_softcap=5.0), dict(rotary=True)], ids=lambda o: ",".join(o)
)
def test_options_that_are_not_gpt2_export_with_parity(tokenizer, tmp_path, option, head_size):
    """QK-norm, logit soft-capping and rotary positions: no portable graph (transformers cannot load
    them), a note saying so, and the fast graph's parity with torch through either attention op."""
    model = _model(tokenizer, **{**TRAINED, "head_size": head_size, **option})
    with torch.no_grad():
        model.transformer.wte.weight.mul_(30)  # logits of std ~5, so the cap bends them without near ties
    folder = to_onnx(model, tmp_path / "onnx")
    report = json.loads((folder / "export_report.json").read_text())
    assert not report["gpt2_compatible"] and not (folder / "onnx").exists()
    assert report["cache_buffers"] is (head_size == 16)
    assert any(f"{next(iter(option))}=" in note and "transformers" in note for note in report["left_out"])
    ids, mask = _prompts(model.config.vocab_size, 9, 3)
    compared = compare(model, OnnxGPT.load(folder), ids, mask, decode_steps=30)
    assert compared.passed and compared.greedy_identical, compared.format()


def test_export_checks_the_provider(random_model, tmp_path):
    with pytest.raises(ValueError, match="provider must be one of cpu, cuda"):
        to_onnx(random_model, tmp_path / "onnx", provider="tpu")
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize("buffers", [True, False])
@pytest.mark.parametrize(
    "shape",
    [RANDOM, TRAINED, {**TRAINED, "qk_norm": True}, {**RANDOM, "qk_norm": True}, {**TRAINED, "rotary": True},
     {**RANDOM, "qk_norm": True, "rotary": True}],
)  # fmt: skip
def test_cached_attention_is_the_models_attention(tokenizer, shape, buffers):
    """The export-time attention (the contrib op's torch twin) gives the model's logits and cache,
    for a left-padded prefill and a cached step; the model is restored afterwards."""
    model = _model(tokenizer, **shape)
    ids, mask = _prompts(model.config.vocab_size, 6, 3)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    config = model.config
    empty = tuple((torch.zeros(3, config.num_heads, 0, config.head_size),) * 2 for _ in model.transformer.h)

    def cache(past=None):  # the export's cache: buffers NaN where unfilled (never read), or growing pasts
        if not buffers:
            return empty if past is None else past
        shape = (3, config.num_heads, config.max_seq_len, config.head_size)
        if past is None:
            return tuple(
                KVBuffer(torch.full(shape, float("nan")), torch.full(shape, float("nan"))) for _ in model.transformer.h
            )
        return tuple(KVBuffer(keys, values, 6) for keys, values in past)

    def filled(cache, length):
        return tuple((keys[:, :, :length], values[:, :, :length]) for keys, values in cache)

    with torch.no_grad():
        expected, past = model(ids, empty, mask, positions, use_cache=True)
        step = (ids[:, :1], torch.cat([mask, torch.ones_like(ids[:, :1])], 1), positions[:, -1:] + 1)
        expected_step, expected_cache = model(step[0], past, *step[1:], use_cache=True)
        with attention.cached_attention_blocks(model, buffers):
            assert all(isinstance(block.attn, attention.CachedAttention) for block in model.transformer.h)
            actual, actual_past = model(ids, cache(), mask, positions, use_cache=True)
            actual_step, actual_cache = model(step[0], cache(actual_past), *step[1:], use_cache=True)
    assert not any(isinstance(block.attn, attention.CachedAttention) for block in model.transformer.h)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(actual_step, expected_step)
    torch.testing.assert_close((filled(actual_past, 6), filled(actual_cache, 7)), (past, expected_cache))


def test_graph_is_fused_for_onnxruntime(random_dir, trained_dir):
    """Attention with its cache is one contrib op per layer and the causal/padding mask is built
    once per step; with biases (the GPT-2 default) residual adds, layer norms and GELUs are fused too."""
    for folder in (random_dir, trained_dir):
        ops = Counter(node.op_type for node in onnx.load(str(folder / "model_fast.onnx")).graph.node)
        layers = json.loads((folder / "config.json").read_text())["num_layers"]
        assert ops["GroupQueryAttention"] == layers and ops["Where"] == 1
        assert not ops["Concat"] and ops["Reshape"] <= 1 and ops["Transpose"] <= 1  # 1: a tied LM head's weight
    ops = Counter(node.op_type for node in onnx.load(str(trained_dir / "model_fast.onnx")).graph.node)
    assert ops["SkipLayerNormalization"] == 2 * layers + 1 and ops["FastGelu"] == layers
    assert not ops["LayerNormalization"] and ops["Add"] == layers  # the QKV biases (the op has no bias input)
    assert sum(ops.values()) <= 9 * layers + 30  # + once per step: the mask, the op's lengths, embeddings, head


@pytest.mark.slow  # an export of its own: not in the fast tier
def test_exact_gelu_with_bias_is_fused_to_bias_gelu(tokenizer, tmp_path):
    model = _model(tokenizer, **{**TRAINED, "activation": "gelu"})
    folder = to_onnx(model, tmp_path / "onnx", portable=False)
    ops = Counter(node.op_type for node in onnx.load(str(folder / "model_fast.onnx")).graph.node)
    assert ops["BiasGelu"] == model.config.num_layers and not ops["Gelu"] and not ops["FastGelu"]
    assert json.loads((folder / "export_report.json").read_text())["parity"]["passed"]


# --- fp32 parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("length, steps", [(1, 60), (2, 60), (17, 50), (MAX_SEQ_LEN - 1, 1)])
def test_fp32_parity(pair, length, steps, batch):
    model, onnx_model = pair
    ids, mask = _prompts(model.config.vocab_size, length, batch)
    report = compare(model, onnx_model, ids, mask, decode_steps=steps)
    assert report.passed, report.format()
    assert report.prefill_max_abs < 1e-4 and report.decode_max_abs < 1e-4
    assert report.present_max_abs < 1e-4
    assert report.top1_agreement == 1.0
    assert report.greedy_identical


def test_generation_is_the_same_loop_as_torch(pair):
    model, onnx_model = pair
    ids, mask = _prompts(model.config.vocab_size, 9, 3, seed=1)
    greedy = dict(attention_mask=mask)
    assert torch.equal(onnx_model.generate(ids, 50, **greedy), model.generate(ids, 50, **greedy))
    sampled = dict(
        do_sample=True,
        temperature=0.9,
        top_k=40,
        top_p=0.95,
        min_p=0.02,
        repetition_penalty=1.3,
        seed=7,
        attention_mask=mask,
    )
    assert torch.equal(onnx_model.generate(ids, 50, **sampled), model.generate(ids, 50, **sampled))
    long = onnx_model.generate(ids[:1], 100)  # past max_seq_len: the window is rebuilt the same way
    assert long.shape[1] == 9 + 100 and torch.equal(long, model.generate(ids[:1], 100))


def test_both_backends_report_the_same_token_scores(pair):
    """The scores come from the one loop: same tokens, same alternatives, log-probabilities within
    the fp32 tolerance, also across a window rebuild."""
    model, onnx_model = pair
    ids, mask = _prompts(model.config.vocab_size, 9, 3, seed=2)
    seen: dict[str, list] = {"torch": [], "onnx": []}
    options = dict(do_sample=True, temperature=1.1, top_k=20, seed=3, attention_mask=mask, alternatives=4)
    out = model.generate(ids, 80, on_scores=seen["torch"].append, **options)  # 9 + 80 > MAX_SEQ_LEN
    assert torch.equal(onnx_model.generate(ids, 80, on_scores=seen["onnx"].append, **options), out)
    assert len(seen["torch"]) == len(seen["onnx"]) == 80
    for ours, theirs in zip(seen["torch"], seen["onnx"]):
        assert torch.equal(ours.tokens, theirs.tokens) and torch.equal(ours.top_tokens, theirs.top_tokens)
        assert torch.allclose(ours.logprobs, theirs.logprobs, atol=1e-4)
        assert torch.allclose(ours.top_logprobs, theirs.top_logprobs, atol=1e-4)


def test_text_generation_matches_torch(trained_model, trained_dir):
    onnx_model = OnnxGPT.load(trained_dir)
    for sampling in (dict(), dict(do_sample=True, temperature=0.8, top_k=50, seed=3)):
        expected = trained_model.generate_text("ROMEO:\n", 60, stop_strings=["\n\n"], **sampling)
        assert onnx_model.generate_text("ROMEO:\n", 60, stop_strings=["\n\n"], **sampling) == expected
    assert "".join(onnx_model.stream_text("JULIET:", 20)) == trained_model.generate_text("JULIET:", 20)


# --- fp16 and int8 -------------------------------------------------------------------------------


def test_reduced_precision_parity(trained_model, reduced_dir):
    precision, folder = reduced_dir
    onnx_model = OnnxGPT.load(folder)
    ids, mask = _prompts(trained_model.config.vocab_size, 8, 3, seed=2)
    report = compare(trained_model, onnx_model, ids, mask, decode_steps=60, tolerance=TOLERANCES[precision])
    assert report.passed, report.format()
    assert report.top1_agreement >= 0.95


def test_reduced_precision_graphs(reduced_dir, trained_dir, trained_model):
    precision, folder = reduced_dir
    report = json.loads((folder / "export_report.json").read_text())
    assert report["precision"] == precision and report["parity"]["passed"]
    types = {v["name"]: v["dtype"] for v in report["signature"]["inputs"] + report["signature"]["outputs"]}
    ops = {node.op_type for node in onnx.load(str(folder / "model_fast.onnx")).graph.node}
    assert types["logits"] == "float32"
    if precision == "fp16":  # for the CUDA provider: fp16 cache, fused LayerNorm, fp32 logits
        assert report["provider"] == "cuda" and not report["cache_buffers"]
        assert types["past_key_values.0.key"] == types["present.0.key"] == "float16"
        assert {"SkipLayerNormalization", "MultiHeadAttention"} <= ops  # fused ops, fp16 kernels on CUDA
    else:  # 8-bit weights in blocks, fp32 activations and cache buffers
        assert report["provider"] == "cpu" and report["cache_buffers"]
        assert types["past_key_values.0.key"] == "float32" and "GroupQueryAttention" in ops
        assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and not ops & {"MatMul", "Gather", "Transpose"}
        assert (folder / "model_fast.onnx").stat().st_size < (trained_dir / "model_fast.onnx").stat().st_size / 2
    variant = {"fp16": "onnx/model_fp16.onnx", "int8": "onnx/model_quantized.onnx"}[precision]
    web = ["web/model.onnx"] if precision == "int8" else []  # the browser's int8 graph (the fp16 one's is onnx/)
    assert list(report["graphs"]) == ["model_fast.onnx", "onnx/model.onnx", variant, *web]  # each passed its parity run
    assert report["graphs"][variant]["precision"] == precision and not report["graphs"][variant]["cache_buffers"]
    if web:  # 8-bit weights, dequantized once when a session loads (Cast, Mul: folded), a quarter of fp32's size
        ops = {node.op_type for node in onnx.load(str(folder / web[0])).graph.node}
        assert {"Cast", "Mul", "MatMul", "MultiHeadAttention"} <= ops
        assert not ops & {"MatMulNBits", "GatherBlockQuantized"}
        assert (folder / web[0]).stat().st_size < (folder / "model_fast.onnx").stat().st_size * 1.1  # as MatMulNBits
        assert OnnxGPT.load(folder, graph=web[0]).cache_capacity is None
        for graph, graph_precision in ((folder / web[0], "int8"), (trained_dir / "onnx/model.onnx", "fp32")):
            weights = precisions.weight_bytes(trained_model, graph_precision)  # the app's download label
            assert 0.85 < weights / graph.stat().st_size <= 1.0, (graph, weights)  # the rest: the graph's ops
    portable = OnnxGPT.load(folder, graph=variant)
    assert portable.cache_capacity is None and OnnxGPT.load(folder, graph="onnx/model.onnx").past_dtype == np.float32


@pytest.mark.slow  # an export of its own: not in the fast tier
def test_int8_embedding_table_is_quantized_once_for_the_lookup_and_the_tied_head(trained_model, tmp_path):
    """The tied table is stored once in 8 bits (blocks along each row, zero point 128), read by
    `GatherBlockQuantized` and, reshaped, by the head's `MatMulNBits`; it dequantizes to the
    trained weights within half a quantization step."""
    folder = to_onnx(trained_model, tmp_path / "onnx", precision="int8", portable=False)
    graph = onnx.load(str(folder / "model_fast.onnx")).graph
    embeddings = ("model.lm_head.weight", "model.transformer.wpe.weight")
    tables = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name.startswith(embeddings)}
    assert sorted(tables) == [
        "model.lm_head.weight_q8",
        "model.lm_head.weight_scales",
        "model.transformer.wpe.weight_q8",
        "model.transformer.wpe.weight_scales",
    ]  # the tied table once; no float32 copy left
    readers = Counter((n.op_type, i) for n in graph.node for i in n.input if i.startswith("model.lm_head.weight"))
    assert readers == {
        ("GatherBlockQuantized", "model.lm_head.weight_q8"): 1,
        ("GatherBlockQuantized", "model.lm_head.weight_scales"): 1,
        ("Reshape", "model.lm_head.weight_q8"): 1,  # to MatMulNBits' [N, blocks, block] layout, folded at load
        ("MatMulNBits", "model.lm_head.weight_q8_blocks"): 1,
        ("MatMulNBits", "model.lm_head.weight_scales"): 1,
    }
    data, scales = tables["model.lm_head.weight_q8"], tables["model.lm_head.weight_scales"]
    weights = trained_model.lm_head.weight.detach().numpy()
    block = weights.shape[1] // scales.shape[1]
    restored = ((data.astype(np.float32) - 128).reshape(*scales.shape, block) * scales[..., None]).reshape(
        weights.shape
    )
    assert np.all(np.abs(restored - weights) <= np.repeat(scales, block, axis=1) / 2 + 1e-7)


# --- runtime settings and providers --------------------------------------------------------------


def test_session_settings(random_dir):
    model = OnnxGPT.load(random_dir, threads=2, optimization="basic")
    assert model.provider == "CPUExecutionProvider"
    assert model.session.get_session_options().intra_op_num_threads == 2
    assert OnnxGPT.load(random_dir).session.get_session_options().intra_op_num_threads == 1  # the default
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        session_options(threads=0)
    with pytest.raises(ValueError, match="optimization must be one of"):
        session_options(optimization="max")
    with pytest.raises(ValueError, match="provider must be one of"):
        OnnxGPT.load(random_dir, provider="tpu")


def test_loading_a_folder_without_a_graph(random_dir, tmp_path):
    (tmp_path / "config.json").write_text((random_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model_fast.onnx: missing from the export folder"):
        OnnxGPT.load(tmp_path)


def test_cuda_request_fails_clearly_without_a_working_gpu(random_dir):
    try:
        model = OnnxGPT.load(random_dir, provider="cuda")
    except ProviderError as err:
        assert "cuda" in str(err) and "provider='cpu'" in str(err)
    else:
        pytest.skip(f"CUDA works here ({model.provider}): nothing to refuse")


@pytest.mark.parametrize("provider", ["cuda", "cpu"])
def test_cuda_provider_runs_with_the_cache_on_the_gpu(random_dir, random_model, tmp_path, provider):
    """The graph built for CUDA, and the one built for the CPU (its attention op falls back to
    the CPU provider there), both keep the cache on the device between steps."""
    _cuda_model(random_dir)  # skip before paying for an export where CUDA cannot run
    folder = random_dir if provider == "cpu" else to_onnx(random_model, tmp_path / "onnx", provider="cuda")
    model = _cuda_model(folder)
    assert model.provider == PROVIDERS["cuda"]
    ids, mask = _prompts(random_model.config.vocab_size, 9, 3)
    _, past = model.run(ids.numpy(), mask.numpy(), (mask.cumsum(1) - 1).clamp(min=0).numpy())
    device_values = past.buffers if isinstance(past, CacheBuffers) else past
    assert all(p.device_name().lower() == "cuda" for p in device_values)  # IOBinding kept the cache on the device
    report = compare(random_model, model, ids, mask, decode_steps=30)
    assert report.passed and report.greedy_identical, report.format()


def test_cuda_fp16(random_dir, trained_checkpoint, trained_model, tmp_path_factory):
    _cuda_model(random_dir)  # skip before paying for an export where CUDA cannot run
    fp16 = to_onnx(trained_checkpoint, tmp_path_factory.mktemp("cuda_fp16") / "onnx", precision="fp16")
    ids, mask = _prompts(trained_model.config.vocab_size, 8, 3)
    report = compare(trained_model, OnnxGPT.load(fp16, provider="cuda"), ids, mask, 50, TOLERANCES["fp16"])
    assert report.passed, report.format()


# --- failures leave nothing behind ---------------------------------------------------------------


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(precision="bf16"), "precision must be one of fp32, fp16, int8"),
        (dict(opset=11), "opset must be an integer from 18 to 24"),
        (dict(opset="20"), "opset must be an integer"),
    ],
)
def test_bad_arguments(random_model, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        to_onnx(random_model, tmp_path / "out", **options)
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_checkpoint_with_a_missing_file(random_model, tmp_path, missing):
    checkpoint = random_model.save(tmp_path / "checkpoint")
    (checkpoint / missing).unlink()
    with pytest.raises(CheckpointError, match=missing):
        to_onnx(checkpoint, tmp_path / "out")
    _nothing_written(tmp_path / "out")


@pytest.mark.slow  # an export of its own: not in the fast tier
def test_a_model_without_a_tokenizer_exports_and_says_what_it_leaves_out(trained_model, tmp_path, caplog):
    model = GPT(trained_model.config)  # built from the shape alone, as a model trained on token ids
    model.load_state_dict(trained_model.state_dict())
    model.eval()
    with caplog.at_level("WARNING", logger="export"):
        out = to_onnx(model, tmp_path / "out", portable=False)
    files = {p.name for p in out.iterdir()}
    assert {"model_fast.onnx", "config.json", "generation_config.json", "export_report.json", "README.md"} <= files
    assert not files & {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "genai_config.json"}
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["passed"] and report["parity"]["greedy_identical"]
    assert any("has no tokenizer" in note and "genai_config.json" in note for note in report["left_out"])
    assert any("portable graphs skipped" in note for note in report["left_out"])
    assert "has no tokenizer" in caplog.text
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["eos_token_id"] is None  # no token ids to name
    onnx_model = OnnxGPT.load(out)
    assert onnx_model.tokenizer is None
    ids = torch.tensor([[5, 6, 7]])
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert onnx_model.generate(ids, max_new_tokens=6, do_sample=False).tolist() == expected.tolist()


def test_unwritable_or_foreign_output_folder(random_model, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot write the export folder"):
        to_onnx(random_model, blocker / "out")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not an export folder"):
        to_onnx(random_model, foreign)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]


@pytest.fixture
def fast_exporter(monkeypatch):
    """Make the dynamo exporter fail, so exports take the (fast) TorchScript fallback."""

    def broken(*args, **kwargs):
        raise RuntimeError("dynamo unavailable in this test")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)


def test_torchscript_fallback_and_re_export_into_the_same_folder(random_model, tmp_path, fast_exporter, caplog):
    out = tmp_path / "onnx"
    for _ in range(2):  # the second export replaces the first
        to_onnx(random_model, out)
        report = json.loads((out / "export_report.json").read_text())
        assert report["exporter"] == "torchscript" and report["parity"]["passed"]
    assert "falling back to the TorchScript exporter" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


def test_parity_failure_leaves_nothing(random_model, tmp_path, fast_exporter, monkeypatch):
    monkeypatch.setitem(TOLERANCES, "fp32", Tolerance(atol=-1.0, rtol=0.0, min_top1=1.0))
    with pytest.raises(ExportError) as info:
        to_onnx(random_model, tmp_path / "out")
    headline, *table = str(info.value).splitlines()  # why, on the first line: callers showing one line show it
    assert headline.startswith("model_fast.onnx (fp32) does not match the torch model: prefill logits outside atol -1")
    assert table[-1].startswith("result           FAIL: prefill logits outside")
    _nothing_written(tmp_path / "out")


@pytest.mark.slow  # an export of its own: not in the fast tier
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_weights_go_to_one_data_file_above_the_protobuf_limit(random_model, tmp_path, monkeypatch, precision):
    monkeypatch.setattr(onnx_export.precisions, "WEIGHTS_LIMIT", 1024)  # pretend the model is above 2 GB
    out = to_onnx(random_model, tmp_path / "onnx", precision=precision)
    assert {"model_fast.onnx", "model_fast.onnx.data"} <= {p.name for p in out.iterdir()}
    assert (out / "model_fast.onnx").stat().st_size < (out / "model_fast.onnx.data").stat().st_size
    onnx_model = OnnxGPT.load(out)
    ids, mask = _prompts(random_model.config.vocab_size, 5, 2)
    assert compare(random_model, onnx_model, ids, mask, 10, TOLERANCES[precision]).passed
