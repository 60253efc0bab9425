"""`WordCache` (the fast path of `Tokenizer.encode`) must give exactly the ids of `tokenizers` itself."""

import random
import threading

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import normalizers, pre_tokenizers

from gpt import word_cache
from gpt.tokenizer import EOS_TOKEN, Tokenizer

MULTILINGUAL = (
    "The quick brown fox's 12 jumps, don't they? It'll be 3.14 o'clock_now.\n"
    "Съешь же ещё этих мягких французских булок, да выпей чаю — 2024 год.\n"
    "日本語のテキストと中文文本。한국어 텍스트. Ελληνικά κείμενα. עברית 🙂👍\n"
    "def f(x):\n    return x ** 2  # comment\n\n\tindented\r\n"
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([MULTILINGUAL] * 30, vocab_size=600, special_tokens=["<|user|>", "<|u|>"])


def backend_ids(tok: Tokenizer, text: str) -> list[int]:
    return tok._backend.encode(text, add_special_tokens=False).ids


def contexts(char: str) -> str:
    """`char` alone, doubled, beside letters, digits, spaces, punctuation and contractions."""
    return f"{char}|{char}{char}a {char}1{char} x{char}y\n\n{char}  {char}'ll{char}_{char}\t {char}é{char}Ж{char}9 "


@pytest.mark.slow  # an exhaustive sweep (seconds): not in the fast tier
def test_every_code_point_encodes_like_the_backend(tok: Tokenizer) -> None:
    """All of the Basic Multilingual Plane and a stride through the other planes, in many contexts."""
    words = tok._words
    assert words is not None
    code_points = [*range(0x10000), *range(0x10000, 0x110000, 37), ord("🙂")]
    chars = [chr(c) for c in code_points if not 0xD800 <= c < 0xE000]
    covered = [c for c in chars if words.covers(contexts(c))]
    assert len(covered) > 0.9 * len(chars)  # the fast path does the work...
    assert {"a", "Ж", "語", "🙂", " ", "\n", "_", "'"} <= set(covered)
    assert not {"²", "½", "Ⅻ", "\x1c"} & set(covered)  # ...and what `re` splits differently is left to the backend
    for start in range(0, len(covered), 500):
        text = "".join(contexts(c) for c in covered[start : start + 500])
        assert words.encode(text) == backend_ids(tok, text), f"code points {hex(ord(covered[start]))}.."
    for char in set(chars) - set(covered):
        assert tok.encode(contexts(char)) == backend_ids(tok, contexts(char))


def test_special_tokens_and_random_texts(tok: Tokenizer) -> None:
    rng = random.Random(0)
    alphabet = [
        "a",
        "word",
        " ",
        "  ",
        "\n",
        "'s",
        "'S",
        "1",
        "22",
        ".",
        "_",
        "Ж",
        "語",
        "🙂",
        "²",
        EOS_TOKEN,
        "<|user|>",
        "<|u|>",
        "<|",
        "|>",
    ]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
        assert tok.encode(text) == backend_ids(tok, text), repr(text)
    assert tok.encode(f"a{EOS_TOKEN}<|user|>b") == [
        *tok.encode("a"),
        tok.eos_token_id,
        tok.token_to_id("<|user|>"),
        *tok.encode("b"),
    ]


def test_cache_starts_over_when_full(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(word_cache, "MAX_WORDS", 20)
    fresh = Tokenizer.from_json_str(tok.to_json_str())
    for line in MULTILINGUAL.splitlines() * 2:
        assert fresh.encode(line) == backend_ids(fresh, line)
    assert len(fresh._words._ids) <= 20


def test_threads_share_one_cache(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(word_cache, "MAX_WORDS", 30)  # restarts while other threads read
    fresh = Tokenizer.from_json_str(tok.to_json_str())
    texts = [MULTILINGUAL[i:] + MULTILINGUAL[:i] for i in range(0, len(MULTILINGUAL), 7)]
    expected = [backend_ids(fresh, text) for text in texts]
    failures: list[str] = []

    def work() -> None:
        for text, ids in zip(texts, expected):
            if fresh.encode(text) != ids:
                failures.append(text)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


@pytest.mark.parametrize(
    "change",
    [
        lambda backend: setattr(backend, "normalizer", normalizers.Lowercase()),
        lambda backend: setattr(backend, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True)),
        lambda backend: setattr(backend, "pre_tokenizer", pre_tokenizers.Whitespace()),
    ],
    ids=["normalizer", "prefix-space", "other-pre-tokenizer"],
)
def test_other_tokenizer_kinds_use_the_backend(tok: Tokenizer, change) -> None:
    backend = HFTokenizer.from_str(tok.to_json_str())
    change(backend)
    other = Tokenizer(backend)
    assert other._words is None
    assert other.encode(MULTILINGUAL) == backend.encode(MULTILINGUAL, add_special_tokens=False).ids


def test_byte_level_alphabet_is_the_backends() -> None:
    assert set(word_cache._byte_level_alphabet().values()) == set(pre_tokenizers.ByteLevel.alphabet())
    probe = "".join(chr(c) for c in range(0x800))  # every byte value a 1- or 2-byte character uses
    ([(mapped, _)],) = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(probe)]
    assert word_cache.byte_level(probe) == mapped
