"""Cases found by mutating the TPU Pallas kernels (kernels/attention/pallas_tpu*.py,
kernels/decode/pallas_tpu_decode.py, kernels/decode/pallas_tpu_paged_decode.py): each test
below fails with the mutation named in its docstring and passes without it, while the
existing pallas_tpu tests pass with it. TPU interpret mode (a CPU simulator), tiny shapes.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from attention_cases import AttentionCase, make_inputs, torch_truth

from kernels import jax_ops
from kernels.attention import pallas_tpu, reference_jax
from kernels.attention.pallas_tpu import DEFAULT_BLOCKS
from kernels.decode import pallas_tpu_paged_decode
from kernels.decode import reference as decode_reference
from kernels.decode import reference_jax as decode_reference_jax
from kernels.decode.pallas_tpu_decode import TpuDecodeBlocks, decode_attention_pallas_tpu
from kernels.decode.pallas_tpu_paged_decode import TpuPagedBlocks, paged_decode_attention_pallas_tpu

from conftest import assert_close

F32 = jnp.dtype(jnp.float32)


def _forward(q, k, v, c: AttentionCase):
    """The forward kernel alone: (o [B, Sq, H, D], lse [B, KVH, Sq * G, 1])."""
    cfg = pallas_tpu._Config(causal=c.causal, window=c.window, softcap=c.softcap,
                             scale=c.flags["scale"], blocks=DEFAULT_BLOCKS,
                             interpret=pallas_tpu.default_interpret())
    return jax.jit(pallas_tpu._forward, static_argnums=5)(q, k, v, None, None, cfg)


def _lse64(q, k, c: AttentionCase):
    """float64 natural-log lse [B, KVH, Sq * G] in the folded row order (row r = s * G + g);
    +inf where a query sees no key, and the same in float32 (the same-precision baseline)."""
    mask = np.asarray(reference_jax.attention_mask(c.q_len, c.kv_len, causal=c.causal,
                                                   window=c.window))[0]
    out = []
    for dt in (np.float64, np.float32):
        qq, kk = np.asarray(q, dt), np.asarray(k, dt)
        g = c.heads // c.kv_heads
        kk = np.repeat(kk, g, axis=2)  # [B, Skv, H, D]: head h reads kv head h // G
        s = np.einsum("bqhd,bkhd->bhqk", qq, kk) * dt(c.flags["scale"])
        s = np.where(mask, s, -np.inf)
        m = s.max(-1, keepdims=True)
        m_safe = np.where(np.isfinite(m), m, 0)
        with np.errstate(divide="ignore"):  # log(0) = -inf for rows without keys: replaced below
            lse = np.log(np.exp(s - m_safe).sum(-1)) + m_safe[..., 0]  # [B, H, Sq]
        lse = np.where(mask.any(-1)[None, None], lse, np.inf)
        b = lse.shape[0]
        lse = lse.reshape(b, c.kv_heads, g, c.q_len).transpose(0, 1, 3, 2).reshape(b, c.kv_heads, -1)
        out.append(lse)
    return out


def test_forward_lse_is_plus_inf_for_rows_without_keys(rng):
    """Sq > Skv, causal, GQA: the first 30 queries see no key. The forward's lse (the ring
    merge's input and the backward's) must be +inf there (p = exp(s - lse) = 0) and the float64
    lse elsewhere. Catches, in pallas_tpu_kernels.fwd_kernel, ``jnp.where(seen, ..., -jnp.inf)``
    for ``jnp.inf``: the gradient tests mask those rows again in the backward, so they pass."""
    c = AttentionCase(4, 2, 130, 100, 64, F32, causal=True)
    q, k, v, do, ids = make_inputs(rng, c)
    _, lse = _forward(q, k, v, c)
    lse = np.asarray(lse)[..., 0]
    ref64, base32 = _lse64(q, k, c)
    empty = np.isinf(ref64)
    assert empty.sum() == 30 * c.heads  # B=1: 30 queries x 4 heads
    assert np.all(lse[empty] == np.inf), "rows that see no key must have lse = +inf"
    assert_close(lse[~empty], ref64[~empty], base32[~empty], F32, "lse")


def _far_negative_inputs(rng, c: AttentionCase):
    """q against k gives scores near -200 for every key (exp underflows fp32 unless the
    running max is subtracted); v random."""
    q, k, v, do, ids = make_inputs(rng, c)
    q = jnp.asarray(-6.25 + 0.3 * rng.standard_normal(q.shape), c.dtype)
    k = jnp.asarray(4.0 + 0.3 * rng.standard_normal(k.shape), c.dtype)
    return q, k, v, do, ids


def test_attention_scores_far_below_zero(rng):
    """Every score of every row near -200 (scale * q.k, head_dim 64): softmax is shift
    invariant, so the output is an ordinary average of V. Catches, in fwd_kernel's init,
    ``m_ref[...] = jnp.zeros(...)`` for ``jnp.full(..., -jnp.inf)``: exp(s - max(0, s)) underflows
    to 0 in fp32, every l is 0 and the output is all zeros; random inputs (|s| of a few units)
    never show it."""
    c = AttentionCase(2, 1, 8, 200, 64, F32)
    q, k, v, do, ids = _far_negative_inputs(rng, c)
    f = c.flags
    out = jax_ops.attention(q, k, v, scale=f["scale"], impl="pallas_tpu")
    ref64 = torch_truth(q, k, v, do, ids, **f)[0]
    base = reference_jax._attention(q, k, v, q_segment_ids=None, kv_segment_ids=None, upcast=False, **f)
    assert_close(out, ref64, base, c.dtype, "out")


def test_decode_scores_far_below_zero(rng):
    """The decode kernel's online softmax with every score near -200 (see the attention case).
    Catches, in pallas_tpu_decode._row_steps, ``m_ref[...] = jnp.zeros(...)`` for
    ``jnp.full(..., -jnp.inf)`` (the output is all zeros)."""
    b, h, kvh, t, d = 2, 4, 2, 200, 64
    q = jnp.asarray(-6.25 + 0.3 * rng.standard_normal((b, h, d)), F32)
    k = jnp.asarray(4.0 + 0.3 * rng.standard_normal((b, t, kvh, d)), F32)
    v = jnp.asarray(rng.standard_normal((b, t, kvh, d)), F32)
    lens = jnp.asarray([t, 131], jnp.int32)
    scale = d**-0.5
    out = jax_ops.decode_attention(q, k, v, lens, impl="pallas_tpu")
    t64 = [torch.tensor(np.asarray(x, np.float64)) for x in (q, k, v)]
    ref64 = decode_reference._decode(*t64, torch.tensor(np.asarray(lens)), window=None, softcap=None,
                                     scale=scale)
    base = decode_reference_jax._decode(q, k, v, lens, window=None, softcap=None, scale=scale,
                                        upcast=False)
    assert_close(out, ref64, base, F32, "decode out")


@pytest.mark.parametrize("block_kv", [0, -128, 64, True])
def test_decode_blocks_refuse_non_positive_or_off_lane(block_kv):
    """TpuDecodeBlocks(block_kv) must be a positive multiple of 128. Catches dropping
    ``b < LANES`` from the check (0 and -128 are multiples of 128 and were accepted)."""
    with pytest.raises(ValueError, match="block_kv must be a positive multiple of 128"):
        TpuDecodeBlocks(block_kv)


@pytest.mark.parametrize("n", [0, 17, -1, True, 2.0])
def test_paged_blocks_refuse_pages_per_block_out_of_range(n):
    """TpuPagedBlocks(pages_per_block) is an int in [1, 16]; 1 and 16 are taken. Catches the
    upper bound moved to 17."""
    with pytest.raises(ValueError, match=r"pages_per_block must be an int in \[1, 16\]"):
        TpuPagedBlocks(n)
    assert TpuPagedBlocks(1).pages_per_block == 1 and TpuPagedBlocks(16).pages_per_block == 16


def test_decode_clamps_traced_lengths(rng):
    """Under jax.jit the lengths are tracers (no host check, spec.py): the kernel clamps them into
    [0, max_len]. A length past max_len (200, not a multiple of the 128-key tile: the edge tile's
    rows past the cache are garbage) with a window, and a negative one, give the results of
    max_len and 0. Catches removing ``jnp.clip`` of the lengths in pallas_tpu_decode._decode
    (the window's edge moves with the unclamped length)."""
    b, h, kvh, t, d = 3, 4, 2, 200, 64
    q = jnp.asarray(rng.standard_normal((b, h, d)), F32)
    k, v = (jnp.asarray(rng.standard_normal((b, t, kvh, d)), F32) for _ in range(2))
    fn = jax.jit(lambda n: jax_ops.decode_attention(q, k, v, n, window=70, impl="pallas_tpu"))
    over = np.asarray(fn(jnp.asarray([t + 37, -5, 77], jnp.int32)))
    clamped = np.asarray(fn(jnp.asarray([t, 0, 77], jnp.int32)))
    assert np.all(clamped[1] == 0)
    np.testing.assert_array_equal(over, clamped)


def test_paged_decode_clamps_traced_lengths(rng):
    """The paged kernel clamps traced lengths into [0, pages_per_row * page_size], not into the
    pool's size: with a window, a length past max_len must act as max_len. Catches
    ``max_len=n_pages * page`` for ``pages_per_row * page`` in paged_decode_attention_pallas_tpu
    (the window's first page and edge move with the length clamped to the larger bound)."""
    b, h, kvh, d, page, per_row = 2, 4, 2, 64, 16, 4
    n_pages = b * per_row + 3
    q = jnp.asarray(rng.standard_normal((b, h, d)), F32)
    kp, vp = (jnp.asarray(rng.standard_normal((n_pages, page, kvh, d)), F32) for _ in range(2))
    table = jnp.asarray(rng.permutation(n_pages)[:b * per_row].reshape(b, per_row), jnp.int32)
    fn = jax.jit(lambda n: jax_ops.decode_attention(q, kp, vp, n, block_table=table, window=20,
                                                    impl="pallas_tpu"))
    max_len = per_row * page
    over = np.asarray(fn(jnp.asarray([max_len + 21, -3], jnp.int32)))
    clamped = np.asarray(fn(jnp.asarray([max_len, 0], jnp.int32)))
    assert np.all(clamped[1] == 0)
    np.testing.assert_array_equal(over, clamped)


class _Table:
    """A scalar-prefetched 1-D block table that fails on an out-of-range read."""

    def __init__(self, n):
        self.a = np.arange(n, dtype=np.int32)

    def __getitem__(self, idx):
        idx = int(idx)
        assert 0 <= idx < len(self.a), f"block table read at {idx}, outside [0, {len(self.a)})"
        return self.a[idx]


@pytest.mark.parametrize("n,window", [(3, 8), (3, 1), (4, 9), (2, 3)])
def test_paged_index_map_reads_only_its_rows_table_entries(n, window):
    """Walk the grid (every row length, step and page slot) with a short window, where a slot's
    first visible step lies past the row's last page: every table read must be one of the row's
    own entries (b * pages_per_row + p, p < pages_per_row), else the last row reads past the
    table in SMEM. Catches dropping the clamp ``jnp.minimum(jc * n + i, pages_per_row - 1)`` in
    pallas_tpu_paged_decode._page (the existing walk uses windows of 20 and 45 pages, where no
    slot's clamped step lands past the row)."""
    page, per_row = 8, 7
    lens = np.arange(page * per_row + 1, dtype=np.int32)
    table = _Table(len(lens) * per_row)
    s = pallas_tpu_paged_decode._Statics(
        max_len=page * per_row, head_dim=128, heads_per_block=1, block_kv=page, window=window,
        softcap=None, scale=1.0, interpret=False, pages_per_block=n, pages_per_row=per_row,
        num_pages=1 << 20)
    for b in range(len(lens)):
        for j in range(-(-per_row // n)):
            for i in range(n):
                p = int(pallas_tpu_paged_decode._page(b, j, i, lens, table, s)) - b * per_row
                assert 0 <= p < per_row, (int(lens[b]), j, i, p)


def test_segment_ids_mask_tiles_inside_the_causal_band(rng):
    """Causal with segment ids, 256 x 256 on 128-tiles: tile pair (q tile 1, kv tile 0) lies
    wholly inside the causal band, so without segment ids it runs unmasked; with them it must
    still mask (segment ids mask but never skip or unmask). Forward and backward against
    float64. Catches dropping ``& (not t.has_segments)`` from block_ranges' ``full``: the
    existing segment cases (window 40 < a tile, or kv_len 100 < a tile) have no full tile."""
    from test_attention_pallas_tpu import _baseline
    from attention_cases import jax_vjp

    c = AttentionCase(2, 1, 256, 256, 64, F32, causal=True, segments=True)
    q, k, v, do, ids = make_inputs(rng, c)
    f = c.flags
    kernel = jax_vjp(lambda q, k, v: jax_ops.attention(
        q, k, v, causal=True, scale=f["scale"], segment_ids=ids, impl="pallas_tpu"), q, k, v, do)
    truth = torch_truth(q, k, v, do, ids, **f)
    for what, out, ref64, base in zip(("out", "dq", "dk", "dv"), kernel, truth,
                                      _baseline(q, k, v, do, ids, **f)):
        assert_close(out, ref64, base, c.dtype, what)


def _dma_sequence(index):
    """The block indices a grid walk DMAs: an index map's values, consecutive repeats dropped."""
    return [x for n, x in enumerate(index) if n == 0 or x != index[n - 1]]


@pytest.mark.parametrize("q_len,kv_len,group,causal,window", [
    (300, 300, 2, True, 40), (100, 400, 1, True, None), (257, 257, 1, False, 3), (50, 400, 3, False, 70)])
def test_attention_index_maps_fetch_only_visible_tiles(q_len, kv_len, group, causal, window):
    """Walk the inner grid axis of each kernel (forward / dQ: kv tiles per q tile; dK/dV: q tiles
    per kv tile) through ``clamp_block`` and the host tables: the tiles DMA'd are exactly the
    visible ones, in order (a skipped step re-uses the resident block: no DMA, never an index
    past the last tile). Catches ``jnp.maximum(hi, lo)`` for ``jnp.maximum(hi - 1, lo)`` in
    clamp_block: steps past the band fetch tile hi (index nk, past the array, on the last q
    tile); interpret mode hides it since their compute is skipped."""
    from kernels.attention.pallas_tpu_kernels import TpuTileStatics, block_ranges, clamp_block

    bq = bk = 128
    t = TpuTileStatics(q_len=q_len, kv_len=kv_len, group=group, block_q=bq, block_kv=bk,
                       block_kv_compute=128, causal=causal, window=window, softcap=None,
                       scale=1.0, has_segments=False, kv_padded=kv_len % bk != 0)
    nq, nk = -(-q_len * group // bq), -(-kv_len // bk)
    (kv_lo, kv_hi, _, _), (q_lo, q_hi, _, _) = block_ranges(t, nq, nk)
    for lo, hi, n_outer, n_inner in ((kv_lo, kv_hi, nq, nk), (q_lo, q_hi, nk, nq)):
        for o in range(n_outer):
            seq = [int(clamp_block(x, lo, hi, o)) for x in range(n_inner)]
            visible = list(range(lo[o], hi[o]))
            assert _dma_sequence(seq) == (visible or seq[:1]), (o, seq, visible)
            assert all(0 <= x < n_inner for x in seq), (o, seq)


@pytest.mark.parametrize("window", [None, 1, 100, 129])
def test_decode_index_map_fetches_only_visible_tiles(window):
    """The contiguous decode's K/V index_map (``_kv_block``) over every row length of a 300-slot
    cache on 128-slot tiles: the tiles DMA'd are the row's visible ones in order, and a skipped
    step never names a tile past the cache. Catches ``jnp.maximum(hi, lo)`` for
    ``jnp.maximum(hi - 1, lo)`` in _kv_block (an extra DMA of tile hi, index 3 of a 3-tile cache
    for a full row), which the output cannot show (the step's compute is skipped)."""
    from kernels.decode import pallas_tpu_decode

    t, bk = 300, 128
    s = pallas_tpu_decode._Statics(max_len=t, head_dim=128, heads_per_block=1, block_kv=bk,
                                   window=window, softcap=None, scale=1.0, interpret=False)
    nb = -(-t // bk)
    lens = np.arange(t + 1, dtype=np.int32)
    for b, L in enumerate(lens):
        seq = [int(pallas_tpu_decode._kv_block(b, j, lens, s)) for j in range(nb)]
        lo = 0 if window is None else max(int(L) - window, 0) // bk
        visible = list(range(lo, -(-int(L) // bk)))
        assert _dma_sequence(seq) == (visible or seq[:1]), (int(L), seq, visible)
        assert all(0 <= x < nb for x in seq), (int(L), seq)
