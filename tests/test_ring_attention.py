"""Ring attention (sharding/ring_attention_{jax,torch}.py) against the single-device kernels.

Each framework runs in one helper process that does all its cases: JAX needs 8 simulated CPU
devices (XLA_FLAGS before JAX initializes; this process already has JAX), torch needs 4 gloo
ranks; a third process runs the JAX ring over the TPU kernel (impl="pallas_tpu", TPU
interpret mode) against the single-device TPU kernel. All start at once when the module's
first test asks for them. For every case the
sharded o, dq, dk, dv must be within the conftest accuracy rule of the float64 reference
(2x the framework's error in the same dtype + floor) and equally close to the single-device kernel's result.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from kernels.tolerances import ATOL_FLOOR, ERROR_RATIO

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_WORLD = 4


@dataclasses.dataclass(frozen=True)
class Case:
    heads: int
    kv_heads: int
    seq: int
    head_dim: int
    causal: bool
    softcap: float | None = None
    batch: int = 1
    dtype: str = "float32"
    mesh: tuple = (8,)  # JAX only: the ring runs over the last axis, "sp"

    @property
    def id(self) -> str:
        kind = "mqa" if self.kv_heads == 1 else "gqa"
        parts = [f"{kind}{self.heads}x{self.kv_heads}", f"s{self.seq}", f"d{self.head_dim}",
                 "causal" if self.causal else "full"]
        if self.softcap is not None:
            parts.append(f"cap{self.softcap:g}")
        if self.batch > 1:
            parts.append(f"b{self.batch}")
        if self.dtype != "float32":
            parts.append(self.dtype)
        parts.append("mesh" + "x".join(map(str, self.mesh)))
        return "-".join(parts)

    def spec(self) -> dict:
        axes = ["sp"] if len(self.mesh) == 1 else ["dp", "sp"]
        return dict(id=self.id, **dataclasses.asdict(self), axes=axes)


CASES = [
    Case(4, 1, 64, 16, causal=True),
    Case(4, 2, 64, 32, causal=True, softcap=5.0, batch=2, mesh=(2, 4)),
    Case(2, 1, 64, 16, causal=False),
    Case(4, 2, 128, 16, causal=False, mesh=(2, 4)),
    Case(4, 2, 64, 16, causal=True, dtype="float16"),  # fp16 dots (the interpreter's bf16 is wrong)
]
TORCH_CASES = [dataclasses.replace(c, mesh=(TORCH_WORLD,)) for c in CASES]
# impl="pallas_tpu" (tests/_ring_jax_tpu_worker.py). MQA only: in jax 0.10.2's TPU interpret
# mode a pallas_tpu call with kv_heads > 1 inside a shard_map over >= 2 CPU devices hangs
# (every device's io_callback stuck in interpret_pallas_call._allocate_buffer), ring or not.
TPU_CASES = [Case(4, 1, 64, 16, causal=True, softcap=5.0)]

# check name -> fragments its error message must contain
JAX_CHECKS = {
    "seq_not_divisible": ("2 * n = 16", "got 24"),
    "q_len_ne_kv_len": ("q_len 16", "kv_len 32"),
    "window": ("window",),
    "segment_ids": ("segment_ids",),
}
JAX_TPU_CHECKS = {  # name -> (error type, fragments)
    "impl": ("ValueError", ("impl must be one of", "'triton'")),
    "tpu_blocks": ("TypeError", ("TpuAttentionBlocks", "PallasAttentionBlocks")),
}
TORCH_CHECKS = {
    "seq_not_divisible": ("2 * world = 8", f"got {4 * TORCH_WORLD + 2}"),
    "odd_local_len": ("even", "q_len 5"),
    "window": ("window",),
    "segment_ids": ("segment_ids",),
    "heads": ("heads % kv_heads",),
}


@pytest.fixture(scope="module")
def workers():
    """Start both helper processes now; each framework's fixture waits for its own."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    specs = {
        "jax": ("_ring_jax_worker.py", dict(seed=seed, cases=[c.spec() for c in CASES])),
        "torch": ("_ring_torch_worker.py",
                  dict(seed=seed, world=TORCH_WORLD, cases=[c.spec() for c in TORCH_CASES])),
        "jax_tpu": ("_ring_jax_tpu_worker.py", dict(seed=seed, cases=[c.spec() for c in TPU_CASES])),
    }
    procs = {name: subprocess.Popen([sys.executable, os.path.join(HERE, script), json.dumps(spec)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (script, spec) in specs.items()}
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def _collect(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed (rc {proc.returncode}):\n{out}\n{err[-4000:]}"
    rows = {"RESULT": {}, "CHECK": {}}
    for line in out.splitlines():
        tag, _, payload = line.partition(" ")
        if tag == "RESULT":
            row = json.loads(payload)
            rows[tag][(row["case"], row["what"])] = row
        elif tag == "CHECK":
            row = json.loads(payload)
            rows[tag][row["check"]] = row
    return rows


@pytest.fixture(scope="module")
def jax_rows(workers):
    return _collect(workers["jax"])


@pytest.fixture(scope="module")
def jax_tpu_rows(workers):
    return _collect(workers["jax_tpu"], timeout=600)


@pytest.fixture(scope="module")
def torch_rows(workers):
    return _collect(workers["torch"])


def _assert_case(rows, case_id, dtype):
    for what in ("o", "dq", "dk", "dv"):
        row = rows["RESULT"].get((case_id, what))
        assert row is not None, f"{case_id}: worker printed no result for {what}"
        bound = ERROR_RATIO * row["err_base"] + ATOL_FLOOR[dtype] * max(1.0, row["ref_max"])
        assert row["err_ring"] <= bound, (
            f"{case_id} {what}: ring error vs float64 {row['err_ring']:.3e} > bound {bound:.3e} "
            f"(framework error in {dtype} {row['err_base']:.3e})")
        assert row["diff_ring_kernel"] <= bound, (
            f"{case_id} {what}: ring vs single-device kernel {row['diff_ring_kernel']:.3e} "
            f"> bound {bound:.3e}")


def _assert_check(rows, name, fragments):
    row = rows["CHECK"][name]
    assert row["error"] == "ValueError", f"{name}: expected ValueError, got {row}"
    for fragment in fragments:
        assert fragment in row["message"], f"{name}: {fragment!r} not in {row['message']!r}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_ring_attention_jax(jax_rows, case):
    _assert_case(jax_rows, case.id, case.dtype)


@pytest.mark.parametrize("case", TPU_CASES, ids=lambda c: c.id)
def test_ring_attention_jax_tpu_kernel(jax_tpu_rows, case):
    """impl="pallas_tpu": the ring over the TPU kernel (natural-log lse merged in its own base)
    gives the float64 result and the single-device TPU kernel's."""
    _assert_case(jax_tpu_rows, case.id, case.dtype)


@pytest.mark.parametrize("name", sorted(JAX_TPU_CHECKS))
def test_ring_attention_jax_impl_refusals(jax_tpu_rows, name):
    error, fragments = JAX_TPU_CHECKS[name]
    row = jax_tpu_rows["CHECK"][name]
    assert row["error"] == error, f"{name}: expected {error}, got {row}"
    for fragment in fragments:
        assert fragment in row["message"], f"{name}: {fragment!r} not in {row['message']!r}"


def test_ring_attention_jax_default_impl():
    """impl=None follows JAX's default backend: the TPU kernel only on a TPU."""
    import jax

    from sharding.ring_attention_jax import resolve_impl

    assert resolve_impl(None) == ("pallas_tpu" if jax.default_backend() == "tpu" else "pallas")
    assert resolve_impl("pallas_tpu") == "pallas_tpu"


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.id)
def test_ring_attention_torch(torch_rows, case):
    _assert_case(torch_rows, case.id, case.dtype)
    launches = torch_rows["RESULT"][(case.id, "o")]["launches"]
    assert launches == TORCH_WORLD, f"rank 0 ran {launches} Triton forward launches, expected one per step"


@pytest.mark.parametrize("name", sorted(JAX_CHECKS))
def test_ring_attention_jax_refuses(jax_rows, name):
    _assert_check(jax_rows, name, JAX_CHECKS[name])


@pytest.mark.parametrize("name", sorted(TORCH_CHECKS))
def test_ring_attention_torch_refuses(torch_rows, name):
    _assert_check(torch_rows, name, TORCH_CHECKS[name])


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_zigzag_layouts_agree(n):
    """torch's zigzag_shard / zigzag_unshard and JAX's zigzag_indices give the same layout."""
    from sharding.ring_attention_jax import zigzag_indices
    from sharding.ring_attention_torch import zigzag_shard, zigzag_unshard

    s = 6 * 2 * n
    x = torch.arange(s)[None]
    shards = [zigzag_shard(x, r, n) for r in range(n)]
    np.testing.assert_array_equal(torch.cat(shards, 1)[0].numpy(), zigzag_indices(s, n))
    np.testing.assert_array_equal(zigzag_unshard(shards).numpy(), x.numpy())
    c = s // (2 * n)  # rank r holds positions of chunks r and 2n-1-r
    for r, shard in enumerate(shards):
        assert shard[0, 0] == r * c and shard[0, c] == (2 * n - 1 - r) * c
