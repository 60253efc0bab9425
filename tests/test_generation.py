"""The shared decoding loop: greedy, sampling semantics, penalties, stops, batches, windows, text."""

import pytest
import torch

from gpt import GPT, SamplingConfig
from gpt.generation import apply_repetition_penalty, min_p_filter, stream_text, top_k_filter, top_p_filter

TINY = dict(vocab_size=61, max_seq_len=32, emb_size=32, num_heads=4, num_layers=2, dropout=0.0, tie_embeddings=False)


@pytest.fixture(scope="module")
def model() -> GPT:
    """A random model with wide weights, so greedy output varies instead of repeating one token."""
    torch.manual_seed(0)
    model = GPT(**TINY).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln_" not in name and "ln_f" not in name:
                param.normal_(0, 0.3)
    return model


def recompute_greedy(model: GPT, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Reference: no cache, the whole (cropped) context recomputed for every token."""
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids[:, -model.max_seq_len :])
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_greedy_with_cache_equals_recomputation(model):
    ids = torch.randint(0, 61, (1, 7))
    assert torch.equal(model.generate(ids, 20), recompute_greedy(model, ids, 20))


def test_original_call_returns_prompt_plus_new_tokens(model):
    ids = torch.randint(0, 61, (2, 5))
    out = model.generate(ids, max_new_tokens=4)
    assert out.shape == (2, 9)
    assert torch.equal(out[:, :5], ids)
    assert model.generate([1, 2, 3], 2).shape == (1, 5)  # a plain list is one row
    assert torch.equal(model.generate(ids, 0), ids)


def test_left_padded_batch_matches_rows_alone(model):
    rows = [torch.randint(0, 61, (n,)) for n in (3, 8, 5)]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(r)), torch.ones(len(r))]).long() for r in rows])
    batched = model.generate(ids, 15, attention_mask=mask)
    for i, row in enumerate(rows):
        alone = model.generate(row, 15)
        assert torch.equal(batched[i, width:], alone[0, len(row) :])


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)])
def test_degenerate_sampling_equals_greedy(model, settings):
    ids = torch.randint(0, 61, (2, 4))
    greedy = model.generate(ids, 12)
    assert torch.equal(model.generate(ids, 12, do_sample=True, seed=3, **settings), greedy)


def test_same_seed_same_sample_and_seeds_differ(model):
    ids = torch.randint(0, 61, (1, 4))
    a = model.generate(ids, 30, do_sample=True, temperature=1.5, seed=7)
    b = model.generate(ids, 30, do_sample=True, temperature=1.5, seed=7)
    c = model.generate(ids, 30, do_sample=True, temperature=1.5, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(model.generate(ids, 30, do_sample=True, temperature=1.5, generator=gen), a)


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.0]]))
    config = SamplingConfig(do_sample=True)
    from gpt.generation import _choose

    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([_choose(logits, config, gen) for _ in range(4000)]), minlength=4)
    assert counts[3] == 0
    assert abs(counts[0] / 4000 - 0.7) < 0.03


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.5]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.sum() == 2 and not kept[0, 0] and not kept[0, 4]


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(top_p_filter(logits, 0.75)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()


def test_min_p_keeps_tokens_at_least_that_fraction_as_likely_as_the_top_one():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]])
    logits = torch.log(probs) + torch.tensor([[3.0], [-2.0]])  # a per-row shift changes no probability
    assert torch.isfinite(min_p_filter(logits, 0.3)).tolist() == [[True, True, True, False], [False, True, True, True]]
    assert torch.isfinite(min_p_filter(logits, 0.6)).tolist() == [
        [True, True, False, False],
        [False, False, True, True],
    ]
    assert torch.isfinite(min_p_filter(logits, 0.61)).tolist() == [
        [True, False, False, False],
        [False, False, False, True],
    ]
    kept = min_p_filter(logits, 0.1)
    assert torch.equal(kept[:, 1], logits[:, 1])  # kept logits are unchanged


def test_min_p_samples_only_from_the_kept_tokens():
    from gpt.generation import _choose

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    config = SamplingConfig(do_sample=True, min_p=0.5)  # keeps 0.5 and 0.3: renormalized 0.625 / 0.375
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([_choose(logits, config, gen) for _ in range(4000)]), minlength=4)
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / 4000 - 0.625) < 0.03


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 2.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 2.0, -1.0]]
    probs_before, probs_after = logits.softmax(-1), out.softmax(-1)
    assert (probs_after[seen] < probs_before[seen]).all()


def test_repetition_penalty_changes_greedy_output(model):
    ids = torch.randint(0, 61, (1, 4))
    plain = model.generate(ids, 30)[0, 4:]
    penalized = model.generate(ids, 30, repetition_penalty=50.0)[0, 4:]
    assert len(set(penalized.tolist())) > len(set(plain.tolist()))


def test_stop_tokens_stop_each_row(model):
    ids = torch.randint(0, 61, (1, 4))
    free = model.generate(ids, 20)[0, 4:].tolist()
    stop = free[5]
    out = model.generate(ids, 20, stop_tokens=[stop])[0, 4:].tolist()
    assert out == free[: free.index(stop) + 1]  # the stop token ends the row and is kept


def test_stopped_rows_are_padded_until_all_stop(model):
    ids = torch.randint(0, 61, (2, 4))
    free = model.generate(ids, 10)
    stop = int(free[0, 6])
    out = model.generate(ids, 10, stop_tokens=[stop], pad_token_id=60)
    first_stop = free[0, 4:].tolist().index(stop) + 4
    assert (out[0, first_stop + 1 :] == 60).all()


def test_stream_yields_the_generated_tokens(model):
    ids = torch.randint(0, 61, (1, 4))
    streamed = torch.stack(list(model.generate_stream(ids, 9)), dim=1)
    assert torch.equal(streamed, model.generate(ids, 9)[:, 4:])


def test_generation_slides_past_max_seq_len(model):
    ids = torch.randint(0, 61, (1, 40))  # a prompt longer than the context
    out = model.generate(ids, 50)
    assert out.shape == (1, 90)
    # the documented rule: the first step sees the last 3/4 of the context
    keep = model.max_seq_len * 3 // 4
    first = model(ids[:, -keep:])[0, -1].argmax()
    assert out[0, 40] == first


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(top_k=0), "top_k must be an integer >= 1"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(min_p=0.0), r"min_p must be in \(0, 1\]"),
        (dict(min_p=float("nan")), r"min_p must be in \(0, 1\]"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
    ],
)
def test_invalid_settings_raise(model, settings, message):
    with pytest.raises(ValueError, match=message):
        model.generate([1, 2], **{"max_new_tokens": 3, **settings})


class CharTokenizer:
    """A stand-in tokenizer: one id per character of a small alphabet, id 0 = end of text."""

    alphabet = "\0abcdefgh ,.é" + "".join(chr(0x430 + i) for i in range(48))  # 61 characters
    eos_token_id = 0

    def encode(self, text):
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids)


def fake_stream(tokens):
    return (torch.tensor([t]) for t in tokens)


def test_stream_text_stops_at_stop_strings_across_tokens():
    tok = CharTokenizer()
    tokens = tok.encode("abc, def. gh")
    pieces = list(stream_text(fake_stream(tokens), tok, stop_strings=["f."]))
    assert "".join(pieces) == "abc, de"
    assert all(pieces)


def test_stream_text_stops_at_stop_token_and_flushes():
    tok = CharTokenizer()
    pieces = list(stream_text(fake_stream(tok.encode("ab") + [0] + tok.encode("cd")), tok, stop_tokens=[0]))
    assert "".join(pieces) == "ab"
    held = list(stream_text(fake_stream(tok.encode("abf")), tok, stop_strings=["f."]))
    assert "".join(held) == "abf"  # a held-back partial stop string is flushed at the end


class ByteTokenizer:
    eos_token_id = 256

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def test_stream_text_never_splits_a_multibyte_character():
    text = "привет 🙂 世界"
    pieces = list(stream_text(fake_stream(list(text.encode())), ByteTokenizer()))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_generate_text_needs_a_tokenizer(model):
    with pytest.raises(ValueError, match="no tokenizer"):
        model.generate_text("hello")


def test_generate_text_with_a_tokenizer(model):
    tok = CharTokenizer()
    text = model.generate_text("abc", 10, tokenizer=tok, stop_tokens=[])
    ids = model.generate(tok.encode("abc"), 10)[0, 3:].tolist()
    assert text == tok.decode(ids)


def test_scores_are_the_models_own_log_probabilities_at_each_step(model):
    """The loop reports the raw distribution (before penalty, temperature and filters); here it is
    checked against one uncached forward pass over the whole output."""
    ids = torch.randint(0, 61, (2, 5))
    steps = []
    sampled = dict(do_sample=True, temperature=1.7, top_k=4, repetition_penalty=1.3, seed=1)
    out = model.generate(ids, 8, **sampled, on_scores=steps.append, alternatives=3)
    assert torch.equal(out, model.generate(ids, 8, **sampled))  # watching changes nothing
    with torch.no_grad():
        expected = torch.log_softmax(model(out)[:, 4:-1], dim=-1)  # the predictions of positions 5..12
    assert len(steps) == 8
    for i, scores in enumerate(steps):
        assert torch.equal(scores.tokens, out[:, 5 + i])
        chosen = expected[:, i].gather(1, scores.tokens[:, None])[:, 0]
        assert torch.allclose(scores.logprobs, chosen, atol=1e-5)
        top = expected[:, i].topk(3)
        assert torch.equal(scores.top_tokens, top.indices)
        assert torch.allclose(scores.top_logprobs, top.values, atol=1e-5)
        assert (scores.top_logprobs[:, 0] >= scores.logprobs).all()
