"""Every benchmark script runs end to end in its `--quick` mode and prints its table.

The figures themselves are never asserted on (the machine is shared); these tests check that each
script still runs against the current library and measures every row it promises, with a number.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from needs import need_chromium, need_npm_package

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # benchmarks: not in the fast tier
FULL_TEXT = ROOT / "data" / "shakespeare.txt"  # the whole text, shipped: the published figures' text


def run_quick(script: str) -> str:
    result = subprocess.run(
        [sys.executable, f"bench/{script}.py", "--quick"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"bench/{script}.py --quick failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def table_rows(output: str) -> list[list[str]]:
    """The cells of every markdown table row of `output`, headers and separator lines left out."""
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in output.splitlines() if line.startswith("|")
    ]
    separators = {i for i, row in enumerate(rows) if all(set(cell) <= set("-:") for cell in row)}
    return [row for i, row in enumerate(rows) if i not in separators and i + 1 not in separators]


def figure(cell: str) -> float:
    """The number a cell starts with, e.g. 1234.0 for "1,234 (1,100-1,300)"."""
    number = re.match(r"[\d,.]+", cell)
    assert number, f"no figure in {cell!r}"
    return float(number.group().replace(",", ""))


def text_used(output: str) -> Path:
    """The Shakespeare text a bench says it read, from its one `text: PATH (N bytes, ...)` line."""
    lines = [line for line in output.splitlines() if line.startswith("text: ")]
    assert len(lines) == 1, lines
    match = re.fullmatch(r"text: (.+) \(([\d,]+) bytes, .+\)", lines[0])
    assert match, lines[0]
    assert Path(match[1]).stat().st_size == int(match[2].replace(",", ""))
    return Path(match[1])


def measured(rows: list[list[str]], label: str, column: int) -> float:
    """The figure in `column` of the one row whose cells include `label`."""
    matching = [row for row in rows if label in row]
    assert len(matching) == 1, f"expected one row {label!r}, got {matching}"
    return figure(matching[0][column])


def test_train_bench() -> None:
    rows = table_rows(run_quick("train"))
    for label in (
        "ours fp32",
        "HF GPT2LMHeadModel fp32 (sdpa)",
        "ours bf16 autocast",
        "ours fp32 via `fit()` (library loop)",
    ):
        assert measured(rows, label, 3) > 0
    assert measured(rows, "fp32 matmul ceiling (2048^3), as tokens/s", 5) > 0  # GFLOP/s
    assert measured(rows, "bf16 matmul ceiling (2048^3), as tokens/s", 5) > 0


def test_decode_bench() -> None:
    rows = [row for row in table_rows(run_quick("decode")) if row[4] != "no GPU"]  # CUDA rows: figures only with a GPU
    assert {row[3] for row in rows} == {
        "torch, no cache (recompute)",
        "torch, KV cache (ours `generate`)",
        "HF `generate(use_cache=True)`",
        "onnxruntime fp32 (CPU)",
        "onnxruntime int8 (CPU)",
    }
    assert {row[2] for row in rows} == {"1", "2"}  # threads
    for row in rows:
        assert figure(row[4]) > 0  # tokens/s
        if row[3].startswith("onnxruntime"):
            assert figure(row[7]) > 0  # export seconds
            assert row[8].endswith("smaller)") == (row[3] == "onnxruntime int8 (CPU)")


def test_decode_cuda_rows_run_their_code_path_on_the_cpu() -> None:
    """The CUDA rows (measured only where a GPU is lent) go through the same code on the CPU."""
    from bench.common import hf_gpt2, model_kwargs
    from bench.decode import cuda_rows, random_ids
    from gpt import GPT

    ours, hf = GPT(**model_kwargs("S", 64), dropout=0.0).eval(), hf_gpt2("S", 64).eval()
    rows = cuda_rows("S", ours, hf, None, random_ids(ours.config.vocab_size, 1), new_tokens=4, repeats=1, device="cpu")
    assert measured(rows, "torch CUDA, KV cache (ours)", 4) > 0
    assert measured(rows, "HF generate, CUDA", 4) > 0
    assert [row[4] for row in rows if row[3] == "onnxruntime CUDA fp32 (IOBinding)"] == ["not run"]


def test_tokenizer_bench() -> None:
    output = run_quick("tokenizer")
    assert text_used(output) == FULL_TEXT
    size = "1 MB"  # its first 1 MB
    rows = table_rows(output)
    assert measured(rows, f"ours `Tokenizer.train`, {size}, vocab 4096", 1) > 0
    assert measured(rows, f"ours `encode(text)`, one {size} string, fresh tokenizer", 1) > 0
    assert any("EXTRAPOLATED" in row[0] for row in rows)


def test_memory_bench() -> None:
    rows = table_rows(run_quick("memory"))
    for label in ("training, ours fp32 (3 steps, AdamW)", "training, HF GPT2LMHeadModel fp32 (3 steps, AdamW)",
                  "generation, torch, ours KV cache", "generation, onnxruntime fp32"):  # fmt: skip
        assert measured(rows, label, 2) > 0


def test_quality_bench() -> None:
    output = run_quick("quality")
    assert text_used(output) == FULL_TEXT
    rows = table_rows(output)
    assert {row[0] for row in rows} == {
        "default fit (Muon + AdamW), bytes",
        "default fit with optimizer='adamw', bytes",
        "nanoGPT config, bytes",
        "default fit, BPE 4096",
        "default fit, bf16 autocast, bytes",
    }
    for row in rows:
        assert 0 < figure(row[3]) < math.log(256)  # nats per byte: better than a uniform guess over bytes


def test_webapp_latency_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    # settings exported for another app instance on the machine never reach the bench's own app:
    # leaked, this TTL would sweep client B's session (and its model) between requests, and this
    # token limit would refuse the bench's 64-token requests
    monkeypatch.setenv("SIMPLE_LLM_SESSION_TTL_MINUTES", "0.01")
    monkeypatch.setenv("SIMPLE_LLM_MAX_NEW_TOKENS", "8")
    output = run_quick("webapp_latency")
    rows = table_rows(output)
    assert measured(rows, "idle (no training)", 1) > 0
    assert measured(rows, "busy (another session trains `tiny`)", 1) > 0
    assert "target busy" in output


def test_browser_decode_bench() -> None:
    """In-browser decoding beside native onnxruntime (skips without Chromium or the JS runtime; fails
    without them under CI=true)."""
    need_chromium()
    need_npm_package("onnxruntime-web")
    rows = table_rows(run_quick("browser_decode"))
    assert {(row[0], row[1]) for row in rows} == {("S", "fp32"), ("S", "int8")}
    runs = {re.sub(r" \(\d+\)$", "", row[2]) for row in rows}
    assert runs == {"onnxruntime (native), 1 thread", "browser, 1 thread", "browser, all threads"}
    for row in rows:
        assert figure(row[3]) > 0 and figure(row[4]) > 0  # tokens/s and the ratio to native
        browser = not row[2].startswith("onnxruntime")
        assert (row[5] != "-") == (browser and row[1] == "int8")  # ÷ fp32: int8's pages, paired with fp32's
        if row[5] != "-":
            assert figure(row[5]) > 0
        assert (row[6] != "-") == browser  # page load: browser rows only


def test_benches_read_the_shipped_full_text(capsys) -> None:
    """A fresh clone reproduces docs/performance.md: the benches read data/shakespeare.txt, in the repository."""
    from bench import common

    assert common.shakespeare_text() == FULL_TEXT and FULL_TEXT.stat().st_size == 1_115_508
    assert text_used(capsys.readouterr().out) == FULL_TEXT


def test_presets_bench() -> None:
    rows = table_rows(run_quick("presets"))
    assert [row[:2] for row in rows] == [["tiny", "before"], ["tiny", "now"]]
    for row in rows:
        assert 0 < figure(row[2]) < math.log(512)  # nats per token of the tiny preset's tokenizer
    assert rows[0][3] == "+0.000"


def test_ablate_bench(tmp_path: Path) -> None:
    log = tmp_path / "ablate.jsonl"
    result = subprocess.run(
        [sys.executable, "bench/ablate.py", "--quick", "--variants", "default,relu2,batch 6 x 128,no ema",
         "--log", str(log)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert text_used(result.stdout) == FULL_TEXT
    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == ["default", "relu2", "batch 6 x 128", "no ema"]
    for row in rows:
        assert 0 < figure(row[3]) < math.log(256) and figure(row[7]) > 0 and figure(row[8]) > 0
    assert rows[0][6] == "+0.000 (+0.000)"  # its own difference from the default
    records = [json.loads(line) for line in log.read_text().splitlines()]
    # the earlier rounds' variants ran with a window at every position, make_loaders' default then
    assert [r.get("run") for r in records] == [None, {"stride": 1}, {"stride": 1, "batch": 6}, {"stride": 1}]
    assert [r["fit"].get("ema_decay", 0.99) for r in records] == [0.99, None, None, None]  # the default averages
    # 6 sequences of 128 tokens a step: the same tokens as 12 x 64, a longer context (position table)
    assert records[2]["tokens"] == records[0]["tokens"]
    assert records[2]["parameters"] == records[0]["parameters"] + 64 * 128


@pytest.mark.parametrize(
    "name",
    ["rmsnorm", "rotary", "value embeddings", "sinusoidal positions", "sinusoidal positions (frozen)",
     "token table std 0.06", "orthogonal init"],
)  # fmt: skip
def test_a_trial_patch_changes_the_model_and_it_still_learns(name: str) -> None:
    import torch

    from bench.trial_patches import PATCHES
    from gpt import GPT, make_loaders

    shape = dict(vocab_size=64, max_seq_len=16, emb_size=32, num_heads=4, num_layers=2, dropout=0.0)
    torch.manual_seed(0)
    plain = GPT(**shape)
    torch.manual_seed(0)
    patched = GPT(**shape)
    PATCHES[name](patched)
    x = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(plain(x), patched(x))
    if name == "rmsnorm":
        assert not any(isinstance(m, torch.nn.LayerNorm) for m in patched.modules())
    if name == "rotary":  # no position table: the order of the context counts through the rotation alone
        assert not patched.transformer.wpe.weight.requires_grad and not patched.transformer.wpe.weight.any()
        one_layer = GPT(**{**shape, "num_layers": 1})  # its last position sees the context as a bag of tokens
        torch.nn.init.zeros_(one_layer.transformer.wpe.weight)
        torch.nn.init.normal_(one_layer.transformer.h[0].attn.c_attn.weight, std=1.0)  # sharp attention
        order, swapped = torch.tensor([[3, 7, 9, 5]]), torch.tensor([[7, 3, 9, 5]])
        assert torch.allclose(one_layer(order)[0, -1], one_layer(swapped)[0, -1], atol=1e-5)
        PATCHES[name](one_layer)
        assert not torch.allclose(one_layer(order)[0, -1], one_layer(swapped)[0, -1], atol=1e-2)
    if name.startswith("sinusoidal positions"):  # the Transformer's table at the token table's scale
        table = patched.transformer.wpe.weight
        assert table.requires_grad == (name == "sinusoidal positions")
        assert torch.allclose(table[5, 2:4], 0.02 * 2**0.5 * torch.tensor([math.sin(5 / 10000 ** (2 / 32)),
                                                                          math.cos(5 / 10000 ** (2 / 32))]))  # fmt: skip
        assert torch.allclose(table.square().mean().sqrt(), torch.tensor(0.02), rtol=0.05)
    if name == "token table std 0.06":
        assert (
            0.05 < patched.transformer.wte.weight.std() < 0.07
            and patched.lm_head.weight is patched.transformer.wte.weight
        )
    if name == "orthogonal init":  # each block matrix: orthogonal rows or columns, at the normal start's RMS
        for before, after in zip(plain.transformer.h.parameters(), patched.transformer.h.parameters()):
            if after.dim() == 2:
                rms = after.square().mean().sqrt()
                assert torch.allclose(rms, before.square().mean().sqrt())
                tall = after if after.shape[0] >= after.shape[1] else after.T
                gram = tall.T @ tall / (rms**2 * tall.shape[0])
                assert torch.allclose(gram, torch.eye(tall.shape[1]), atol=1e-4)
    if name == "value embeddings":
        assert len(patched.value_embeds) == 2 and all(t.weight.requires_grad for t in patched.value_embeds)
    train, _ = make_loaders(torch.randperm(64).repeat(40), 16, 8, valid_fraction=0.0)  # one text, repeated
    patched.fit(train, num_epoch=None, max_steps=40, progress=False, log_every=None, ema_decay=None)
    assert patched.history.loss[-1] < patched.history.loss[0] - 1.0


def test_the_qkv_apart_trial_keeps_the_function_and_gives_muon_three_matrices_a_block() -> None:
    import torch

    from bench.trial_patches import PATCHES
    from gpt import GPT, make_loaders
    from gpt.training import Trainer, TrainingOptions

    shape = dict(vocab_size=64, max_seq_len=16, emb_size=32, num_heads=4, num_layers=2, dropout=0.0)
    torch.manual_seed(0)
    plain = GPT(**shape)
    torch.manual_seed(0)
    patched = GPT(**shape)
    PATCHES["muon on q, k, v apart"](patched)
    x = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(plain(x), patched(x), atol=1e-6)  # the same model
    train, _ = make_loaders(torch.randperm(64).repeat(40), 16, 8, valid_fraction=0.0)
    # as measured, before fit's Muon took the fused matrix apart itself (`muon_qkv_apart`)
    fused = dict(muon_qkv_apart=False)
    muon = Trainer(patched, train, None, TrainingOptions(max_steps=1, **fused)).optimizer.optimizers[0]
    shapes = [tuple(p.shape) for p in muon.param_groups[0]["params"]]
    assert shapes.count((32, 32)) == 3 * 2 + 2 and (32, 96) not in shapes  # q, k, v and c_proj per block
    patched.fit(train, num_epoch=None, max_steps=40, progress=False, log_every=None, ema_decay=None, **fused)
    assert patched.history.loss[-1] < patched.history.loss[0] - 1.0


@pytest.mark.parametrize("name, fraction", [("cooldown 30%", 0.3), ("cooldown 50%", 0.5)])
def test_the_cooldown_trial_holds_the_peak_then_falls_linearly_to_zero(name: str, fraction: float) -> None:
    import torch

    from bench.trial_patches import PATCHES
    from gpt import GPT, make_loaders

    model = GPT(vocab_size=64, max_seq_len=16, emb_size=32, num_heads=4, num_layers=1)
    PATCHES[name](model)
    train, _ = make_loaders(torch.randperm(64).repeat(40), 16, 8, valid_fraction=0.0)
    model.fit(train, num_epoch=None, max_steps=100, learning_rate=1e-3, progress=False, log_every=None)
    lr = model.history.learning_rate
    stable_until = round(100 * (1 - fraction))
    assert lr[:5] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3])  # fit's warmup: 5% of the steps
    assert lr[5 : stable_until + 1] == pytest.approx([1e-3] * (stable_until - 4))
    assert lr[stable_until:] == pytest.approx(
        [1e-3 * (100 - s) / (100 - stable_until) for s in range(stable_until, 100)]
    )


@pytest.mark.parametrize(
    "name",
    ["embeddings without decay", "muon wd 0.2", "position table lr x3", "muon momentum warmup",
     "muon q k v per head", "muon per head", "muon mlp in square blocks", "muon without nesterov"],
)  # fmt: skip
def test_an_optimizer_trial_changes_what_it_names_and_the_model_still_learns(name: str) -> None:
    import torch

    from bench.trial_patches import PATCHES
    from gpt import GPT, Callback, make_loaders

    model = GPT(vocab_size=64, max_seq_len=16, emb_size=32, num_heads=4, num_layers=2, dropout=0.0)
    PATCHES[name](model)
    seen = []

    class Watch(Callback):
        def on_batch_end(self, trainer) -> None:
            seen.append((trainer.optimizer, trainer.lr, [dict(g) for g in trainer.optimizer.param_groups]))

    train, _ = make_loaders(torch.randperm(64).repeat(40), 16, 8, valid_fraction=0.0)
    model.fit(train, num_epoch=None, max_steps=40, progress=False, log_every=None, ema_decay=None, callbacks=[Watch()])
    assert model.history.loss[-1] < model.history.loss[0] - 1.0
    optimizer, lr, groups = seen[10]
    muon, adamw = optimizer.optimizers
    tables = {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    decayed = [id(p) for g in adamw.param_groups if g["weight_decay"] for p in g["params"]]
    assert sorted(decayed) == ([] if name == "embeddings without decay" else sorted(tables))
    assert [g["weight_decay"] for g in muon.param_groups] == [0.2 if name == "muon wd 0.2" else 0.1]
    if name == "position table lr x3":
        table = model.transformer.wpe.weight
        holding = [g for g in groups if any(p is table for p in g["params"])]  # as at step 11
        assert len(holding) == 1 and len(holding[0]["params"]) == 1 and holding[0]["lr"] == pytest.approx(3 * lr)
    momenta = [next(g["momentum"] for g in gs if "momentum" in g and "nesterov" in g) for _, _, gs in seen]
    assert [g["nesterov"] for g in muon.param_groups] == [name != "muon without nesterov"]
    if name == "muon momentum warmup":  # 0.85 to fit's 0.95 over 300 steps: step s ran at 0.85 + 0.1 s / 300
        assert momenta[:3] == pytest.approx([0.85, 0.85 + 0.1 / 300, 0.85 + 0.2 / 300])
    else:
        assert set(momenta) == {0.95}
    shapes = sorted(tuple(p.shape) for p in muon.param_groups[0]["params"])
    expected = {  # per layer: q, k, v; the attention's output projection; the MLP's two matrices
        "muon q k v per head": [(32, 8)] * 12 + [(32, 32), (32, 128), (128, 32)],
        "muon per head": [(8, 32)] * 4 + [(32, 8)] * 12 + [(32, 128), (128, 32)],
        "muon mlp in square blocks": [(32, 32)] * 12,
    }.get(name, [(32, 32)] * 4 + [(32, 128), (128, 32)])
    assert shapes == sorted(expected * 2)
    for fused in optimizer.fused:  # the optimizer's parts are the model's matrices
        assert fused.fused.data_ptr() == fused.blocks[0].data_ptr()


def test_ablate_speed_bench() -> None:
    result = subprocess.run(
        [sys.executable, "bench/ablate.py", "--speed", "--quick", "--variants", "default,batch 6 x 128"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == ["default", "batch 6 x 128"] and all(figure(row[1]) > 0 for row in rows)
    assert figure(rows[0][2]) == 1.0
