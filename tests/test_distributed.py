"""`fit` under `torchrun`: a real two-process CPU run (gloo) of `tiny_training.py`."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from needs import need_gloo
from tiny_training import assert_same_weights

from gpt import GPT, checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("tiny_training.py")

pytestmark = pytest.mark.slow  # two processes under torchrun: not in the fast tier


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_run_keeps_ranks_in_step_and_checkpoints_once(tmp_path):
    need_gloo()
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    command += [f"--master_port={free_port()}", str(WORKER), str(tmp_path)]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    rank0 = GPT.load(tmp_path / "rank0")
    assert_same_weights(rank0, GPT.load(tmp_path / "rank1"))

    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    shards = [set(record["shard"]) for record in records]
    assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) > 0  # each rank has its own data
    assert records[0]["history"] == records[1]["history"]  # so equal losses mean they were averaged
    history = records[0]["history"]
    assert len(history["loss"]) == 6 and history["stop_reason"] == "max_steps"
    assert history["tokens"][0] == 2 * 8 * 16  # one batch of 8 x 16 tokens per rank
    assert records[0]["train_loss"] == records[1]["train_loss"] != []

    assert records[1]["saves"] == []  # only rank 0 writes checkpoints
    assert [Path(p).name for p in records[0]["saves"]].count("step-00000006") == 1
    latest = checkpoint.latest_checkpoint(tmp_path / "ckpt")
    assert latest.name == "step-00000006"
    assert_same_weights(GPT.load(latest), rank0)  # fit's default: the average of the weights, the same on every rank
    assert (latest / checkpoint.TRAINING_WEIGHTS_FILE).is_file()  # and the raw weights apart, for a resume
