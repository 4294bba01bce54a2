"""Long-context checks at 32k cache/key positions: prefill attention and decode, Triton and Pallas;
decode also at a 128k cache (Triton, Pallas, Pallas TPU).

(1) Accuracy against a float64 reference computed in key chunks
    (``kernels.decode.reference.attention_reference_chunked``; the dense reference would need
    O(q_len * kv_len) per head), bounded by conftest's same-precision rule.
(2) Retrieval: one key planted at a chosen position among 32k random keys, aligned with the
    query so its score beats every other by ~40 (softmax essentially one-hot); the output must
    be that position's value to within 1e-3.
Small heads/head_dim keep the interpreters to seconds. Prefill uses the existing Triton kernel
with interpreter-sized tiles (``attention_triton(..., blocks=...)``: torch_ops.attention's
32x32 interpreter default would take ~1000 steps per program at 32k).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops, torch_ops
from kernels.attention.reference import _attention
from kernels.attention.triton_attention import TritonAttentionBlocks, attention_triton
from kernels.decode.reference import _decode, attention_reference_chunked

from conftest import assert_close

S = 32768  # keys / cache positions
D = 32
Q_LEN = 64
PLANT = 12345
BIG_PREFILL_TILES = TritonAttentionBlocks(128, 2048, 4, 1)


def _prefill_inputs(rng, *, plant: bool):
    """q [1, Q_LEN, 2, D], k/v [1, S, 1, D] float64 numpy; optionally a planted key."""
    q = rng.standard_normal((1, Q_LEN, 2, D))
    k = rng.standard_normal((1, S, 1, D))
    v = rng.standard_normal((1, S, 1, D))
    if plant:
        u = rng.standard_normal(D)
        q[:] = u  # every query row, both heads, asks for the same thing
        k[0, PLANT, 0] = 8.0 * u  # score 8 |u|^2 / sqrt(D) ~ 45 vs ~N(0, 1) elsewhere
    return q, k, v


def _prefill_triton(q, k, v):
    ts = [torch.from_numpy(x).float() for x in (q, k, v)]
    return attention_triton(*ts, causal=True, scale=D**-0.5, blocks=BIG_PREFILL_TILES)


def _prefill_pallas(q, k, v):
    return jax_ops.attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), causal=True,
                             impl="pallas")


PREFILL = {"triton": _prefill_triton, "pallas": _prefill_pallas}


@pytest.mark.parametrize("impl", sorted(PREFILL))
def test_prefill_32k_matches_chunked_float64(rng, impl):
    q, k, v = _prefill_inputs(rng, plant=False)
    out = PREFILL[impl](q, k, v)
    t32 = [torch.from_numpy(x).float() for x in (q, k, v)]
    ref = attention_reference_chunked(*(t.double() for t in t32), causal=True, chunk=8192)
    base = _attention(*t32, causal=True, window=None, softcap=None, scale=D**-0.5,
                      q_segment_ids=None, kv_segment_ids=None, upcast=False)
    assert_close(out, ref, base, torch.float32)


@pytest.mark.parametrize("impl", sorted(PREFILL))
def test_prefill_32k_retrieves_planted_key(rng, impl):
    q, k, v = _prefill_inputs(rng, plant=True)
    out = np.asarray(PREFILL[impl](q, k, v), dtype=np.float64)  # [1, Q_LEN, 2, D]
    err = np.max(np.abs(out - v[0, PLANT, 0]))
    assert err <= 1e-3, f"retrieval error {err:.2e}: output is not the planted value"


def test_chunked_reference_matches_dense(rng):
    """The chunked float64 reference is the dense one (window + softcap, odd chunk).

    atol 1e-6, not ~1e-12: the dense reference rounds its scores through fp32 (``.float()``
    before the ``.double()`` in kernels/attention/reference.py), so it is fp32-accurate there."""
    q, k, v = (torch.from_numpy(rng.standard_normal(s)) for s in
               ((1, 40, 4, 16), (1, 300, 2, 16), (1, 300, 2, 16)))
    kw = dict(causal=True, window=70, softcap=3.0, scale=0.3)
    dense = _attention(q, k, v, q_segment_ids=None, kv_segment_ids=None, **kw)
    np.testing.assert_allclose(attention_reference_chunked(q, k, v, chunk=37, **kw), dense,
                               rtol=0, atol=1e-6)


# ---- decode against a 32k cache ---------------------------------------------------------

LENS = np.array([S, 20001])  # a full cache and a row that ends off the block grid


def _decode_inputs(rng, *, plant: bool):
    """q [2, 2, D] (MQA: 2 heads, 1 kv head), caches [2, S, 1, D]; optionally planted keys."""
    q = rng.standard_normal((2, 2, D))
    k = rng.standard_normal((2, S, 1, D))
    v = rng.standard_normal((2, S, 1, D))
    if plant:
        u = rng.standard_normal((2, D))
        q[:] = u[:, None]
        k[0, PLANT, 0] = 8.0 * u[0]
        k[1, 20000, 0] = 8.0 * u[1]  # the row's newest token
    return q, k, v


def _decode_triton(q, k, v):
    return torch_ops.decode_attention(*(torch.from_numpy(x).float() for x in (q, k, v)),
                                      torch.from_numpy(LENS), impl="triton")


def _decode_pallas(q, k, v):
    return jax_ops.decode_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)),
                                    jnp.asarray(LENS, jnp.int32), impl="pallas")


DECODE = {"triton": _decode_triton, "pallas": _decode_pallas}


@pytest.mark.parametrize("impl", sorted(DECODE))
def test_decode_32k_matches_float64(rng, impl):
    q, k, v = _decode_inputs(rng, plant=False)
    out = DECODE[impl](q, k, v)
    t32 = [torch.from_numpy(x).float() for x in (q, k, v)]
    kw = dict(window=None, softcap=None, scale=D**-0.5)
    ref = _decode(*(t.double() for t in t32), torch.from_numpy(LENS), **kw)
    base = _decode(*t32, torch.from_numpy(LENS), upcast=False, **kw)
    assert_close(out, ref, base, torch.float32)


@pytest.mark.parametrize("impl", sorted(DECODE))
def test_decode_32k_retrieves_planted_key(rng, impl):
    q, k, v = _decode_inputs(rng, plant=True)
    out = np.asarray(DECODE[impl](q, k, v), dtype=np.float64)  # [2, 2, D]
    want = np.stack([v[0, PLANT, 0], v[1, 20000, 0]])[:, None]
    err = np.max(np.abs(out - want))
    assert err <= 1e-3, f"retrieval error {err:.2e}: output is not the planted value"


# ---- decode against a 128k cache ---------------------------------------------------------
# (2 x 131072 x 16 elements stay far below 2^31: the 64-bit cache offsets a real 128k cache of
# large batch x kv_heads x head_dim needs are checked in the compiled PTX, tests/test_decode.py)

S128 = 131072
D128 = 16
LENS128 = np.array([S128, 100001])  # a full cache and a row that ends off the block grid


def _decode128_triton(q, k, v):
    return torch_ops.decode_attention(*(torch.from_numpy(x).float() for x in (q, k, v)),
                                      torch.from_numpy(LENS128), impl="triton")


def _decode128_pallas(q, k, v):
    return jax_ops.decode_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)),
                                    jnp.asarray(LENS128, jnp.int32), impl="pallas")


def _decode128_pallas_tpu(q, k, v):
    # 8192-position tiles: TPU interpret mode costs per grid step (the default 128 would be
    # 1024 steps a row); the chip tables' tiles are exercised by tests/test_decode_pallas_tpu.py
    from kernels.decode.pallas_tpu_decode import TpuDecodeBlocks, decode_attention_pallas_tpu

    return decode_attention_pallas_tpu(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)),
                                       jnp.asarray(LENS128, jnp.int32), window=None, softcap=None,
                                       scale=D128**-0.5, blocks=TpuDecodeBlocks(8192))


DECODE128 = {"triton": _decode128_triton, "pallas": _decode128_pallas,
             "pallas_tpu": _decode128_pallas_tpu}


@pytest.mark.parametrize("impl", sorted(DECODE128))
def test_decode_128k_matches_chunked_float64(rng, impl):
    """Batch 2 (MQA: 4 heads, 1 kv head, head_dim 16) against a 131072-position cache, one row
    full and one ending at 100001: each kernel against the float64 reference computed in
    8192-key chunks, row by row over its visible positions."""
    q = rng.standard_normal((2, 4, D128))
    k = rng.standard_normal((2, S128, 1, D128))
    v = rng.standard_normal((2, S128, 1, D128))
    out = DECODE128[impl](q, k, v)
    t32 = [torch.from_numpy(x).float() for x in (q, k, v)]
    ref = torch.cat([attention_reference_chunked(
        t32[0][b:b + 1, None].double(), t32[1][b:b + 1, :n].double(), t32[2][b:b + 1, :n].double(),
        causal=False, window=None, softcap=None, scale=D128**-0.5, chunk=8192)[:, 0]
        for b, n in enumerate(LENS128)])
    base = _decode(*t32, torch.from_numpy(LENS128), window=None, softcap=None, scale=D128**-0.5,
                   upcast=False)
    assert_close(out, ref, base, torch.float32)
