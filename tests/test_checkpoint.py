"""Training checkpoints: layout, atomic folders, keep_last, corrupt files, exact resume."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_training import StopAt, assert_same_weights, byte_loaders, made_text, tiny_model

from gpt import GPT, CheckpointError, Tokenizer, atomic_folder, checkpoint
from gpt.callbacks import ModelCheckpoint

TEXT = made_text(60)  # 24 training batches of 8 x 16 bytes
TRAINING_FILES = {
    *("config.json", "generation_config.json", "model.safetensors"),
    *("optimizer.safetensors", "trainer_state.json", "rng.safetensors", "training_weights.safetensors"),
}


def trained(tmp_path: Path, steps: int = 5, **options) -> GPT:
    """A tiny model trained `steps` steps with checkpoints in `tmp_path`."""
    model = tiny_model()
    train, valid = byte_loaders(TEXT)
    model.fit(train, valid, max_steps=steps, checkpoint_dir=tmp_path, progress=False, **options)
    return model


def test_checkpoint_folder_layout(tmp_path):
    model = tiny_model()
    model.tokenizer = Tokenizer()
    train, valid = byte_loaders(TEXT)
    model.fit(train, valid, max_steps=5, checkpoint_dir=tmp_path, progress=False)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step-00000005"]
    folder = tmp_path / "step-00000005"
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert {p.name for p in folder.iterdir()} == TRAINING_FILES | tokenizer_files
    state = json.loads((folder / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["batch"]) == (5, 0, 5)
    assert state["history"]["loss"] == model.history.loss
    assert len(state["optimizer_param_groups"]) == 3  # Muon; AdamW with and without weight decay
    assert GPT.load(folder).tokenizer.encode("hé") == model.tokenizer.encode("hé")


def test_a_checkpoint_holds_the_weight_average_as_its_model_and_the_raw_weights_apart(tmp_path):
    averaged, raw = trained(tmp_path / "averaged"), trained(tmp_path / "raw", ema_decay=None)
    folder = tmp_path / "averaged" / "step-00000005"
    assert_same_weights(GPT.load(folder), averaged)  # the model to use is the average
    trained_raw = {name: p.detach() for name, p in raw.named_parameters()}  # the same steps, not averaged
    assert load_file(folder / "training_weights.safetensors").keys() == trained_raw.keys()
    for name, weight in load_file(folder / "training_weights.safetensors").items():
        assert torch.equal(weight, trained_raw[name]), name
    assert not (tmp_path / "raw" / "step-00000005" / "training_weights.safetensors").exists()
    assert_same_weights(GPT.load(tmp_path / "raw" / "step-00000005"), raw)


def test_saved_and_loaded_models_give_identical_logits(tmp_path):
    model = trained(tmp_path / "run")
    ids = torch.tensor([list(b"the cat sat on")])
    expected = model(ids)
    model.save(tmp_path / "saved")
    for folder in (tmp_path / "saved", checkpoint.latest_checkpoint(tmp_path / "run")):
        assert torch.equal(GPT.load(folder)(ids), expected)


def test_latest_checkpoint_picks_the_highest_step_and_ignores_the_rest(tmp_path):
    assert checkpoint.latest_checkpoint(tmp_path / "missing") is None
    assert checkpoint.latest_checkpoint(tmp_path) is None
    for name in ("step-00000009", "step-00000010", ".step-00000099.abc.tmp", "best", "step-12"):
        (tmp_path / name).mkdir()
    (tmp_path / "step-00000011").write_text("a file, not a folder")
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "step-00000010"


def test_keep_last_keeps_the_newest_checkpoints(tmp_path):
    trained(tmp_path, steps=9, callbacks=[ModelCheckpoint(every_n_steps=2, keep_last=2)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step-00000008", "step-00000009"]


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = trained(tmp_path, steps=4)
    before = {p.name: p.read_bytes() for p in (tmp_path / "step-00000004").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)  # fails midway: the model files are written
    train, valid = byte_loaders(TEXT)
    with pytest.raises(OSError, match="disk full"):
        model.fit(train, valid, max_steps=8, checkpoint_dir=tmp_path, resume=True, progress=False)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step-00000004"]  # no temporary folder left
    assert {p.name: p.read_bytes() for p in (tmp_path / "step-00000004").iterdir()} == before
    assert TRAINING_FILES <= {p.name for p in (tmp_path / "best").iterdir()}


def test_atomic_folder_replaces_an_existing_folder_only_when_complete(tmp_path):
    target = tmp_path / "best"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")

    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["best"] and (target / "a.txt").read_text() == "old"
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["best"] and [p.name for p in target.iterdir()] == ["b.txt"]


def test_atomic_folder_without_replace_never_overwrites(tmp_path):
    target = tmp_path / "saved"
    with atomic_folder(target, replace=False, prefix=".saving-") as tmp:
        assert tmp.name.startswith(".saving-")
        (tmp / "a.txt").write_text("first")

    with pytest.raises(FileExistsError), atomic_folder(target, replace=False) as tmp:
        pytest.fail("the block must not run when the folder exists")

    def race(tmp: Path) -> None:  # another process takes the name while this one writes
        (tmp / "b.txt").write_text("second")
        other = tmp_path / "other"
        other.mkdir()
        (other / "c.txt").write_text("theirs")
        other.rename(tmp_path / "raced")

    with pytest.raises(FileExistsError), atomic_folder(tmp_path / "raced", replace=False) as tmp:
        race(tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raced", "saved"]
    assert [p.name for p in (tmp_path / "raced").iterdir()] == ["c.txt"]
    assert (target / "a.txt").read_text() == "first"


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _change_emb_size(file: Path) -> None:
    config = json.loads(file.read_text())
    file.write_text(json.dumps({**config, "emb_size": 64, "head_size": 16, "n_embd": 64}))  # both readers' names


@pytest.mark.parametrize(
    "damaged, damage, named",
    [
        ("model.safetensors", _truncate, "model.safetensors"),
        ("config.json", Path.unlink, "config.json"),
        ("config.json", _change_emb_size, "model.safetensors"),  # the config no longer fits the weights
    ],
)
def test_loading_a_damaged_model_names_the_file(tmp_path, damaged, damage, named):
    trained(tmp_path)
    folder = tmp_path / "step-00000005"
    damage(folder / damaged)
    with pytest.raises(CheckpointError, match=named):
        GPT.load(folder)


@pytest.mark.parametrize(
    "name, damage",
    [
        ("trainer_state.json", lambda f: f.write_text("{not json")),
        ("trainer_state.json", lambda f: f.write_text(json.dumps({"optimizer_param_groups": [], "step": 1}))),
        ("trainer_state.json", lambda f: f.write_text(json.dumps({**json.loads(f.read_text()), "history": 3}))),
        ("optimizer.safetensors", _truncate),
        ("rng.safetensors", Path.unlink),
        ("training_weights.safetensors", _truncate),
        ("config.json", _change_emb_size),  # the model being trained differs from the checkpoint
    ],
)
def test_resuming_from_a_damaged_checkpoint_names_the_file(tmp_path, name, damage):
    trained(tmp_path)
    damage(tmp_path / "step-00000005" / name)
    train, valid = byte_loaders(TEXT)
    with pytest.raises(CheckpointError, match=name):
        tiny_model().fit(train, valid, max_steps=8, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_resume_without_a_checkpoint_starts_from_scratch_and_a_fresh_start_needs_an_empty_folder(tmp_path):
    model = trained(tmp_path, steps=3, resume=True)
    assert len(model.history.loss) == 3
    with pytest.raises(ValueError, match="already holds checkpoints"):
        trained(tmp_path, steps=3)


@pytest.mark.parametrize(
    "dropout, stop_step, grad_accum_steps, ema_decay, train_stride",
    [
        (0.0, 10, 1, 0.99, 1),  # mid-epoch
        (0.2, 24, 1, 0.99, 1),  # at the end of the first epoch, with dropout
        (0.2, 7, 2, 0.99, 1),  # mid-epoch, accumulating gradients, with dropout
        (0.0, 10, 1, 0.5, 1),  # an average far from the start weights and from the raw ones
        (0.0, 10, 1, None, 1),  # no average
        (0.0, 20, 1, 0.99, None),  # make_loaders' windows, which shift each epoch: in the second of 16 steps
    ],
)
def test_stopping_and_resuming_trains_exactly_like_one_run(
    tmp_path, dropout, stop_step, grad_accum_steps, ema_decay, train_stride
):
    """The weights (the average, with one), the losses and the evaluations (of the average) of one run."""
    options = dict(num_epoch=2, eval_interval=5, grad_accum_steps=grad_accum_steps, ema_decay=ema_decay, progress=False)
    text = TEXT if train_stride == 1 else made_text(600)

    def run(seed: int, **extra) -> GPT:
        model = tiny_model(dropout, seed=seed)
        train, valid = byte_loaders(text, train_stride=train_stride)
        model.fit(train, valid, **options, **extra)
        return model

    straight = run(seed=0)
    run(seed=0, checkpoint_dir=tmp_path, callbacks=[StopAt(stop_step)])
    resumed = run(seed=1, checkpoint_dir=tmp_path, resume=True)  # every weight comes from the checkpoint

    assert_same_weights(straight, resumed)
    for name in ("steps", "loss", "learning_rate", "tokens", "train_loss", "validation_loss"):
        assert getattr(resumed.history, name) == getattr(straight.history, name), name
    assert set(straight.history.evaluations) <= set(resumed.history.evaluations)  # + one where the first part stopped


def test_resuming_an_averaged_run_without_the_average_goes_on_from_the_raw_weights(tmp_path):
    def run(**options) -> GPT:
        model = tiny_model()
        train, valid = byte_loaders(TEXT)
        model.fit(train, valid, max_steps=8, progress=False, **options)
        return model

    run(checkpoint_dir=tmp_path, callbacks=[StopAt(5)])  # averaged (the default)
    resumed = run(checkpoint_dir=tmp_path, resume=True, ema_decay=None)
    assert_same_weights(resumed, run(ema_decay=None))  # the average never changes the training itself


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os

    from gpt import GPT, Tokenizer

    umask = os.umask(0)
    os.umask(umask)
    model = GPT(vocab_size=257, max_seq_len=8, emb_size=8, num_heads=2, num_layers=1)
    model.save(tmp_path / "m", tokenizer=Tokenizer())
    for file in (tmp_path / "m").iterdir():
        assert file.stat().st_mode & 0o777 == 0o666 & ~umask, file.name


def test_weights_saved_before_conv1d_load_transposed(tmp_path: Path) -> None:
    """simple-llm first stored the block matrices `[out, in]` (nn.Linear), without a layout mark."""
    from safetensors.torch import load_file, save_file

    model = tiny_model().eval()
    folder = model.save(tmp_path / "new")
    weights = load_file(str(folder / checkpoint.WEIGHTS_FILE))
    old = {
        name: t.t().contiguous() if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else t
        for name, t in weights.items()
    }
    save_file(old, str(folder / checkpoint.WEIGHTS_FILE), metadata={"format": "pt"})
    loaded = GPT.load(folder)
    assert_same_weights(loaded, model)
    ids = torch.randint(0, 256, (1, 8))
    torch.testing.assert_close(loaded(ids), model(ids))


def test_an_oversized_weights_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A 1 KB config and a huge model.safetensors: refused by size, never opened (the app is public)."""
    folder = tiny_model().save(tmp_path / "m")
    weights = folder / checkpoint.WEIGHTS_FILE
    os.truncate(weights, 4 * 1024**3)  # sparse: 4 GiB on paper, no disk used

    def no_reading(*args, **kwargs):
        raise AssertionError("the weights file was read")

    monkeypatch.setattr(checkpoint, "safe_open", no_reading)
    monkeypatch.setattr(checkpoint, "load_model", no_reading)
    monkeypatch.setattr(checkpoint, "load_file", no_reading)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 4,294,967,296 bytes cannot hold"):
        GPT.load(folder)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*another model"):
        checkpoint.read_weights(tiny_model(), folder)


def test_a_config_claiming_a_huge_model_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    folder = tiny_model().save(tmp_path / "m")
    config = json.loads((folder / checkpoint.CONFIG_FILE).read_text())
    huge = {**config, "num_layers": 1024, "emb_size": 4096, "head_size": 1024, "n_layer": 1024, "n_embd": 4096}
    (folder / checkpoint.CONFIG_FILE).write_text(json.dumps(huge))

    def no_building(*args, **kwargs):
        raise AssertionError("a model of the config's size was built")

    monkeypatch.setattr(GPT, "from_config", no_building)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .* cannot hold the 206,214,144,000 parameters"):
        GPT.load(folder)


def test_an_oversized_config_file_is_refused(tmp_path):
    folder = tiny_model().save(tmp_path / "m")
    config = json.loads((folder / checkpoint.CONFIG_FILE).read_text())
    (folder / checkpoint.CONFIG_FILE).write_text(json.dumps(config) + " " * checkpoint.MAX_CONFIG_BYTES)
    with pytest.raises(CheckpointError, match=r"config\.json: .* bytes, more than a model config's"):
        GPT.load(folder)


def test_weights_sizes_within_the_allowance_load(tmp_path):
    """Every shape saved by `save` fits the allowance, headers included (bias, untied, many layers)."""
    for options in (dict(num_layers=1), dict(num_layers=12, bias=False, tie_embeddings=False)):
        model = GPT(vocab_size=300, max_seq_len=16, emb_size=8, num_heads=2, **options)
        assert_same_weights(GPT.load(model.save(tmp_path / str(len(options)))), model)
