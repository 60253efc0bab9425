"""The model: validation, shapes, causality, the KV cache, and parity with Hugging Face GPT-2."""

import json

import pytest
import torch
from needs import need_module

from gpt import GPT, GPTConfig, count_parameters, evaluating

TINY = dict(vocab_size=97, max_seq_len=64, emb_size=32, num_heads=4, num_layers=2, dropout=0.0)


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(**{**TINY, **overrides}).eval()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(vocab_size=0), r"vocab_size must be an integer in 1\.\.1048576, got 0"),
        (dict(max_seq_len=-1), r"max_seq_len must be an integer in 1\.\.131072, got -1"),
        (dict(emb_size=30, num_heads=4), "divisible by num_heads"),
        (dict(num_heads=0), "num_heads must be an integer in 1..1024"),
        (dict(num_layers=1.5), "num_layers must be an integer in 1..1024, got 1.5"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(dropout="x"), "dropout must be a finite number"),
        (dict(dropout=float("nan")), "dropout must be a finite number in"),
        (dict(head_size=0), "head_size must be an integer in 1..4096"),
        (dict(bias="yes"), "bias must be True or False"),
        (dict(activation="relu"), "activation must be one of gelu_tanh, gelu"),
    ],
)
def test_constructor_validates(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPT(**{**TINY, **overrides})


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_layers", 1_000_000, r"num_layers must be an integer in 1\.\.1024, got 1000000"),
        ("vocab_size", 2**20 + 1, r"vocab_size must be an integer in 1\.\.1048576"),
        ("max_seq_len", 2**17 + 1, r"max_seq_len must be an integer in 1\.\.131072"),
        ("emb_size", 2**16 + 4, r"emb_size must be an integer in 1\.\.65536"),
        ("num_heads", 2048, r"num_heads must be an integer in 1\.\.1024"),
        ("head_size", 4097, r"head_size must be an integer in 1\.\.4096"),
        ("mlp_ratio", 65, r"mlp_ratio must be an integer in 1\.\.64"),
        ("mlp_ratio", True, r"mlp_ratio must be an integer"),
        ("layer_norm_eps", 0.0, r"layer_norm_eps must be in \(0, 1\), got 0.0"),
        ("layer_norm_eps", 1.0, r"layer_norm_eps must be in \(0, 1\)"),
        ("layer_norm_eps", float("nan"), "layer_norm_eps must be a finite number"),
        ("layer_norm_eps", float("inf"), "layer_norm_eps must be a finite number"),
        ("layer_norm_eps", "1e-5", "layer_norm_eps must be a finite number"),
        ("dropout", float("inf"), "dropout must be a finite number"),
    ],
)
def test_every_config_field_is_bounded(field, value, message):
    """A config.json from anyone (the app is public) cannot ask for a model of any size."""
    values = {**GPTConfig(vocab_size=10, max_seq_len=8, emb_size=16, num_heads=2).to_dict(), field: value}
    with pytest.raises(ValueError, match=message):
        GPTConfig.from_json(json.dumps(values, allow_nan=True))


def test_largest_allowed_config_is_accepted_and_counted_without_building():
    config = GPTConfig(vocab_size=2**20, max_seq_len=2**17, emb_size=2**16, num_heads=1024, num_layers=1024)
    assert config.head_size == 64 and count_parameters(config) > 2**40  # arithmetic, no allocation


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tie_embeddings", [True, False])
@pytest.mark.parametrize(
    "shape",
    [
        dict(emb_size=32, num_heads=4),
        dict(emb_size=32, num_heads=4, head_size=6, mlp_ratio=1),  # attention narrower than the residual
        dict(emb_size=24, num_heads=3, head_size=16, mlp_ratio=3, num_layers=3),  # and wider
        dict(emb_size=16, num_heads=1, mlp_ratio=7, num_layers=1),
    ],
)
def test_count_parameters_matches_the_built_model(shape, bias, tie_embeddings):
    config = GPTConfig(vocab_size=97, max_seq_len=40, bias=bias, tie_embeddings=tie_embeddings, **shape)
    assert count_parameters(config) == GPT.from_config(config).num_parameters()


def test_config_json_round_trip_and_unknown_fields():
    config = GPTConfig(vocab_size=10, max_seq_len=8, emb_size=12, num_heads=3, head_size=5, tie_embeddings=False)
    assert GPTConfig.from_json(config.to_json()) == config
    assert config.attn_size == 15
    with pytest.raises(ValueError, match="unknown GPTConfig fields: colour"):
        GPTConfig.from_dict({**json.loads(config.to_json()), "colour": "red"})


def test_from_config_builds_the_same_shape():
    config = GPTConfig(**TINY)
    model = GPT.from_config(config)
    assert model.config == config
    assert model.lm_head.weight is model.transformer.wte.weight  # tied head


def test_gpt_of_a_config_and_the_argument_forms_build_the_same_model():
    config = GPTConfig(**TINY)
    assert GPT(config).config == config
    assert GPT(**TINY).config == config
    positional = GPT(TINY["vocab_size"], TINY["max_seq_len"], 128, 4, None, 4, 0.1)
    assert positional.config == GPTConfig(vocab_size=TINY["vocab_size"], max_seq_len=TINY["max_seq_len"])
    with pytest.raises(TypeError, match="no other model arguments"):
        GPT(config, emb_size=8)


def test_head_size_may_differ_from_emb_size():
    model = tiny(head_size=6)  # attention width 24, residual width 32
    assert model.transformer.h[0].attn.c_attn.weight.shape == (32, 3 * 24)  # [in, out], as GPT-2 stores it
    assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 97)


def test_forward_shapes_and_cache_layout():
    model = tiny()
    ids = torch.randint(0, 97, (3, 7))
    assert model(ids).shape == (3, 7, 97)  # the original call returns plain logits
    logits, presents = model(ids, use_cache=True)
    assert logits.shape == (3, 7, 97)
    assert len(presents) == 2
    assert all(k.shape == v.shape == (3, 4, 7, 8) for k, v in presents)  # [batch, heads, seq, head_size]


def test_too_long_sequence_raises():
    model = tiny(max_seq_len=8)
    with pytest.raises(ValueError, match="exceeds max_seq_len 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    _, past = model(torch.zeros(1, 6, dtype=torch.long), use_cache=True)
    with pytest.raises(ValueError, match=r"past 6 \+ new 3"):
        model(torch.zeros(1, 3, dtype=torch.long), past_key_values=past)


def test_future_tokens_never_change_earlier_logits():
    model = tiny()
    ids = torch.randint(0, 97, (2, 12))
    changed = ids.clone()
    changed[:, 6:] = torch.randint(0, 97, (2, 6))
    torch.testing.assert_close(model(ids)[:, :6], model(changed)[:, :6], atol=1e-6, rtol=0)


def test_cached_decoding_matches_full_forward():
    model = tiny()
    ids = torch.randint(0, 97, (2, 20))
    full = model(ids)
    logits, past = model(ids[:, :5], use_cache=True)
    pieces = [logits]
    for chunk in (ids[:, 5:6], ids[:, 6:13], ids[:, 13:14], ids[:, 14:]):  # single tokens and chunks
        logits, past = model(chunk, past_key_values=past)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


VARIANTS = [
    dict(activation="relu2"),
    dict(zero_init_proj=True),
    dict(tie_embeddings=False),
    dict(qk_norm=True),
    dict(logit_softcap=2.0),
    dict(rotary=True),
]
"""The architecture options of the quality ablation (docs/decisions.md), each tested alone."""


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(o))
def test_variants_keep_shapes_cache_parity_and_save_load(overrides, tmp_path):
    model = tiny(**overrides)
    torch.manual_seed(2)
    for p in model.parameters():  # trained-looking weights: zero-initialised projections would hide bugs
        p.data.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, 97, (2, 20))
    full = model(ids)
    assert full.shape == (2, 20, 97)
    logits, past = model(ids[:, :7], use_cache=True)
    pieces = [logits]
    for i in range(7, 20):
        logits, past = model(ids[:, i : i + 1], past_key_values=past)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
    model.save(tmp_path)
    loaded = GPT.load(tmp_path)
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(ids), full, atol=0, rtol=0)


def test_zero_init_proj_starts_every_residual_projection_at_zero():
    model = tiny(zero_init_proj=True)
    projections = [p for name, p in model.named_parameters() if name.endswith("c_proj.weight")]
    assert len(projections) == 2 * TINY["num_layers"] and all(not p.any() for p in projections)
    assert tiny().transformer.h[0].mlp.c_proj.weight.any()
    with pytest.raises(ValueError, match="zero_init_proj must be True or False"):
        tiny(zero_init_proj=1)


def test_qk_norm_and_soft_cap():
    ids = torch.randint(0, 97, (2, 10))
    capped = tiny(logit_softcap=0.5)
    torch.testing.assert_close(capped(ids), 0.5 * torch.tanh(tiny()(ids) / 0.5))
    assert capped(ids).abs().max() <= 0.5
    step, _ = capped.decode_step(ids, None, torch.ones_like(ids), torch.arange(10)[None])
    torch.testing.assert_close(step, capped(ids)[:, -1], atol=1e-6, rtol=0)
    attention = tiny(qk_norm=True).transformer.h[0].attn
    x = torch.randn(2, 5, 32)
    _, (keys, _) = attention(x, None, None)
    torch.testing.assert_close(keys.pow(2).mean(-1), torch.ones(2, 4, 5), atol=1e-2, rtol=0)  # unit RMS per head
    with pytest.raises(ValueError, match=r"logit_softcap must be in \(0, 1000\] or None, got 0"):
        tiny(logit_softcap=0)
    with pytest.raises(ValueError, match="qk_norm must be True or False"):
        tiny(qk_norm="yes")


def test_rotary_positions_turn_pairs_by_their_position_and_replace_the_position_table():
    from gpt.model import ROTARY_BASE, rotary_angles, rotate

    model = tiny(rotary=True)
    assert "transformer.wpe.weight" not in model.state_dict()
    assert model.num_parameters() == count_parameters(model.config) == tiny().num_parameters() - 64 * 32
    x, positions = torch.randn(2, 3, 5, 8), torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    rotated = rotate(x, *rotary_angles(positions, 8, torch.float32))
    # independently: each pair (x[i], x[i + 4]) as a complex number, times e^(i * position * base^(-2i/8))
    angles = positions[:, None, :, None] * ROTARY_BASE ** (-torch.arange(0, 8, 2) / 8)
    turned = torch.complex(x[..., :4], x[..., 4:]) * torch.polar(torch.ones_like(angles), angles.float())
    torch.testing.assert_close(rotated, torch.cat((turned.real, turned.imag), dim=-1))
    # attention sees relative positions: a query and a key moved by the same offset score the same
    q, k = torch.randn(8), torch.randn(8)

    def score(m, n):
        at = lambda v, p: rotate(v, *rotary_angles(torch.tensor([[p]]), 8, torch.float32))  # noqa: E731
        return (at(q, m) * at(k, n)).sum()

    torch.testing.assert_close(score(5, 2), score(12, 9))
    assert not torch.allclose(score(5, 2), score(5, 4))
    with pytest.raises(ValueError, match="head_size must be even, got 5"):
        tiny(rotary=True, head_size=5)
    with pytest.raises(ValueError, match="rotary must be True or False"):
        tiny(rotary=1)


def test_options_that_break_gpt2_compatibility_say_so(tmp_path):
    from gpt.hub import gpt2_incompatibility

    model = tiny(qk_norm=True, logit_softcap=30.0, rotary=True)
    assert gpt2_incompatibility(model.config) == (
        "qk_norm=True (GPT-2 has no query/key normalisation); logit_softcap=30.0 (GPT-2 has no logit soft-capping); "
        "rotary=True (GPT-2 learns a table of positions)"
    )
    assert gpt2_incompatibility(tiny(activation="relu2", zero_init_proj=True, tie_embeddings=False).config) is None
    folder = model.save(tmp_path / "m")
    assert "model_type" not in json.loads((folder / "config.json").read_text())  # transformers cannot read it


def test_relu2_is_relu_squared():
    mlp = tiny(activation="relu2").transformer.h[0].mlp
    x = torch.randn(3, 32)
    expected = mlp.c_proj(torch.relu(mlp.c_fc(x)) ** 2)
    torch.testing.assert_close(mlp(x), expected)


def test_zero_length_past_is_a_prefill():
    model = tiny()
    ids = torch.randint(0, 97, (2, 9))
    empty = tuple((torch.zeros(2, 4, 0, 8), torch.zeros(2, 4, 0, 8)) for _ in range(2))
    logits, presents = model(ids, past_key_values=empty, attention_mask=torch.ones(2, 9, dtype=torch.long))
    torch.testing.assert_close(logits, model(ids), atol=1e-5, rtol=0)
    assert presents[0][0].shape == (2, 4, 9, 8)


def test_left_padding_gives_the_unpadded_logits():
    model = tiny()
    short = torch.randint(0, 97, (1, 6))
    padded = torch.cat([torch.full((1, 4), 5), short], dim=1)
    mask = torch.tensor([[0] * 4 + [1] * 6])
    expected = model(short)
    got, past = model(padded, attention_mask=mask, use_cache=True)
    torch.testing.assert_close(got[:, 4:], expected, atol=1e-5, rtol=0)
    step = torch.randint(0, 97, (1, 1))
    got_next, _ = model(
        step, past_key_values=past, attention_mask=torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1)
    )
    torch.testing.assert_close(got_next, model(torch.cat([short, step], 1))[:, -1:], atol=1e-5, rtol=0)


def test_last_logits_only():
    model = tiny()
    ids = torch.randint(0, 97, (2, 5))
    torch.testing.assert_close(model(ids, last_logits_only=True), model(ids)[:, -1:])


def test_device_places_weights():
    model = GPT(**TINY, device="cpu")
    assert model.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_device_places_weights_on_cuda():
    model = GPT(**TINY, device="cuda")
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert model(torch.zeros(1, 3, dtype=torch.long, device="cuda")).device.type == "cuda"


@pytest.mark.parametrize("activation, hf_activation", [("gelu_tanh", "gelu_new"), ("gelu", "gelu"), ("relu2", "relu2")])
def test_matches_hugging_face_gpt2(activation, hf_activation):
    transformers = need_module("transformers", "transformers is not installed (requirements-dev.txt)")
    hf_config = transformers.GPT2Config(
        vocab_size=97,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        activation_function=hf_activation,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="sdpa",
    )
    torch.manual_seed(1)
    reference = transformers.GPT2LMHeadModel(hf_config).eval()
    gpt2 = tiny()  # GPT-2's weights load into a model of GPT-2's activation, the default
    gpt2.load_gpt2_state_dict(reference.state_dict())
    ours = tiny(activation=activation)
    ours.load_state_dict(gpt2.state_dict())
    ids = torch.randint(0, 97, (3, 33))
    with torch.no_grad():
        expected = reference(ids).logits
        torch.testing.assert_close(ours(ids), expected, atol=1e-5, rtol=0)
        # and with the cache, one token at a time after a prefill
        out = reference(ids[:, :20], use_cache=True)
        logits, past = ours(ids[:, :20], use_cache=True)
        torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=0)
        for i in range(20, 33):
            logits, past = ours(ids[:, i : i + 1], past_key_values=past)
            torch.testing.assert_close(logits[:, 0], expected[:, i], atol=1e-5, rtol=0)


def test_dropout_is_active_only_in_training():
    model = tiny(dropout=0.5)
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids))  # eval: deterministic, every dropout a no-op
        model.train()
        assert not torch.equal(model(ids), model(ids))
        assert torch.equal(tiny(dropout=0.0).train()(ids), tiny(dropout=0.0).eval()(ids))


def test_gpt2_weights_need_the_tanh_gelu():
    with pytest.raises(ValueError, match="activation='gelu_tanh'"):
        tiny(activation="gelu").load_gpt2_state_dict(tiny().state_dict())


def test_kv_buffer_decoding_matches_concatenated_cache():
    model = tiny()
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    buffers = model.new_cache(batch=2)
    logits, buffers = model(ids[:, :5], past_key_values=buffers, attention_mask=mask[:, :5])
    _, pairs = model(ids[:, :5], use_cache=True)
    for i in range(5, 12):
        step_logits, buffers = model(ids[:, i : i + 1], past_key_values=buffers, attention_mask=mask[:, : i + 1])
        expected, pairs = model(ids[:, i : i + 1], past_key_values=pairs)
        torch.testing.assert_close(step_logits, expected, atol=1e-6, rtol=0)
    for (k, v), (k_ref, v_ref) in zip(buffers, pairs):  # a buffer reads as its (key, value) views
        assert torch.equal(k, k_ref) and torch.equal(v, v_ref)
    assert buffers[0].keys.shape[2] == model.max_seq_len  # allocated once for the whole context


def test_decode_step_head_copy_follows_weight_changes():
    """`decode_step` multiplies by a cached `[emb, vocab]` copy of the head: it must never go stale."""
    model = tiny()
    ids = torch.randint(0, 97, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    positions = torch.arange(6).expand(2, 6)

    def check() -> None:
        logits, _ = model.decode_step(ids, None, mask, positions)
        torch.testing.assert_close(logits, model(ids)[:, -1], atol=1e-5, rtol=0)

    check()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(ids).sum().backward()
    optimizer.step()  # an in-place update of the tied head
    check()
    model.load_state_dict(tiny().state_dict())  # a copy into the same storage
    check()
    model.lm_head.weight.data = torch.randn_like(model.lm_head.weight)  # new storage
    check()


@pytest.mark.parametrize("training", [True, False])
def test_evaluating_restores_the_mode_it_found_even_on_error(training):
    model = tiny().train(training)
    with evaluating(model):
        assert not model.training and not model.transformer.h[0].training
    assert model.training is training
    with pytest.raises(RuntimeError), evaluating(model):
        raise RuntimeError("fails inside")
    assert model.training is training and model.transformer.h[0].training is training
