"""FSDP2 (sharding/torch_sharding.py) on 4 gloo ranks (127.0.0.1) against one process.

One helper process (tests/_sharding_torch_worker.py) spawns the ranks: the sharded step's
loss and gradients must equal the single-process step's (fp32), every parameter must be a
DTensor sharded on dim 0, and a checkpoint saved from the sharded model must load into an
unsharded one (and an unsharded one's into a freshly sharded model) with identical values.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def row(tmp_path_factory):
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    spec = {"seed": seed, "world": 4, "ckpt_dir": str(tmp_path_factory.mktemp("ckpt"))}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_sharding_torch_worker.py"), json.dumps(spec)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"worker failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    rows = [json.loads(l.partition(" ")[2]) for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert len(rows) == 1, proc.stdout
    return rows[0]


def test_fsdp2_step_matches_one_process(row):
    assert abs(row["loss"] - row["ref_loss"]) <= 1e-5 * max(1.0, abs(row["ref_loss"])), row
    assert row["grad_err"] <= 1e-5 * row["grad_scale"], row
    assert row["shard_rows_ok"], row


def test_checkpoint_round_trip_sharded_unsharded(row):
    assert row["to_plain"] == 0.0 and row["to_sharded"] == 0.0, row
