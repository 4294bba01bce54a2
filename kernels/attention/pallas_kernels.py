"""Pallas (Triton-lowered) device code for MQA/GQA flash attention: forward, dK/dV, dQ.

Every kernel sees one (batch, kv head) pair. Queries arrive *folded*: the G query heads of
a kv group are rows of one matrix [rows = q_len * G, D], row r = s * G + g, so a K/V
tile loaded once serves all G heads. K/V are read in their own [B, Skv, KVH, D] layout.
Inputs are padded by the launcher (pallas_attention.py) to block multiples; the true
lengths live in ``TileStatics`` and every tile masks by them. Scores are kept in base 2
(s * log2(e)) so the softmax uses exp2; ``lse`` is stored in that base too.

A row that sees no key gets l == 0: the output is 0 and lse = +inf, so the backward
recomputes p = exp2(s - inf) = 0 and its gradients vanish.

Bidirectional blocks (``has_qend``): each folded row carries q_end, its query's last visible
key position (non-decreasing in the query, >= its causal position; ``reference_jax.
bidirectional_q_end``), used in place of s + offset in every mask. The forward and dQ tiles
bound their key range by the tile's min / max q_end; the dK/dV tiles get four query counts
per key block from the launcher (``QEND_COUNTS``: searchsorted over q_end, jnp).
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

LOG2E = math.log2(math.e)
LANES = 16  # each dK/dV query count is broadcast over LANES int32s (a legal tile to load)
QEND_COUNTS = 4  # per key block: queries with q_end < c_first, c_first + bk - 1, c_last + W, c_first + W


@dataclasses.dataclass(frozen=True)
class TileStatics:
    """Static facts a kernel masks and bounds its loops with (true, unpadded sizes)."""

    q_len: int
    kv_len: int
    group: int  # G = heads // kv_heads; folded rows = q_len * group
    block_q: int  # folded rows per tile
    block_k: int
    causal: bool
    window: int | None
    softcap: float | None
    scale: float
    has_segments: bool
    has_qend: bool = False  # bidirectional blocks: row positions from q_end (needs causal)

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


def _dot(a, b, *, ta=False, tb=False):
    """a @ b with optional transposes, fp32 accumulation; fp32 inputs at full precision."""
    dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
    prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, dims, precision=prec, preferred_element_type=jnp.float32)


def _cdiv(a, b: int):
    return lax.div(a + (b - 1), b)  # a >= 0


def _tile_positions(i, t: TileStatics, pos=None):
    """(smallest, largest) query position of q tile i; ``pos`` overrides (q_end's min, max)."""
    if pos is not None:
        return pos
    r_first = i * t.block_q
    r_last = jnp.minimum(r_first + t.block_q, t.rows) - 1
    return lax.div(r_first, t.group) + t.offset, lax.div(r_last, t.group) + t.offset


def _kv_block_range(i, t: TileStatics, num_k_blocks: int, pos=None):
    """[lo, hi) of the K/V blocks that q tile i can see; fully masked blocks are skipped."""
    if not t.banded:
        return 0, num_k_blocks
    pos_first, pos_last = _tile_positions(i, t, pos)
    hi = jnp.clip(_cdiv(jnp.maximum(pos_last + 1, 0), t.block_k), 0, num_k_blocks)
    lo = 0
    if t.window is not None:
        lo = lax.div(jnp.maximum(pos_first - t.window + 1, 0), t.block_k)
    return lo, hi


def _q_block_range(j, t: TileStatics, num_q_blocks: int, counts=None):
    """[lo, hi) of the folded q tiles that see any key of K/V block j. ``counts``: the
    launcher's query counts (QEND_COUNTS) in place of the positional ones (bidirectional)."""
    if not t.banded:
        return 0, num_q_blocks
    c_first = j * t.block_k
    c_last = jnp.minimum(c_first + t.block_k, t.kv_len) - 1
    s_first = jnp.maximum(c_first - t.offset, 0)  # first query whose position >= c_first
    if counts is not None:
        s_first = counts[0]
    lo = jnp.minimum(lax.div(s_first * t.group, t.block_q), num_q_blocks)
    hi = num_q_blocks
    if t.window is not None:
        # last query whose window still reaches c_last: position <= c_last + W - 1
        s_end = jnp.clip(c_last + t.window - t.offset, 0, t.q_len)
        if counts is not None:
            s_end = counts[2]
        hi = _cdiv(s_end * t.group, t.block_q)
    return lo, hi


def _kv_unmasked_range(i, lo, hi, t: TileStatics, pos=None):
    """[mid_lo, mid_hi) inside [lo, hi): the K/V blocks that every real row of q tile i sees
    whole (no causal / window / kv-length edge), so they need no position mask."""
    full_hi = t.kv_len // t.block_k  # blocks with no padded key
    if not t.banded:
        return lo, min(full_hi, hi)
    pos_first, pos_last = _tile_positions(i, t, pos)
    full_hi = jnp.minimum(full_hi, lax.div(jnp.maximum(pos_first + 1, 0), t.block_k))
    full_lo = 0
    if t.window is not None:
        full_lo = _cdiv(jnp.maximum(pos_last - t.window + 1, 0), t.block_k)
    mid_lo = jnp.clip(full_lo, lo, hi)
    return mid_lo, jnp.clip(full_hi, mid_lo, hi)


def _q_unmasked_range(j, lo, hi, t: TileStatics, counts=None):
    """[mid_lo, mid_hi) inside [lo, hi): the q tiles whose real rows all see K/V block j whole."""
    c_first = j * t.block_k
    # the block holding padded keys masks every tile (0/1 arithmetic: Pallas-Triton lowers
    # no scalar select of a comparison)
    edge = (c_first + t.block_k > t.kv_len).astype(jnp.int32)
    mid_lo, mid_hi = lo, hi
    if t.banded:  # rows at or after the block's last key
        s_first = jnp.maximum(c_first + t.block_k - 1 - t.offset, 0)
        if counts is not None:
            s_first = counts[1]
        mid_lo = jnp.clip(_cdiv(s_first * t.group, t.block_q), lo, hi)
    if t.window is not None:  # rows whose window still reaches the block's first key
        s_end = jnp.maximum(c_first + t.window - t.offset, 0)
        if counts is not None:
            s_end = counts[3]
        mid_hi = jnp.clip(lax.div(s_end * t.group, t.block_q), mid_lo, hi)
    return mid_lo + edge * (hi - mid_lo), mid_hi + edge * (hi - mid_hi)


def _ranges(lo, hi, mid):
    """The loop as (start, stop, masked) pieces: masked, unmasked, masked."""
    return ((lo, mid[0], True), (mid[0], mid[1], False), (mid[1], hi, True))


def _mask(rows, cols, q_ids, kv_ids, t: TileStatics, positions=True, q_pos=None):
    """[block_q, block_k] bool: folded row r may see key column c (positions=False: the
    segment ids only, for tiles the position masks keep whole). q_pos [block_q]: the rows'
    q_end (bidirectional blocks) in place of r // G + offset."""
    ok = jnp.ones((rows.shape[0], cols.shape[0]), jnp.bool_)
    if positions:
        pos = lax.div(rows, t.group) + t.offset if q_pos is None else q_pos
        ok = (rows < t.rows)[:, None] & (cols < t.kv_len)[None, :]
        if t.banded:
            ok &= cols[None, :] <= pos[:, None]
        if t.window is not None:
            ok &= cols[None, :] > pos[:, None] - t.window
    if q_ids is not None:
        ok &= q_ids[:, None] == kv_ids[None, :]
    return ok


def _scores(q, k, t: TileStatics):
    """Scaled (and soft-capped) scores in fp32, and tanh(s/c) for the softcap backward."""
    s = _dot(q, k, tb=True) * t.scale
    if t.softcap is None:
        return s, None
    th = jnp.tanh(s / t.softcap)
    return t.softcap * th, th


def _split_refs(refs, t: TileStatics, n_in: int, n_qend: int = 1):
    """(inputs, q_ids_ref, kv_ids_ref, qend_refs, outputs): segment refs are present only if
    used, then the ``n_qend`` q_end refs only with has_qend (qend_refs () without)."""
    ins, rest = refs[:n_in], refs[n_in:]
    qid = kvid = None
    if t.has_segments:
        qid, kvid, rest = rest[0], rest[1], rest[2:]
    qend = ()
    if t.has_qend:
        qend, rest = tuple(rest[:n_qend]), rest[n_qend:]
    return ins, qid, kvid, qend, rest


def _qend_counts(counts_ref):
    """The QEND_COUNTS query counts of this key block from its [QEND_COUNTS * LANES] tile
    (count c broadcast over lanes [c * LANES, (c + 1) * LANES); all counts >= 0)."""
    x = counts_ref[...]
    lane = lax.div(lax.broadcasted_iota(jnp.int32, x.shape, 0), LANES)
    return tuple(jnp.max(jnp.where(lane == c, x, -1)) for c in range(QEND_COUNTS))


def _fwd_kernel(*refs, t: TileStatics):
    # q_ref [block_q, Dp] (folded rows); k_ref, v_ref [Skv_pad, Dp]
    # o_ref [block_q, Dp]; lse_ref [block_q] (base 2)
    # qend_ref (has_qend) [block_q]: the rows' q_end, padded rows repeating the last real one
    (q_ref, k_ref, v_ref), qid_ref, kvid_ref, qend_refs, (o_ref, lse_ref) = _split_refs(refs, t, 3)
    i = pl.program_id(0)
    bq, bk = t.block_q, t.block_k
    q = q_ref[...]
    rows = i * bq + lax.broadcasted_iota(jnp.int32, (bq,), 0)
    q_ids = None if qid_ref is None else qid_ref[...]
    q_pos = qend_refs[0][...] if qend_refs else None
    pos = None if q_pos is None else (jnp.min(q_pos), jnp.max(q_pos))  # non-decreasing q_end

    def body(j, carry, masked):
        acc, m, l = carry
        sl = pl.ds(j * bk, bk)
        k, v = k_ref[sl, :], v_ref[sl, :]
        cols = j * bk + lax.broadcasted_iota(jnp.int32, (bk,), 0)
        kv_ids = None if kvid_ref is None else kvid_ref[sl]
        s, _ = _scores(q, k, t)
        s = s * LOG2E
        if masked or kv_ids is not None:
            s = jnp.where(_mask(rows, cols, q_ids, kv_ids, t, positions=masked, q_pos=q_pos), s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows with no key yet
        p = jnp.exp2(s - m_safe[:, None])
        alpha = jnp.exp2(m - m_safe)
        l = alpha * l + p.sum(axis=-1)
        acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v)
        return acc, m_new, l

    nk = k_ref.shape[0] // bk
    lo, hi = _kv_block_range(i, t, nk, pos)
    carry = (jnp.zeros((bq, q.shape[-1]), jnp.float32),
             jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32))
    for start, stop, masked in _ranges(lo, hi, _kv_unmasked_range(i, lo, hi, t, pos)):
        carry = lax.fori_loop(start, stop, lambda j, c, masked=masked: body(j, c, masked), carry)
    acc, m, l = carry
    seen = l > 0
    o_ref[...] = (acc / jnp.where(seen, l, 1.0)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log2(jnp.where(seen, l, 1.0)), jnp.inf)


def _probs_and_dscores(q, k, v, do, lse, delta, rows, cols, q_ids, kv_ids, t: TileStatics,
                       masked=True, q_pos=None):
    """Recompute p [bq, bk] from lse; dS = p * (dO V^T - delta), through the softcap.
    masked=False: a tile the position masks keep whole (segments are still applied)."""
    s, th = _scores(q, k, t)
    p = jnp.exp2(s * LOG2E - lse[:, None])
    if masked or kv_ids is not None:
        p = jnp.where(_mask(rows, cols, q_ids, kv_ids, t, positions=masked, q_pos=q_pos), p, 0.0)
    ds = p * (_dot(do, v, tb=True) - delta[:, None])
    if th is not None:
        ds = ds * (1.0 - th * th)  # d/ds [c tanh(s/c)]
    return p, ds


def _bwd_dkdv_kernel(*refs, t: TileStatics):
    # q_ref, do_ref [rows_pad, Dp] (all folded rows of the group); lse_ref, delta_ref [rows_pad]
    # k_ref, v_ref [Skv_pad, Dp]; dk_ref, dv_ref [block_k, Dp]; has_qend: qend_ref [rows_pad]
    # (the rows' q_end) and counts_ref [QEND_COUNTS * LANES] (this key block's query counts)
    ins, qid_ref, kvid_ref, qend_refs, (dk_ref, dv_ref) = _split_refs(refs, t, 6, n_qend=2)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
    j = pl.program_id(0)
    bq, bk = t.block_q, t.block_k
    ksl = pl.ds(j * bk, bk)
    k, v = k_ref[ksl, :], v_ref[ksl, :]
    cols = j * bk + lax.broadcasted_iota(jnp.int32, (bk,), 0)
    kv_ids = None if kvid_ref is None else kvid_ref[ksl]

    def body(i, carry, masked):
        dk, dv = carry
        sl = pl.ds(i * bq, bq)
        q, do = q_ref[sl, :], do_ref[sl, :]
        rows = i * bq + lax.broadcasted_iota(jnp.int32, (bq,), 0)
        q_ids = None if qid_ref is None else qid_ref[sl]
        q_pos = qend_refs[0][sl] if qend_refs else None
        p, ds = _probs_and_dscores(q, k, v, do, lse_ref[sl], delta_ref[sl], rows, cols,
                                   q_ids, kv_ids, t, masked, q_pos)
        dv = dv + _dot(p.astype(do.dtype), do, ta=True)  # P^T dO
        dk = dk + _dot(ds.astype(q.dtype), q, ta=True)  # dS^T Q
        return dk, dv

    counts = _qend_counts(qend_refs[1]) if qend_refs else None
    lo, hi = _q_block_range(j, t, q_ref.shape[0] // bq, counts)
    zeros = jnp.zeros((bk, k.shape[-1]), jnp.float32)
    carry = (zeros, zeros)
    for start, stop, masked in _ranges(lo, hi, _q_unmasked_range(j, lo, hi, t, counts)):
        carry = lax.fori_loop(start, stop, lambda i, c, masked=masked: body(i, c, masked), carry)
    dk, dv = carry
    dk_ref[...] = (dk * t.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _bwd_dq_kernel(*refs, t: TileStatics):
    # q_ref, do_ref, dq_ref [block_q, Dp]; lse_ref, delta_ref [block_q]; k_ref, v_ref [Skv_pad, Dp]
    ins, qid_ref, kvid_ref, qend_refs, (dq_ref,) = _split_refs(refs, t, 6)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
    i = pl.program_id(0)
    bq, bk = t.block_q, t.block_k
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    rows = i * bq + lax.broadcasted_iota(jnp.int32, (bq,), 0)
    q_ids = None if qid_ref is None else qid_ref[...]
    q_pos = qend_refs[0][...] if qend_refs else None  # [block_q] q_end, as in the forward
    pos = None if q_pos is None else (jnp.min(q_pos), jnp.max(q_pos))

    def body(j, dq, masked):
        sl = pl.ds(j * bk, bk)
        k, v = k_ref[sl, :], v_ref[sl, :]
        cols = j * bk + lax.broadcasted_iota(jnp.int32, (bk,), 0)
        kv_ids = None if kvid_ref is None else kvid_ref[sl]
        _, ds = _probs_and_dscores(q, k, v, do, lse, delta, rows, cols, q_ids, kv_ids, t, masked, q_pos)
        return dq + _dot(ds.astype(k.dtype), k)  # dS K

    nk = k_ref.shape[0] // bk
    lo, hi = _kv_block_range(i, t, nk, pos)
    dq = jnp.zeros((bq, q.shape[-1]), jnp.float32)
    for start, stop, masked in _ranges(lo, hi, _kv_unmasked_range(i, lo, hi, t, pos)):
        dq = lax.fori_loop(start, stop, lambda j, c, masked=masked: body(j, c, masked), dq)
    dq_ref[...] = (dq * t.scale).astype(dq_ref.dtype)
