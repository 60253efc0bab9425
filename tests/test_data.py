"""Tests for gpt.data: reading texts, (x, y) windows, corpus encoding, splits and loaders."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from gpt.data import (
    GetData,
    ShiftingWindows,
    collate_batch,
    default_stride,
    encode_corpus,
    make_loaders,
    read_texts,
    split_ids,
)
from gpt.texts import TextFileError, read_text_file
from gpt.tokenizer import Tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[1] / "data/shakespeare-excerpt.txt"  # shipped with the repository


# read_texts


def test_read_single_file(tmp_path: Path) -> None:
    text = "Привет\r\nмир 🙂\tend"
    (tmp_path / "a.txt").write_bytes(text.encode("utf-8"))
    assert read_texts(tmp_path / "a.txt") == [text]
    assert read_texts(str(tmp_path / "a.txt")) == [text]


def test_read_directory_recursive_sorted(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "z.txt").write_text("z", encoding="utf-8")
    (tmp_path / "b" / "c" / "deep.md").write_text("deep", encoding="utf-8")
    (tmp_path / "b" / "a.txt").write_text("a", encoding="utf-8")
    (tmp_path / "b" / "skip.py").write_text("skip", encoding="utf-8")
    (tmp_path / "b" / "blob.bin").write_bytes(b"\x00\x01")
    assert read_texts(tmp_path) == ["a", "deep", "z"]


def test_read_list_of_paths_keeps_order(tmp_path: Path) -> None:
    for name in ("x.txt", "y.txt"):
        (tmp_path / name).write_text(name, encoding="utf-8")
    assert read_texts([tmp_path / "y.txt", str(tmp_path / "x.txt")]) == ["y.txt", "x.txt"]


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"text\x00with nul", "binary"), ("café latin-1".encode("latin-1"), "not valid UTF-8")],
)
def test_read_rejects_bad_content(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / "ok.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        read_texts(tmp_path)
    assert "bad.txt" in str(info.value)


def test_read_empty_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt"):
        read_texts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="empty"):
        read_texts([])
    (tmp_path / "full.txt").write_text("text", encoding="utf-8")
    assert read_texts(tmp_path) == ["text"]  # empty files beside real text are skipped


def test_read_directory_without_text_files(tmp_path: Path) -> None:
    (tmp_path / "code.py").write_text("x = 1", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no \.txt or \.md files"):
        read_texts(tmp_path)


def test_read_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_texts(tmp_path / "missing.txt")


def test_read_drops_a_bom(tmp_path: Path) -> None:
    (tmp_path / "bom.md").write_bytes("\ufeff# Привет\n".encode())
    assert read_texts(tmp_path / "bom.md") == ["# Привет\n"]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("blank.txt", b" \n\n ", "empty"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("controls.txt", bytes(range(1, 32)) * 20, "binary"),
        ("latin1.txt", "café".encode("latin-1"), "not_utf8"),
        ("table.csv", b"a,b\n1,2\n", "file_type"),
    ],
)
def test_text_files_are_refused_with_a_reason_naming_the_file(tmp_path: Path, name, content, reason) -> None:
    """The rules the web app's uploads follow too (webapp/corpus.py maps the reasons to its messages)."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(TextFileError, match=name) as info:
        read_text_file(tmp_path / name)
    assert info.value.reason == reason and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match=name):
        read_texts(tmp_path / name)


def test_a_text_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_bytes(b"a" * 101)
    with pytest.raises(TextFileError, match="big.txt is 101 bytes, over the 100-byte limit") as info:
        read_text_file(tmp_path / "big.txt", max_bytes=100)
    assert info.value.values == {"size": 101, "limit": 100}


# GetData


def test_getdata_windows_and_length() -> None:
    data = list(range(10, 20))
    ds = GetData(data, seq_len=4)
    assert len(ds) == len(data) - 4
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.tolist() == data[i : i + 4]
        assert y.tolist() == data[i + 1 : i + 5]
        assert x.dtype == y.dtype == torch.int64
    assert ds[-1][1][-1].item() == data[-1]  # the last window reaches the last token
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_getdata_minimal_data_has_one_window() -> None:
    ds = GetData([1, 2, 3], seq_len=2)
    assert len(ds) == 1
    assert [t.tolist() for t in ds[0]] == [[1, 2], [2, 3]]


@pytest.mark.parametrize(("n", "seq_len", "stride"), [(10, 3, 3), (11, 3, 3), (13, 3, 3), (10, 4, 2)])
def test_getdata_stride(n: int, seq_len: int, stride: int) -> None:
    ds = GetData(torch.arange(n), seq_len, stride=stride)
    starts = [ds[i][0][0].item() for i in range(len(ds))]
    assert starts == list(range(0, n - seq_len, stride))


def test_getdata_items_are_views() -> None:
    data = torch.arange(100)
    ds = GetData(data, seq_len=8)
    x, y = ds[5]
    assert ds.data.data_ptr() == data.data_ptr()  # an int64 tensor is not copied
    storage = data.untyped_storage().data_ptr()
    assert x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr() == storage
    assert x.is_contiguous()


def test_getitems_matches_items() -> None:
    ds = GetData(torch.arange(50) * 3, seq_len=6)
    indices = [7, 0, 43, 7, 12]
    x, y = ds.__getitems__(indices)
    assert x.shape == y.shape == (len(indices), 6)
    assert torch.equal(x, torch.stack([ds[i][0] for i in indices]))
    assert torch.equal(y, torch.stack([ds[i][1] for i in indices]))


@pytest.mark.parametrize("collate_fn", [collate_batch, None])  # None: torch's default collate
def test_dataloader_batches(collate_fn: object) -> None:
    ds = GetData(torch.arange(40), seq_len=5)
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_fn)
    x, y = next(iter(loader))
    assert x.dtype == y.dtype == torch.int64
    assert x.shape == y.shape == (4, 5)
    assert torch.equal(y[:, :-1], x[:, 1:])


@pytest.mark.parametrize(
    ("data", "seq_len", "stride", "match"),
    [
        ([1, 2, 3], 3, 1, "need at least seq_len \\+ 1 = 4"),
        ([1, 2, 3], 0, 1, "seq_len must be >= 1, got 0"),
        ([1, 2, 3], 1, 0, "stride must be >= 1, got 0"),
        ([[1, 2], [3, 4]], 1, 1, "1-D"),
    ],
)
def test_getdata_errors(data: list, seq_len: int, stride: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GetData(data, seq_len, stride=stride)


# encode_corpus and split_ids


def test_encode_corpus_joins_with_eos() -> None:
    tok = Tokenizer()
    docs = ["ab", "Ж", "c"]
    ids = encode_corpus(docs, tok)
    eos = tok.eos_token_id
    assert ids.dtype == torch.int64 and ids.dim() == 1
    assert ids.tolist() == tok.encode("ab") + [eos] + tok.encode("Ж") + [eos] + tok.encode("c")
    assert encode_corpus("ab", tok).tolist() == tok.encode("ab")


def test_split_is_contiguous() -> None:
    ids = torch.arange(1000)
    train, valid = split_ids(ids, 0.1)
    assert (len(train), len(valid)) == (900, 100)
    assert torch.equal(torch.cat([train, valid]), ids)
    train, valid = split_ids(list(range(10)), 0.0)
    assert valid is None and train.tolist() == list(range(10))


@pytest.mark.parametrize(
    ("fraction", "match"), [(1.0, "valid_fraction"), (-0.1, "valid_fraction"), (0.01, "valid split")]
)
def test_split_errors(fraction: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_ids(torch.arange(50), fraction)


def test_split_min_tokens() -> None:
    with pytest.raises(ValueError, match="train split has 5 tokens, need at least 6"):
        split_ids(torch.arange(10), 0.5, min_tokens=6)


# make_loaders


def test_loaders_shapes_and_drop_last() -> None:
    train, valid = make_loaders(torch.arange(1000), seq_len=16, batch_size=4, valid_fraction=0.1)
    train_batches = list(train)
    assert len(train_batches) == (900 - 16) // 16 // 4  # 55 disjoint windows, 13 full batches
    assert all(x.shape == y.shape == (4, 16) and x.dtype == torch.int64 for x, y in train_batches)
    assert all(torch.equal(x + 1, y) for x, y in train_batches)  # ids are arange: y is x shifted
    assert valid is not None
    valid_x = torch.cat([x for x, _ in valid])
    assert valid_x[:, 0].tolist() == list(range(900, 1000 - 16, 16))  # non-overlapping, in order
    assert [len(x) for x, _ in valid] == [4, 2]  # the last, partial batch is kept


def test_loaders_are_seeded() -> None:
    ids = torch.arange(500)
    first = list(make_loaders(ids, 8, 4, seed=1)[0])
    same = list(make_loaders(ids, 8, 4, seed=1)[0])
    other = list(make_loaders(ids, 8, 4, seed=2)[0])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, same))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))
    assert not torch.equal(first[0][0][:, 0], torch.arange(0, 4))  # shuffled


def test_loader_generator_state_restores_epoch() -> None:
    train, _ = make_loaders(torch.arange(300), 8, 4, valid_fraction=0.0)
    state = train.generator.get_state()
    epoch = list(train)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(epoch, list(train)))  # next epoch differs
    train.generator.set_state(state)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch, list(train)))


def test_train_windows_by_default_cover_each_token_once_an_epoch_and_shift_between_epochs() -> None:
    train, _ = make_loaders(torch.arange(300), 10, 3, valid_fraction=0.0)
    offsets = set()
    for epoch in range(6):
        train.dataset.set_epoch(epoch)  # as fit does
        offset = train.dataset.offset
        starts = torch.cat([x[:, 0] for x, _ in train]).tolist()
        assert len(set(starts)) == len(starts) == 27  # 29 disjoint windows, less a partial batch
        assert set(starts) <= set(range(offset, 290, 10))
        assert not torch.equal(next(iter(train))[0][:, 0], torch.arange(3) * 10 + offset)  # still shuffled
        offsets.add(offset)
    assert len(offsets) > 1


def test_shifting_windows_depend_on_the_seed_and_epoch_alone() -> None:
    def offsets(seed: int) -> list[int]:
        windows = ShiftingWindows(torch.arange(1000), 16, 16, seed=seed)
        return [windows.set_epoch(epoch) or windows.offset for epoch in range(8)]

    assert offsets(0) == offsets(0) and offsets(0) != offsets(1)
    windows = ShiftingWindows(torch.arange(1000), 16, 16, seed=3)
    windows.set_epoch(5)
    x, y = windows[2]
    assert x[0] == windows.offset + 32 and torch.equal(x + 1, y)
    assert len(windows) == (1000 - 16) // 16 and len(list(windows)) == len(windows)  # IndexError ends iteration
    batch, _ = windows.__getitems__([0, 2])
    assert batch[:, 0].tolist() == [windows.offset, windows.offset + 32]


def test_train_windows_at_every_position_with_stride_1() -> None:
    train, _ = make_loaders(torch.arange(300), 10, 3, valid_fraction=0.0, train_stride=1)
    starts = torch.cat([x[:, 0] for x, _ in train]).tolist()
    assert len(set(starts)) == len(starts) == 288  # 290 windows (0, 1, ..., 289) less a partial batch
    assert set(starts) <= set(range(290))


@pytest.mark.parametrize(
    "tokens, seq_len, batch, stride", [(1000, 16, 4, 16), (100, 16, 8, 10), (30, 16, 8, 1), (40, 16, 1, 16)]
)
def test_a_short_text_gets_the_largest_stride_that_fills_a_batch(tokens, seq_len, batch, stride) -> None:
    assert default_stride(tokens, seq_len, batch) == stride
    if tokens >= seq_len + batch:  # enough windows at stride 1
        train, _ = make_loaders(torch.arange(tokens), seq_len, batch, valid_fraction=0.0)
        assert train.dataset.stride == stride and len(train) >= 1
        assert stride == seq_len or len(ShiftingWindows(torch.arange(tokens), seq_len, stride + 1)) < batch


def test_loaders_without_validation() -> None:
    _, valid = make_loaders(torch.arange(100), 4, 2, valid_fraction=0.0)
    assert valid is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(seq_len=0, batch_size=2), "seq_len must be >= 1"),
        (dict(seq_len=4, batch_size=0), "batch_size must be >= 1"),
        (dict(seq_len=20, batch_size=2), "valid split has 10 tokens, need at least 21"),
        (dict(seq_len=4, batch_size=100), "fewer than batch_size = 100"),
        (dict(seq_len=4, batch_size=2, train_stride=0), "train_stride must be >= 1"),
    ],
)
def test_loader_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_loaders(torch.arange(100), **kwargs)


def test_shakespeare_pipeline() -> None:
    texts = read_texts(SHAKESPEARE)
    ids = encode_corpus(texts, Tokenizer())  # byte level: one id per byte
    assert len(ids) == SHAKESPEARE.stat().st_size
    train, valid = make_loaders(ids, seq_len=64, batch_size=12)
    x, y = next(iter(train))
    assert x.shape == (12, 64) and torch.equal(x[:, 1:], y[:, :-1])
    n_valid = len(ids) - int(len(ids) * 0.9)
    assert valid is not None and len(valid.dataset) == (n_valid - 1) // 64
