"""FSDP2, tensor parallel and FSDP2+TP (sharding/torch_sharding.py) on 4 gloo ranks (127.0.0.1).

One helper process (tests/_sharding_torch_worker.py) spawns the ranks and runs every case in
one process group: the sharded step's loss and gradients must equal the single-process
step's (fp32), every parameter's local shard must have the shape the strategy promises
(FSDP2: dim 0 over "fsdp"; TP: q/gate/up rows, o/down columns over "tensor", the MQA kv
head whole; FSDP2+TP: both), and a checkpoint saved from the sharded model must load into an
unsharded one (and an unsharded one's into a freshly sharded model) with identical values.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = ("fsdp2", "tp", "fsdp2+tp")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    spec = {"seed": seed, "world": 4, "ckpt_dir": str(tmp_path_factory.mktemp("ckpt")), "cases": CASES}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_sharding_torch_worker.py"), json.dumps(spec)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"worker failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    rows = [json.loads(l.partition(" ")[2]) for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert [r["what"] for r in rows] == list(CASES), proc.stdout
    return {r["what"]: r for r in rows}


@pytest.mark.parametrize("what", CASES)
def test_step_matches_one_process(rows, what):
    row = rows[what]
    assert abs(row["loss"] - row["ref_loss"]) <= 1e-5 * max(1.0, abs(row["ref_loss"])), row
    assert row["grad_err"] <= 1e-5 * row["grad_scale"], row


@pytest.mark.parametrize("what", CASES)
def test_shards_have_promised_shape(rows, what):
    assert rows[what]["shard_ok"], rows[what]["shard_issue"]


@pytest.mark.parametrize("what", CASES)
def test_checkpoint_round_trip_sharded_unsharded(rows, what):
    row = rows[what]
    assert row["to_plain"] == 0.0 and row["to_sharded"] == 0.0, row
