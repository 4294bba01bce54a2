"""Pallas TPU (Mosaic) device code for MQA/GQA flash attention: forward, dK/dV, dQ.

Every grid step sees one (batch, kv head, q tile, kv tile) block, all in VMEM through
BlockSpecs. Queries arrive *folded*: the G query heads of a kv group are the rows of one
matrix [rows = q_len * G, Dp], row r = s * G + g, so one K/V tile serves all G heads and
dK/dV sum over them inside the kernel. The innermost grid axis ("arbitrary") walks the
reduction; accumulators live in VMEM scratch, initialised on its first step and written
out on its last. Which blocks are visible is decided on the host (``block_ranges``) and
scalar-prefetched into SMEM: the index maps clamp into the visible range (so a skipped
step re-uses the resident block: no DMA) and ``pl.when`` skips its compute; tiles wholly
inside the band also skip building the mask.

Layout rules: lanes (last dim) are multiples of 128, sublanes of 8. Per-row vectors (lse,
delta, query positions, segment ids) are [rows, 1] columns for the forward / dQ kernels
and [1, rows] lane-rows for the dK/dV kernel, which works in the transposed orientation
s^T = K Q^T [block_kv, block_q] so that every matmul is a plain or "B-transposed" one.
A row that sees no key gets l == 0: output 0 and lse = +inf, so p = exp(s - lse) = 0.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl


@dataclasses.dataclass(frozen=True)
class TpuTileStatics:
    """Static facts the kernels mask with (true, unpadded sizes) and their tile sizes."""

    q_len: int
    kv_len: int
    group: int  # G = heads // kv_heads; folded rows = q_len * G
    block_q: int  # folded rows per tile
    block_kv: int  # keys per DMA'd K/V tile
    block_kv_compute: int  # keys per inner matmul chunk (divides block_kv)
    causal: bool
    window: int | None
    softcap: float | None
    scale: float
    has_segments: bool
    kv_padded: bool  # kv_len is not a multiple of block_kv: mask the tail

    @property
    def rows(self) -> int:
        return self.q_len * self.group

    @property
    def offset(self) -> int:
        """Query s sits at absolute position s + offset (bottom-right alignment)."""
        return self.kv_len - self.q_len

    @property
    def banded(self) -> bool:
        return self.causal or self.window is not None

    @property
    def masked(self) -> bool:
        return self.banded or self.has_segments or self.kv_padded


def _intervals(m):
    """Per row of bool matrix ``m``: [lo, hi) spanning its True entries ((0, 0) if none)."""
    any_ = m.any(axis=1)
    lo = np.where(any_, m.argmax(axis=1), 0)
    hi = np.where(any_, m.shape[1] - m[:, ::-1].argmax(axis=1), 0)
    return lo.astype(np.int32), hi.astype(np.int32)


def block_ranges(t: TpuTileStatics, num_q_blocks: int, num_kv_blocks: int):
    """Host-side tile tables, int32 numpy, each an interval per tile (the band is convex).

    Returns (fwd, dkdv): fwd = (kv_lo, kv_hi, kv_full_lo, kv_full_hi) per q tile, dkdv =
    (q_lo, q_hi, q_full_lo, q_full_hi) per kv tile. [lo, hi) are the tiles with any visible
    (query, key) pair through the causal / window band; [full_lo, full_hi) those where every
    pair is visible and no mask is needed (never with segment ids or past kv_len).
    Segment ids mask but never skip. Empty intervals are (0, 0).
    """
    bq, bk = t.block_q, t.block_kv
    i = np.arange(num_q_blocks)[:, None]
    p0 = i * bq // t.group + t.offset  # smallest / largest query position in q tile i
    p1 = (np.minimum((i + 1) * bq, t.rows) - 1) // t.group + t.offset
    j = np.arange(num_kv_blocks)[None, :]
    c0, c1 = j * bk, np.minimum((j + 1) * bk, t.kv_len) - 1  # first / last real key of tile j
    some = np.ones((num_q_blocks, num_kv_blocks), bool)
    full = some & ((j + 1) * bk <= t.kv_len) & (not t.has_segments)
    if t.banded:
        some, full = some & (c0 <= p1), full & (c1 <= p0)
    if t.window is not None:
        some, full = some & (c1 > p0 - t.window), full & (c0 > p1 - t.window)
    return _intervals(some) + _intervals(full), _intervals(some.T) + _intervals(full.T)


def clamp_block(idx, lo_ref, hi_ref, outer):  # index_map helper (scalar core)
    """Block index ``idx`` clamped into [lo, hi - 1] of tile ``outer``: skipped steps re-use a block."""
    lo, hi = lo_ref[outer], hi_ref[outer]
    return jnp.minimum(jnp.maximum(idx, lo), jnp.maximum(hi - 1, lo))


def _dot(a, b, *, tb=False):
    """a @ b (or a @ b^T), fp32 accumulation; fp32 inputs at full precision."""
    dims = (((1,), (1 if tb else 0,)), ((), ()))
    prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, dims, precision=prec, preferred_element_type=jnp.float32)


def _visible(pos, cols, q_ids, kv_ids, t: TpuTileStatics):
    """Bool block: query at position ``pos`` may see key ``cols`` (shapes broadcast)."""
    ok = cols < t.kv_len
    if t.banded:
        ok &= cols <= pos
    if t.window is not None:
        ok &= cols > pos - t.window
    if q_ids is not None:
        ok &= q_ids == kv_ids
    return ok


def _softcap(s, t: TpuTileStatics):
    """Soft-capped scores and tanh(s / c) (for the backward), or (s, None)."""
    if t.softcap is None:
        return s, None
    th = jnp.tanh(s / t.softcap)
    return t.softcap * th, th


def _split(refs, n_in: int, t: TpuTileStatics):
    """(inputs, pos_ref, q_ids_ref, kv_ids_ref, rest): the optional refs are None when unused."""
    ins, rest = list(refs[:n_in]), list(refs[n_in:])
    pos = rest.pop(0) if t.banded else None
    qid, kvid = (rest.pop(0), rest.pop(0)) if t.has_segments else (None, None)
    return ins, pos, qid, kvid, rest


def _masked_or_not(compute, visible, full, t: TpuTileStatics):
    """Run ``compute(masked)`` on visible tiles; tiles fully inside the band skip the mask."""
    if not t.masked:
        pl.when(visible)(lambda: compute(False))
        return
    pl.when(visible & full)(lambda: compute(False))
    pl.when(visible & jnp.logical_not(full))(lambda: compute(True))


def fwd_kernel(kv_lo, kv_hi, kv_flo, kv_fhi, *refs, t: TpuTileStatics):
    # q_ref [bq, Dp]; k_ref, v_ref [bk, Dp]; pos / q ids [bq, 1]; kv ids [1, bk]
    # o_ref [bq, Dp]; lse_ref [bq, 1]; scratch m, l [bq, 1], acc [bq, Dp] (fp32)
    (q_ref, k_ref, v_ref), pos_ref, qid_ref, kvid_ref, rest = _split(refs, 3, t)
    o_ref, lse_ref, m_ref, l_ref, acc_ref = rest
    i, j = pl.program_id(2), pl.program_id(3)
    bq, bk, bc = t.block_q, t.block_kv, t.block_kv_compute

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def _compute(masked):
        q = q_ref[...]
        pos = None if pos_ref is None else pos_ref[...]
        q_ids = None if qid_ref is None else qid_ref[...]
        for c in range(bk // bc):  # static: block_kv_compute chunks of the resident tile
            sl = pl.ds(c * bc, bc)
            k, v = k_ref[sl, :], v_ref[sl, :]
            s, _ = _softcap(_dot(q, k, tb=True) * t.scale, t)  # [bq, bc]
            if masked:
                cols = j * bk + c * bc + lax.broadcasted_iota(jnp.int32, (1, bc), 1)
                kv_ids = None if kvid_ref is None else kvid_ref[:, sl]
                s = jnp.where(_visible(pos, cols, q_ids, kv_ids, t), s, -jnp.inf)
            m_prev = m_ref[...]
            m_new = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows with no key yet
            p = jnp.exp(s - m_safe)
            alpha = jnp.exp(m_prev - m_safe)
            l_ref[...] = alpha * l_ref[...] + p.sum(axis=-1, keepdims=True)
            acc_ref[...] = alpha * acc_ref[...] + _dot(p.astype(v.dtype), v)
            m_ref[...] = m_new

    _masked_or_not(_compute, (j >= kv_lo[i]) & (j < kv_hi[i]),
                   (j >= kv_flo[i]) & (j < kv_fhi[i]), t)

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        l = l_ref[...]
        seen = l > 0
        l_safe = jnp.where(seen, l, 1.0)
        o_ref[...] = (acc_ref[...] / l_safe).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(seen, m_ref[...] + jnp.log(l_safe), jnp.inf)


def dkdv_kernel(q_lo, q_hi, q_flo, q_fhi, *refs, t: TpuTileStatics):
    # Transposed orientation: s^T [bk, bq] = K Q^T.
    # q_ref, do_ref [bq, Dp]; lse_ref, delta_ref [1, bq]; k_ref, v_ref [bk, Dp]
    # pos / q ids [1, bq]; kv ids [bk, 1]; dk_ref, dv_ref [bk, Dp]; scratch dk, dv [bk, Dp] fp32
    ins, pos_ref, qid_ref, kvid_ref, rest = _split(refs, 6, t)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
    dk_ref, dv_ref, dk_acc, dv_acc = rest
    j, i = pl.program_id(2), pl.program_id(3)
    bk = t.block_kv

    @pl.when(i == 0)
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    def _compute(masked):
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s, th = _softcap(_dot(k, q, tb=True) * t.scale, t)  # [bk, bq]
        p = jnp.exp(s - lse_ref[...])
        if masked:
            cols = j * bk + lax.broadcasted_iota(jnp.int32, (bk, 1), 0)
            pos = None if pos_ref is None else pos_ref[...]
            q_ids = None if qid_ref is None else qid_ref[...]
            kv_ids = None if kvid_ref is None else kvid_ref[...]
            p = jnp.where(_visible(pos, cols, q_ids, kv_ids, t), p, 0.0)
        dv_acc[...] += _dot(p.astype(do.dtype), do)  # P^T dO
        ds = p * (_dot(v, do, tb=True) - delta_ref[...])  # dS^T = P^T * (V dO^T - delta)
        if th is not None:
            ds = ds * (1.0 - th * th)  # d/ds [c tanh(s/c)]
        dk_acc[...] += _dot(ds.astype(q.dtype), q)  # dS^T Q

    _masked_or_not(_compute, (i >= q_lo[j]) & (i < q_hi[j]), (i >= q_flo[j]) & (i < q_fhi[j]), t)

    @pl.when(i == pl.num_programs(3) - 1)
    def _finish():
        dk_ref[...] = (dk_acc[...] * t.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def dq_kernel(kv_lo, kv_hi, kv_flo, kv_fhi, *refs, t: TpuTileStatics):
    # q_ref, do_ref [bq, Dp]; lse_ref, delta_ref [bq, 1]; k_ref, v_ref [bk, Dp]
    # pos / q ids [bq, 1]; kv ids [1, bk]; dq_ref [bq, Dp]; scratch dq [bq, Dp] fp32
    ins, pos_ref, qid_ref, kvid_ref, rest = _split(refs, 6, t)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
    dq_ref, dq_acc = rest
    i, j = pl.program_id(2), pl.program_id(3)
    bk = t.block_kv

    @pl.when(j == 0)
    def _init():
        dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

    def _compute(masked):
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s, th = _softcap(_dot(q, k, tb=True) * t.scale, t)  # [bq, bk]
        p = jnp.exp(s - lse_ref[...])
        if masked:
            cols = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
            pos = None if pos_ref is None else pos_ref[...]
            q_ids = None if qid_ref is None else qid_ref[...]
            kv_ids = None if kvid_ref is None else kvid_ref[...]
            p = jnp.where(_visible(pos, cols, q_ids, kv_ids, t), p, 0.0)
        ds = p * (_dot(do, v, tb=True) - delta_ref[...])
        if th is not None:
            ds = ds * (1.0 - th * th)
        dq_acc[...] += _dot(ds.astype(k.dtype), k)  # dS K

    _masked_or_not(_compute, (j >= kv_lo[i]) & (j < kv_hi[i]), (j >= kv_flo[i]) & (j < kv_fhi[i]), t)

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = (dq_acc[...] * t.scale).astype(dq_ref.dtype)
