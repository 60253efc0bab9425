"""Tests for gpt.tokenizer: byte-level BPE round trips, special tokens, training sources, save/load."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt.tokenizer import EOS_TOKEN, Tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[1] / "data/shakespeare-excerpt.txt"  # shipped with the repository

SAMPLES = [
    "",
    "hello world",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "👍 👨‍👩‍👧‍👦 🏳️‍🌈 🇺🇦 family emoji with ZWJ",
    "你好，世界。日本語のテキスト。한국어",
    "e\u0301 a\u0308 combining marks, ﬁ ligature, \u200b zero width",
    "line one\r\nline two\ttab\x00nul\x0bvt\u2028ls",
    f"before{EOS_TOKEN}after {EOS_TOKEN}\n{EOS_TOKEN}",
    "   leading and trailing spaces   \n\n\n",
    "mixed: data 123.45, кириллица + 汉字 + 🙂!",
]

CORPUS = "\n".join(SAMPLES[1:] * 3 + ["the quick brown fox jumps over the lazy dog"] * 20)
PLAIN = CORPUS.replace("\x00", "").replace(EOS_TOKEN, "")  # valid file content, no special tokens


def random_text(rng: random.Random, length: int) -> str:
    """Random text of valid code points (no surrogates), biased to include ASCII."""
    chars = []
    for _ in range(length):
        cp = rng.randrange(rng.choice([0x80, 0x800, 0x10000, 0x110000]))
        chars.append(chr(cp) if not 0xD800 <= cp < 0xE000 else "?")
    return "".join(chars)


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=400, min_frequency=2)


@pytest.fixture(params=["bytes", "trained"])
def tok(request: pytest.FixtureRequest, trained: Tokenizer) -> Tokenizer:
    return Tokenizer() if request.param == "bytes" else trained


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_random_unicode_round_trip_and_ids_in_range(tok: Tokenizer) -> None:
    rng = random.Random(0)
    texts = [random_text(rng, rng.randrange(1, 60)) for _ in range(200)]
    for text, ids in zip(texts, tok.encode_batch(texts)):
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text


def test_encode_batch_matches_encode(trained: Tokenizer) -> None:
    assert trained.encode_batch(SAMPLES) == [trained.encode(t) for t in SAMPLES]


def test_default_tokenizer_is_byte_level() -> None:
    tok = Tokenizer()
    assert tok.vocab_size == 257
    assert tok.special_tokens == [EOS_TOKEN]
    for text in (t for t in SAMPLES if EOS_TOKEN not in t):
        assert len(tok.encode(text)) == len(text.encode("utf-8"))


def test_vocab_size_256_plus_specials_means_no_merges() -> None:
    tok = Tokenizer.train(CORPUS, vocab_size=258, special_tokens=["<|pad|>"])
    assert tok.vocab_size == 258
    assert len(tok.encode(PLAIN)) == len(PLAIN.encode("utf-8"))


def test_vocab_size_respected_and_merges_compress() -> None:
    tok = Tokenizer.train(CORPUS, vocab_size=300)
    assert tok.vocab_size == 300
    assert len(tok.encode(CORPUS)) < len(CORPUS.encode("utf-8"))


@pytest.mark.parametrize(("vocab_size", "specials"), [(256, None), (257, ["<|pad|>"]), (0, None)])
def test_vocab_size_too_small(vocab_size: int, specials: list[str] | None) -> None:
    with pytest.raises(ValueError, match="vocab_size must be >= 256"):
        Tokenizer.train(CORPUS, vocab_size=vocab_size, special_tokens=specials)


def test_min_frequency_validated() -> None:
    with pytest.raises(ValueError, match="min_frequency"):
        Tokenizer.train(CORPUS, vocab_size=300, min_frequency=0)


def test_special_tokens(trained: Tokenizer) -> None:
    extra = ["<|user|>", EOS_TOKEN, "<|пользователь|>"]  # EOS is deduplicated and always first
    tok = Tokenizer.train(CORPUS, vocab_size=300, special_tokens=extra)
    assert tok.special_tokens == [EOS_TOKEN, "<|user|>", "<|пользователь|>"]
    assert tok.eos_token_id == tok.token_to_id(EOS_TOKEN) == 0
    assert tok.id_to_token(tok.eos_token_id) == EOS_TOKEN
    text = "a<|пользователь|>b"
    ids = tok.encode(text)
    assert tok.token_to_id("<|пользователь|>") in ids
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    assert trained.encode(EOS_TOKEN) == [trained.eos_token_id]


def test_decode_accepts_tensor_and_array(trained: Tokenizer) -> None:
    text = SAMPLES[2]
    ids = trained.encode(text)
    assert trained.decode(torch.tensor(ids)) == text
    assert trained.decode(np.array(ids, dtype=np.int32)) == text


def test_decode_rejects_bad_ids(trained: Tokenizer) -> None:
    with pytest.raises(ValueError, match="out of range"):
        trained.decode([1, trained.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        trained.decode([-1])
    with pytest.raises(ValueError, match="1-D"):
        trained.decode(torch.zeros(2, 3, dtype=torch.long))


def test_fit_trains_in_place() -> None:
    tok = Tokenizer()
    assert tok.fit(CORPUS, vocab_size=300) is tok
    assert tok.vocab_size == 300


def test_train_sources(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text(PLAIN, encoding="utf-8")
    (tmp_path / "sub" / "b.md").write_text(PLAIN, encoding="utf-8")
    reference = Tokenizer.train([PLAIN, PLAIN], vocab_size=300).encode(PLAIN)
    for source in (tmp_path, str(tmp_path), [tmp_path / "a.txt", str(tmp_path / "sub" / "b.md")]):
        assert Tokenizer.train(source, vocab_size=300).encode(PLAIN) == reference
    assert Tokenizer.train(tmp_path / "a.txt", vocab_size=300).vocab_size == 300


def test_train_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Tokenizer.train(tmp_path / "missing.txt")


@pytest.mark.parametrize(("name", "written"), [(".", "tokenizer.json"), ("custom.json", "custom.json")])
def test_save_load_identical(tmp_path: Path, trained: Tokenizer, name: str, written: str) -> None:
    target = tmp_path / name
    file = trained.save(target)
    assert file == tmp_path / written and file.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [written]  # no temp file left behind
    loaded = Tokenizer.load(target)
    assert loaded.vocab_size == trained.vocab_size
    assert loaded.encode_batch(SAMPLES) == trained.encode_batch(SAMPLES)
    assert Tokenizer.load(file).to_json_str() == trained.to_json_str()


def test_save_overwrites_existing_file(tmp_path: Path, trained: Tokenizer) -> None:
    file = tmp_path / "tokenizer.tmp"  # as the checkpoint writer does: save into its own temp file
    file.write_text("old", encoding="utf-8")
    trained.save(file)
    assert Tokenizer.load(file).vocab_size == trained.vocab_size


def test_json_str_round_trip(trained: Tokenizer) -> None:
    clone = Tokenizer.from_json_str(trained.to_json_str())
    assert clone.encode(CORPUS) == trained.encode(CORPUS)


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.load(tmp_path / "nope.json")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe garbage", b'{"version": "1.0"}'])
def test_load_corrupt(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_load_without_eos_token(tmp_path: Path) -> None:
    json_str = Tokenizer().to_json_str().replace(EOS_TOKEN, "<|other|>")
    (tmp_path / "tokenizer.json").write_text(json_str, encoding="utf-8")
    with pytest.raises(ValueError, match=r"no <\|endoftext\|> token"):
        Tokenizer.load(tmp_path)


def test_shakespeare_training() -> None:
    tok = Tokenizer.train(SHAKESPEARE, vocab_size=4096)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert tok.vocab_size == 4096
    assert len(ids) < len(text.encode("utf-8")) / 2
    assert tok.decode(ids) == text


def test_piecewise_encoding_equals_one_backend_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text the word cache does not cover ("²" splits differently in `re`) is cut where the
    pre-tokenizer splits anyway and encoded piece by piece: the ids must not change."""
    from gpt import tokenizer as module

    rng = random.Random(0)
    alphabet = ["a", "b", "word", " ", "\n", "\n\n", "  ", "\t", "é", "Ж", "🙂", "'s", "1", ".", EOS_TOKEN, "\r\n", "²"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3000))) for _ in range(60)]
    tok = Tokenizer.train(texts, vocab_size=400)
    monkeypatch.setattr(module, "_PIECE_CHARS", 64)  # many cuts even in short texts
    assert len(module._cut("ab\ncd\nef" * 50)) > 1
    pieces = tok._pieces(texts[0])
    assert len(pieces) > 1 and {cached for _, cached in pieces} == {True, False}  # both paths in one text
    for text in texts:
        assert tok.encode(text) == tok._backend.encode(text, add_special_tokens=False).ids
    assert tok.encode_batch(texts[:5]) == [tok._backend.encode(t, add_special_tokens=False).ids for t in texts[:5]]
