"""Pallas MQA/GQA flash attention (kernels/attention/pallas_attention.py) against references.

Ground truth: the torch float64 reference (autograd for gradients) on float64 copies of
the rounded inputs. Baseline: the jnp reference in the same dtype (``upcast=False``),
whose error sets the bound through ``assert_close``. Runs in Pallas interpret mode on CPU.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import AttentionCase, jax_vjp, make_inputs, torch_truth

from kernels import jax_ops
from kernels.attention import reference_jax
from kernels.attention.pallas_attention import (
    PallasAttentionBlocks, attention_pallas, default_blocks)
from kernels.tolerances import BENCH_RTOL

from conftest import assert_close

F32, F16, BF16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)
SMALL = PallasAttentionBlocks(block_q=16, block_k=16)  # many tiles: exercises block skipping


Case = AttentionCase

CASES = [
    Case(4, 1, 1, 1, 64, F32),
    Case(4, 1, 17, 17, 64, F32, causal=True, batch=2),
    Case(4, 2, 100, 257, 80, F32, causal=True),
    Case(2, 2, 257, 100, 64, BF16, causal=True),  # Sq > Skv: leading rows see no key
    Case(8, 1, 1, 100, 128, F16),  # decode-like
    Case(4, 2, 100, 100, 64, F16, window=16),
    Case(4, 1, 100, 100, 80, BF16, window=9, softcap=5.0),
    Case(4, 2, 17, 100, 128, F32, causal=True, softcap=2.0),
    Case(2, 2, 100, 100, 64, F32, segments=True, batch=2),
    Case(4, 2, 100, 100, 64, F16, causal=True, window=33, segments=True),
    Case(4, 2, 17, 257, 64, BF16, segments=True),
    Case(2, 1, 17, 17, 256, F32, causal=True),
    Case(4, 4, 100, 100, 96, BF16),
    Case(4, 1, 60, 145, 64, F32, causal=True, window=40, blocks=SMALL),  # 16-tiles: not multiples,
    Case(4, 2, 145, 60, 80, F16, causal=True, blocks=SMALL),  # block skipping both ways (short: interpreted)
    Case(2, 2, 100, 100, 64, BF16, window=20, segments=True,
         blocks=PallasAttentionBlocks(block_q=32, block_k=16)),
    Case(3, 1, 100, 17, 64, F32, softcap=1.5, segments=True, blocks=SMALL),
    # MHA on 16-tiles: causal shift 14 = -2 mod 16, and a window of 2 mod 16, put a query or a
    # window edge next to a block edge (off-by-ones in the skip / unmasked-range bounds show)
    Case(1, 1, 32, 46, 16, F32, causal=True, blocks=SMALL),
    Case(1, 1, 48, 48, 16, F32, causal=True, window=18, blocks=SMALL),
]










def _check(rng, c: Case):
    q, k, v, do, ids = make_inputs(rng, c)
    flags = dict(causal=c.causal, window=c.window, softcap=c.softcap, scale=c.head_dim**-0.5)
    q_ids, kv_ids = (None, None) if ids[0] is None else (jnp.asarray(i) for i in ids)
    kernel = jax_vjp(lambda q, k, v: attention_pallas(
        q, k, v, q_segment_ids=q_ids, kv_segment_ids=kv_ids, blocks=c.blocks, **flags), q, k, v, do)
    baseline = jax_vjp(lambda q, k, v: reference_jax._attention(
        q, k, v, q_segment_ids=q_ids, kv_segment_ids=kv_ids, upcast=False, **flags), q, k, v, do)
    truth = torch_truth(q, k, v, do, ids, **flags)
    assert kernel[0].dtype == q.dtype and kernel[0].shape == q.shape
    for what, out, ref64, base in zip(("out", "dq", "dk", "dv"), kernel, truth, baseline):
        assert_close(out, ref64, base, c.dtype, what)
    return q, kernel


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(rng, case):
    _check(rng, case)


def test_rows_without_keys_are_zero(rng):
    """Rows that see no key (foreign segment, or before the first key when causal) give 0."""
    c = Case(4, 2, 40, 24, 64, F32, causal=True, segments=True)
    q, k, v, do, _ = make_inputs(rng, c)
    kv_ids = np.zeros((1, 24), np.int32)
    q_ids = np.zeros((1, 40), np.int32)
    q_ids[0, 30:] = 7  # a segment with no keys at all
    flags = dict(causal=True, window=None, softcap=None, scale=0.125)
    fn = lambda q, k, v: attention_pallas(q, k, v, q_segment_ids=jnp.asarray(q_ids),
                                          kv_segment_ids=jnp.asarray(kv_ids), **flags)
    o, dq, dk, dv = jax_vjp(fn, q, k, v, do)
    # query s sits at s - 16: rows 0..15 precede every key; rows 30.. are segment 7
    empty = np.r_[0:16, 30:40]
    assert np.all(np.asarray(o)[:, empty] == 0) and np.all(np.asarray(dq)[:, empty] == 0)
    assert np.any(np.asarray(o)[:, 16:30] != 0)
    truth = torch_truth(q, k, v, do, (q_ids, kv_ids), **flags)
    for what, out, ref64 in zip(("out", "dq", "dk", "dv"), (o, dq, dk, dv), truth):
        assert_close(out, ref64, ref64, F32, what)


def _pallas_calls(jaxpr):
    """Every pallas_call equation in a jaxpr, nested calls included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield eqn
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else [p]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _pallas_calls(sub)


def test_public_api_jit_grad_runs_pallas_kernels(rng):
    """jax_ops.attention(impl="pallas") under jit + grad launches the three kernels on
    un-repeated K/V (kv_heads, not heads, in every K/V operand)."""
    c = Case(8, 2, 33, 50, 64, F32, causal=True, window=20)
    q, k, v, _, _ = make_inputs(rng, c)

    def loss(q, k, v):
        o = jax_ops.attention(q, k, v, causal=True, window=20, impl="pallas")
        return jnp.sum(o.astype(jnp.float32) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    calls = list(_pallas_calls(jax.make_jaxpr(grad)(q, k, v).jaxpr))
    assert sorted(e.params["name"] for e in calls) == [
        "mqa_flash_bwd_dkdv", "mqa_flash_bwd_dq", "mqa_flash_fwd"]
    for e in calls:
        assert e.invars[1].aval.shape[2] == c.kv_heads  # k operand [B, Skv_pad, KVH, Dp]
    got = grad(q, k, v)
    ref = jax.grad(lambda q, k, v: jnp.sum(reference_jax._attention(
        q, k, v, causal=True, window=20, softcap=None, scale=c.head_dim**-0.5,
        q_segment_ids=None, kv_segment_ids=None) ** 2), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, ref):  # fp32 kernel vs fp32 reference: same math, another order
        r = np.asarray(r, np.float64)
        err, bound = np.abs(np.asarray(g, np.float64) - r).max(), BENCH_RTOL["float32"] * max(1.0, np.abs(r).max())
        assert err <= bound, f"jit(grad) vs the fp32 reference: max error {err:.3e} > {bound:.3e}"


@pytest.mark.parametrize("kwargs", [dict(block_q=48), dict(block_k=8), dict(num_warps=3),
                                    dict(num_stages=0)], ids=lambda kw: next(iter(kw)))
def test_blocks_validated(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PallasAttentionBlocks(**kwargs)


@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
def test_gpu_default_blocks_are_gpu_sized(head_dim):
    b = default_blocks(head_dim, interpret=False)
    assert 64 <= b.block_q <= 128 and 64 <= b.block_k <= 128 and 4 <= b.num_warps <= 8


def test_lowers_to_triton_for_cuda():
    """The compiled (non-interpret) path lowers all three kernels to Triton IR for CUDA,
    checked without a GPU by exporting the jitted gradient for the "cuda" platform."""
    from jax import export

    c = Case(4, 1, 100, 257, 80, BF16, window=33, softcap=5.0, segments=True)
    q, k, v, _, ids = make_inputs(np.random.default_rng(0), c)

    def loss(q, k, v, q_ids, kv_ids):
        o = attention_pallas(q, k, v, causal=False, window=33, softcap=5.0, scale=0.1,
                             q_segment_ids=q_ids, kv_segment_ids=kv_ids, interpret=False,
                             blocks=default_blocks(c.head_dim, interpret=False))
        return o.astype(jnp.float32).sum()

    triton_call = "__gpu$xla.gpu.triton"
    exported = export.export(
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=("cuda",),
        disabled_checks=[export.DisabledSafetyCheck.custom_call(triton_call)],
    )(q, k, v, *map(jnp.asarray, ids))
    targets = re.findall(r"custom_call @(\S+)\(", exported.mlir_module())
    assert sorted(t for t in targets if "triton" in t) == [triton_call] * 3, targets
