"""Triton flash attention vs the float64 reference, forward and backward (interpreter on CPU).

Accuracy rule from conftest: error vs float64 <= 2x the error of torch doing the same math in
the same precision, plus a small floor. bf16 is left out: the interpreter's bf16 tl.dot is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from kernels import torch_ops
from kernels.attention import triton_attention
from kernels.attention.reference import _attention
from kernels.attention.triton_attention import TritonAttentionBlocks, attention_triton

from conftest import assert_close

# Triton 3.6's interpreter converts its 1-element scalar arrays with int() (numpy deprecation).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


@dataclass(frozen=True)
class Case:
    batch: int
    q_len: int
    kv_len: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool = False
    window: int | None = None
    softcap: float | None = None
    segments: bool = False

    @property
    def id(self) -> str:
        kind = "mqa" if self.kv_heads == 1 else "mha" if self.kv_heads == self.heads else "gqa"
        flags = [n for n, on in (("causal", self.causal), (f"win{self.window}", self.window),
                                 (f"cap{self.softcap}", self.softcap), ("seg", self.segments)) if on]
        return "-".join([f"{kind}{self.heads}x{self.kv_heads}", f"{self.q_len}x{self.kv_len}",
                         f"d{self.head_dim}", *flags])


CASES = [
    Case(1, 1, 1, 2, 1, 64),
    Case(1, 17, 17, 4, 1, 64),
    Case(1, 100, 257, 4, 2, 80, causal=True),
    Case(1, 257, 100, 2, 2, 64, causal=True),  # Sq > Skv: the first 157 queries see no key
    Case(1, 1, 100, 8, 1, 128, causal=True),  # decode-like
    Case(1, 100, 100, 4, 2, 64, window=20),
    Case(1, 100, 257, 4, 1, 128, softcap=5.0, causal=True),
    Case(2, 100, 100, 4, 2, 64, causal=True, segments=True),
    Case(1, 17, 100, 4, 4, 80, window=33, softcap=2.0, segments=True),
    Case(1, 64, 64, 2, 1, 256, causal=True),
]


def _segments(rng, batch, length, n_segments=3):
    """Sorted random segment ids [batch, length] (packed sequences)."""
    cuts = np.sort(rng.integers(0, length, size=(batch, n_segments - 1)), axis=1)
    pos = np.arange(length)[None, :, None]
    return torch.from_numpy((pos >= cuts[:, None, :]).sum(-1).astype(np.int32))


def _inputs(rng, case: Case):
    shape_q = (case.batch, case.q_len, case.heads, case.head_dim)
    shape_kv = (case.batch, case.kv_len, case.kv_heads, case.head_dim)
    q, k, v = (torch.from_numpy(rng.standard_normal(s)) for s in (shape_q, shape_kv, shape_kv))
    do = torch.from_numpy(rng.standard_normal(shape_q))
    q_ids = kv_ids = None
    if case.segments:
        q_ids, kv_ids = _segments(rng, case.batch, case.q_len), _segments(rng, case.batch, case.kv_len)
    kwargs = dict(causal=case.causal, window=case.window, softcap=case.softcap,
                  scale=case.head_dim ** -0.5, q_segment_ids=q_ids, kv_segment_ids=kv_ids)
    return (q, k, v), do, kwargs


def _run(fn, tensors, do, dtype, **kwargs):
    """(out, dq, dk, dv) of fn on leaf copies of tensors cast to dtype."""
    leaves = [t.to(dtype).detach().requires_grad_() for t in tensors]
    out = fn(*leaves, **kwargs)
    out.backward(do.to(dtype))
    return (out.detach(), *(t.grad for t in leaves))


def _check_against_reference(tensors, do, dtype, kwargs, *, blocks=None):
    ref = _run(_attention, tensors, do, torch.float64, **kwargs)
    base = _run(_attention, tensors, do, dtype, upcast=False, **kwargs)
    got = _run(attention_triton, tensors, do, dtype, blocks=blocks, **kwargs)
    for name, g, r, b in zip(("out", "dq", "dk", "dv"), got, ref, base):
        assert g.dtype == dtype, f"{name} dtype {g.dtype} != {dtype}"
        assert_close(g, r, b, dtype, name)
    return got, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_reference(rng, case, dtype):
    tensors, do, kwargs = _inputs(rng, case)
    _check_against_reference(tensors, do, dtype, kwargs)


@pytest.mark.parametrize("blocks", [TritonAttentionBlocks(16, 16, 4, 1), TritonAttentionBlocks(64, 16, 4, 1),
                                    TritonAttentionBlocks(16, 64, 4, 1),
                                    TritonAttentionBlocks(16, 32, 4, 1, dq_block_m=32, dq_block_n=16)],
                         ids=["16x16", "64x16", "16x64", "dkdv16x32-dq32x16"])
def test_block_shapes(rng, blocks):
    """Many small tiles: exercises the masked / unmasked loop split and the block skipping."""
    case = Case(1, 70, 90, 4, 2, 64, window=24, causal=True)
    tensors, do, kwargs = _inputs(rng, case)
    _check_against_reference(tensors, do, torch.float32, kwargs, blocks=blocks)


@pytest.mark.parametrize("causal", [False, True], ids=["window", "causal-window"])
def test_window_edge_on_a_row_block_boundary(rng, causal):
    """window 31 = -1 mod block_m (MHA: one query per folded row): the dK/dV pass's unmasked
    row blocks for key block n end at row n + 16, just short of query n + 31, which must not
    see key n; one row block more left unmasked lets it see key n (caught in dK)."""
    case = Case(1, 48, 48, 2, 2, 16, causal=causal, window=31)
    tensors, do, kwargs = _inputs(rng, case)
    _check_against_reference(tensors, do, torch.float32, kwargs, blocks=TritonAttentionBlocks(16, 16, 4, 1))


# 16x16 tiles, MHA (one query per row): causal shift 14 = -2 and 1 mod 16 and a window of
# 2 mod 16 put a query or a window edge next to a block edge, where an off-by-one in a skip or
# unmasked-range bound changes the result (forward full_hi / window lo, dK/dV lo / hi, dQ)
RESIDUE_CASES = [Case(1, 32, 46, 1, 1, 16, causal=True), Case(1, 32, 33, 1, 1, 16, causal=True),
                 Case(1, 48, 48, 1, 1, 16, causal=True, window=18)]


@pytest.mark.parametrize("case", RESIDUE_CASES, ids=[c.id for c in RESIDUE_CASES])
def test_bounds_at_block_residues(rng, case):
    tensors, do, kwargs = _inputs(rng, case)
    _check_against_reference(tensors, do, torch.float32, kwargs, blocks=TritonAttentionBlocks(16, 16, 4, 1))


@pytest.mark.parametrize("splits", [1, 3], ids=["splits1", "splits3"])
@pytest.mark.parametrize("case", [Case(1, 40, 70, 4, 2, 80, causal=True), Case(2, 40, 40, 4, 2, 64, causal=True,
                                                                                 segments=True),
                                  Case(1, 30, 50, 8, 1, 64, window=24, causal=True)],
                         ids=lambda c: c.id)
def test_dkdv_splits(rng, case, splits):
    """The dk/dv pass over interleaved row blocks (fp32 partials summed after), pinned to one
    program per key block and to three (the CPU default is two): same float64 agreement.
    Five to fifteen 16-row folded blocks a program (GQA, MQA; head_dim 80 masked, segments, a
    window), so three splits take uneven shares: the interpreter's time goes by tiles, and
    these shapes have a ninth of CASES[2]'s."""
    tensors, do, kwargs = _inputs(rng, case)
    _check_against_reference(tensors, do, torch.float32, kwargs,
                             blocks=TritonAttentionBlocks(16, 16, 4, 1, dkdv_splits=splits))


@pytest.mark.parametrize("case,splits", [(CASES[6], 2), (CASES[8], 1), (CASES[8], 2), (CASES[9], 1), (CASES[9], 2)],
                         ids=lambda v: v.id if isinstance(v, Case) else f"splits{v}")
def test_dkdv_in_two_passes(rng, case, splits):
    """dV and dK in two launches of the dk/dv kernel (one accumulator each): the same float64
    agreement, with softcap, windows and segments, MQA and GQA, head_dim 256."""
    tensors, do, kwargs = _inputs(rng, case)
    before = triton_attention.LAUNCHES["_attn_bwd_dkdv_kernel"]
    blocks = TritonAttentionBlocks(16, 32, 4, 1, dkdv_splits=splits, dkdv_passes=2, dq_block_m=32)
    _check_against_reference(tensors, do, torch.float32, kwargs, blocks=blocks)
    assert triton_attention.LAUNCHES["_attn_bwd_dkdv_kernel"] == before + 2


@pytest.mark.parametrize("case,passes,splits,dtype",
                         [(CASES[3], 1, 3, torch.float32), (CASES[6], 1, 2, torch.float16),
                          (CASES[8], 2, 2, torch.float16), (CASES[9], 2, 2, torch.float32)],
                         ids=lambda v: v.id if isinstance(v, Case) else str(v).replace("torch.", ""))
def test_dq_by_atomics_from_the_dkdv_pass(rng, case, passes, splits, dtype):
    """dq_atomic (FlashAttention 2/3's five GEMMs): the dK/dV pass (its dK launch with two
    passes) adds dS K into an fp32 dQ over its key blocks and splits; no dQ kernel runs, and
    dQ meets the float64 rule, rows that see no key (Sq > Skv) included."""
    tensors, do, kwargs = _inputs(rng, case)
    before = dict(triton_attention.LAUNCHES)
    blocks = TritonAttentionBlocks(16, 32, 4, 1, dkdv_splits=splits, dkdv_passes=passes, dq_atomic=True)
    _check_against_reference(tensors, do, dtype, kwargs, blocks=blocks)
    assert triton_attention.LAUNCHES["_attn_bwd_dkdv_kernel"] == before.get("_attn_bwd_dkdv_kernel", 0) + passes
    assert triton_attention.LAUNCHES["_attn_bwd_dq_kernel"] == before.get("_attn_bwd_dq_kernel", 0)


@pytest.mark.parametrize("case,blocks,dtype", [
    (Case(1, 40, 70, 4, 2, 80, causal=True), TritonAttentionBlocks(16, 16, 4, 1, dkdv_per_head=True), torch.float32),
    (Case(2, 40, 40, 4, 2, 64, causal=True, segments=True),
     TritonAttentionBlocks(16, 32, 4, 1, dkdv_per_head=True, dq_atomic=True), torch.float16),
    (Case(1, 30, 50, 8, 1, 64, window=24, causal=True, softcap=5.0),
     TritonAttentionBlocks(16, 16, 4, 1, dkdv_per_head=True, dkdv_passes=2, dq_atomic=True), torch.float32),
    (Case(1, 57, 30, 4, 1, 64, causal=True), TritonAttentionBlocks(16, 16, 4, 1, dkdv_per_head=True), torch.float16),
    (CASES[0], TritonAttentionBlocks(16, 16, 4, 1, dkdv_per_head=True), torch.float32),
    (CASES[8], TritonAttentionBlocks(16, 32, 4, 1, dkdv_per_head=True), torch.float32),
    (CASES[9], TritonAttentionBlocks(16, 32, 4, 1, dkdv_passes=2, dq_block_m=32, dq_block_n=16, dkdv_per_head=True),
     torch.float16),  # head_dim 256, the nano1 candidate's two passes and own dQ tile
], ids=lambda v: v.id if isinstance(v, Case) else str(v)[6:] if isinstance(v, torch.dtype) else
    f"{v.block_m}x{v.block_n}" + "-atomic-dq" * v.dq_atomic + "-two-pass" * (v.dkdv_passes == 2))
def test_dkdv_per_query_head(rng, case, blocks, dtype):
    """dkdv_per_head: one dK/dV program per query head and key block, looping over that head's
    positions (bounds in positions, lse/delta gathered from the folded rows), G fp32 partials
    summed: the same float64 agreement on GQA/MQA/MHA, causal with Sq < and > Skv, window,
    softcap, segments, length 1, dQ by atomics, two passes."""
    tensors, do, kwargs = _inputs(rng, case)
    before = triton_attention.LAUNCHES["_attn_bwd_dkdv_kernel"]
    _check_against_reference(tensors, do, dtype, kwargs, blocks=blocks)
    assert triton_attention.LAUNCHES["_attn_bwd_dkdv_kernel"] == before + blocks.dkdv_passes


def test_dkdv_splits_follow_the_device():
    from kernels.attention.triton_attention import dkdv_splits

    assert dkdv_splits(256, 2048, 132) == 2  # MQA b2 at 8k, 64-key blocks: two waves
    assert dkdv_splits(4096, 2048, 132) == 1  # enough programs already
    assert dkdv_splits(1, 40, 132) == 10  # each split keeps >= 4 row blocks
    assert dkdv_splits(1, 10**6, 132) == 16  # capped
    assert dkdv_splits(8, 1, None) == 1 and dkdv_splits(8, 5, None) == 2  # interpreter


def test_rows_that_see_no_key_are_zero(rng):
    """Queries whose segment has no key give zero output and zero, finite grads."""
    case = Case(1, 40, 40, 4, 2, 64, causal=True)
    tensors, do, kwargs = _inputs(rng, case)
    q_ids = torch.zeros(1, 40, dtype=torch.int64)
    q_ids[:, 10:20] = 7  # no key has segment 7
    kwargs.update(q_segment_ids=q_ids, kv_segment_ids=torch.zeros(1, 40, dtype=torch.int64))
    (out, dq, dk, dv), _ = _check_against_reference(tensors, do, torch.float32, kwargs)
    assert torch.all(out[:, 10:20] == 0)
    assert torch.all(dq[:, 10:20] == 0)
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))


def test_non_contiguous_inputs(rng):
    """Arbitrary strides: permuted q with a strided head_dim, kv heads sliced from a wider tensor."""
    b, sq, skv, h, kvh, d = 2, 33, 47, 4, 2, 64
    q_base = torch.from_numpy(rng.standard_normal((b, h, sq, 2 * d)))
    kv_base = torch.from_numpy(rng.standard_normal((2, b, skv, 2 * kvh, d)))
    do = torch.from_numpy(rng.standard_normal((b, h, sq, d))).transpose(1, 2)
    kwargs = dict(causal=True, window=None, softcap=None, scale=d ** -0.5,
                  q_segment_ids=None, kv_segment_ids=None)

    def views(qb, kvb):
        return qb.transpose(1, 2)[..., ::2], kvb[0, :, :, ::2], kvb[1, :, :, 1::2]

    def run(fn, dtype, **extra):
        qb, kvb = (t.to(dtype).detach().requires_grad_() for t in (q_base, kv_base))
        q, k, v = views(qb, kvb)
        assert not any(t.is_contiguous() for t in (q, k, v))
        out = fn(q, k, v, **kwargs, **extra)
        out.backward(do.to(dtype))  # dO non-contiguous too
        dq, dk, dv = views(qb.grad, kvb.grad)
        return out.detach(), dq, dk, dv

    ref, base = run(_attention, torch.float64), run(_attention, torch.float32, upcast=False)
    for name, g, r, bl in zip(("out", "dq", "dk", "dv"), run(attention_triton, torch.float32), ref, base):
        assert_close(g, r, bl, torch.float32, name)


def test_dispatch_runs_triton_kernels(rng):
    """torch_ops.attention(impl="triton") goes through the custom op and launches the kernels."""
    tensors, do, _ = _inputs(rng, Case(1, 9, 9, 2, 1, 64))
    q, k, v = (t.float().requires_grad_() for t in tensors)
    before = dict(triton_attention.LAUNCHES)
    out = torch_ops.attention(q, k, v, causal=True, impl="triton")
    assert out.grad_fn is not None and "flash_attention" in out.grad_fn.name()
    out.backward(do.float())
    for name in ("_attn_fwd_kernel", "_attn_bwd_preprocess_kernel", "_attn_bwd_dkdv_kernel",
                 "_attn_bwd_dq_kernel"):
        assert triton_attention.LAUNCHES[name] == before.get(name, 0) + 1, name
    assert hasattr(torch.ops.gemini_kernels, "flash_attention_fwd")


def test_blocks_through_torch_ops(rng):
    """torch_ops.attention passes ``blocks`` to the Triton impl and refuses it for the others."""
    tensors, do, _ = _inputs(rng, Case(1, 9, 9, 2, 1, 64))
    q, k, v = (t.float().requires_grad_() for t in tensors)
    before = triton_attention.LAUNCHES["_attn_bwd_dkdv_kernel"]
    blocks = TritonAttentionBlocks(16, 16, 4, 1, dkdv_passes=2)
    torch_ops.attention(q, k, v, causal=True, impl="triton", blocks=blocks).backward(do.float())
    assert triton_attention.LAUNCHES["_attn_bwd_dkdv_kernel"] == before + 2
    with pytest.raises(ValueError, match="blocks: only impl='triton'"):
        torch_ops.attention(q, k, v, impl="reference", blocks=blocks)


def test_custom_op_registration(rng):
    """Schema, fake kernel and autograd registration are consistent (what torch.compile relies on)."""
    tensors, _, _ = _inputs(rng, Case(1, 5, 7, 2, 1, 16))
    q, k, v = (t.float().requires_grad_() for t in tensors)
    blocks = TritonAttentionBlocks(16, 16, 4, 1).as_list()
    args = (q, k, v, None, None, True, None, None, 0.25, blocks, blocks)
    torch.library.opcheck(torch.ops.gemini_kernels.flash_attention_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("bad", [dict(block_m=48), dict(block_n=8), dict(num_warps=3), dict(num_stages=0),
                                 dict(dkdv_splits=17), dict(dq_block_m=24), dict(dq_block_n=8),
                                 dict(dkdv_passes=3), dict(dq_atomic=1), dict(dq_atomic=True, dq_block_m=32),
                                 dict(dkdv_per_head=1), dict(dkdv_per_head=True, tma=True),
                                 dict(dkdv_per_head=True, dkdv_splits=2)],
                         ids=["block_m48", "block_n8", "warps3", "stages0", "splits17", "dq_m24", "dq_n8",
                              "passes3", "atomic_int", "atomic_with_dq_tile", "per_head_int", "per_head_tma",
                              "per_head_splits"])
def test_blocks_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TritonAttentionBlocks(**{**dict(block_m=64, block_n=64, num_warps=4, num_stages=2), **bad})


def test_torch_compile_traces_the_custom_op(rng):
    """fullgraph=True: the custom ops (with fake kernels and autograd) trace without graph breaks."""
    tensors, do, kwargs = _inputs(rng, Case(1, 9, 12, 4, 2, 16, causal=True))
    compiled = torch.compile(attention_triton, backend="aot_eager", fullgraph=True)
    got = _run(compiled, tensors, do, torch.float32, **kwargs)
    eager = _run(attention_triton, tensors, do, torch.float32, **kwargs)
    for name, g, e in zip(("out", "dq", "dk", "dv"), got, eager):
        torch.testing.assert_close(g, e, rtol=0, atol=0, msg=name)
