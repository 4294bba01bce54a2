"""Pallas Mosaic GPU (Hopper) device code for MQA/GQA flash attention, forward.

One CTA = one warpgroup = one (folded q tile, kv head, batch). The G query heads of a kv
group are rows of one matrix (row r = s * G + g), so each K/V tile is TMA-loaded once
per group. Per K/V step j:

    S  = Q K^T            wgmma(Q smem [bq, D], K^T smem [D, bk])   fp32 accumulator
    P  = exp2(S' - m)     online softmax in registers (S' = scaled, capped, masked, base 2)
    O  = alpha * O + P V  P staged through smem, wgmma(P smem [bq, bk], V smem [bk, D])

K^T and V tiles stream through a ``num_stages``-deep ring of smem slots filled by TMA
(``copy_gmem_to_smem``) and guarded by one barrier per slot; the copy for step
j + num_stages is issued as soon as step j has consumed its slot. Causal / windowed
tiles visit only the K/V blocks they can see, and only blocks crossing a mask edge
(or the padded kv tail) pay for the mask. head_dim 256 runs as two 128-wide chunks so
the fp32 accumulator and the P V product fit in registers. The kernel also writes the
base-2 log-sum-exp of each row (+inf for rows that see no key) for the backward
(``pallas_mgpu_bwd_kernels.py``).

Why K arrives transposed and P goes through smem: Pallas's GPU interpret mode (the only
way to execute this on CPU) implements wgmma for smem operands without transposes only,
and no register LHS, ``run_state`` or accumulator stores. The kernel is written in that
subset so the same code runs in CI and on H100/H200. The price on a GPU is one extra
K copy in the wrapper and one smem round trip for P per step (FA3 keeps P in registers).
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class MgpuTileStatics:
    """Static facts the kernel bounds its loops and masks with (true, unpadded sizes)."""

    q_len: int
    kv_len: int
    kv_len_padded: int
    group: int  # G = heads // kv_heads; folded rows = q_len * group
    block_q: int  # folded rows per tile (multiple of 64: wgmma M)
    block_kv: int
    num_stages: int
    d_chunk: int  # head_dim columns per accumulator chunk (64 or 128)
    num_chunks: int  # padded head_dim = num_chunks * d_chunk
    causal: bool
    window: int | None
    softcap: float | None
    scale: float
    layout_hints: bool  # False in interpret mode, which has no rule for plgpu.layout_cast

    @property
    def rows(self) -> int:
        return self.q_len * self.group

    @property
    def offset(self) -> int:
        """Query s sits at absolute key position s + offset (bottom-right alignment)."""
        return self.kv_len - self.q_len

    @property
    def banded(self) -> bool:
        return self.causal or self.window is not None


def smem_transforms():
    """128-byte swizzle over (8, 64) tiles: every smem tile has a minor dim of 64k elements."""
    return (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))


def wgmma_layout(x, t: MgpuTileStatics, *, reduced: int | None = None):
    """Pin x to the wgmma register layout; a vector is a tile with axis ``reduced`` summed away
    (1: one value per row, broadcast along columns; 0: one value per column).

    A register-layout annotation only, with no effect on values: skipped in interpret mode.
    """
    if not t.layout_hints:
        return x
    return plgpu.layout_cast(
        x, plgpu.Layout.WGMMA if reduced is None else plgpu.Layout.WGMMA.reduce(reduced))


def block_ranges(i, t: MgpuTileStatics):
    """K/V block bounds for folded q tile i: [lo, a) masked, [a, b) unmasked, [b, hi) masked.

    Blocks outside [lo, hi) are fully masked and skipped; unmasked blocks lie entirely
    inside every row's visible band and inside the true kv length.
    """
    bk = t.block_kv
    n = t.kv_len_padded // bk
    full_kv = t.kv_len // bk  # blocks [0, full_kv) hold no padded key
    if not t.banded:
        return 0, 0, full_kv, n
    r_first = i * t.block_q
    r_last = jnp.minimum(r_first + t.block_q, t.rows) - 1
    p_first = lax.div(r_first, t.group) + t.offset  # smallest query position in the tile
    p_last = lax.div(r_last, t.group) + t.offset  # largest
    hi = jnp.clip(lax.div(jnp.maximum(p_last + 1, 0) + bk - 1, bk), 0, n)
    b = jnp.clip(lax.div(jnp.maximum(p_first + 1, 0), bk), 0, jnp.minimum(hi, full_kv))
    if t.window is None:
        return 0, 0, b, hi
    lo = jnp.minimum(lax.div(jnp.maximum(p_first - t.window + 1, 0), bk), hi)
    # first block whose first key is visible to the largest position's window
    a = jnp.clip(lax.div(jnp.maximum(p_last - t.window + 1, 0) + bk - 1, bk), lo, hi)
    return lo, a, jnp.maximum(a, b), hi


def mask(i, j, t: MgpuTileStatics, *, transposed: bool = False):
    """Bool tile in the wgmma layout: folded row (of q tile i) may see key (of K/V block j).

    [block_q, block_kv], or [block_kv, block_q] if ``transposed`` (the dK/dV kernel's S^T),
    which also masks the padded rows past q_len * group.
    """
    shape = (t.block_kv, t.block_q) if transposed else (t.block_q, t.block_kv)
    iota = lambda axis: wgmma_layout(lax.broadcasted_iota(jnp.int32, shape, axis), t)
    rows = i * t.block_q + iota(1 if transposed else 0)
    cols = j * t.block_kv + iota(0 if transposed else 1)
    pos = (rows if t.group == 1 else lax.div(rows, t.group)) + t.offset
    ok = cols < t.kv_len
    if transposed:
        ok &= rows < t.rows
    if t.banded:
        ok &= cols <= pos
    if t.window is not None:
        ok &= cols > pos - t.window
    return ok


def fwd_kernel(q_ref, kt_ref, v_ref, o_ref, lse_ref, q_smem, k_smem, v_smem, p_smem, lse_smem,
               q_bars, k_bars, v_bars, *, t: MgpuTileStatics):
    # GMEM: q_ref, o_ref [B, KVH, rows_p, Dp] (folded); kt_ref [B, KVH, Dp, Skv_p];
    #       v_ref [B, Skv_p, KVH, Dp]; lse_ref [B, KVH, rows_p] fp32 (base 2).
    # SMEM: q_smem [nc, bq, dc] (reused for O); k_smem [nc, stages, dc, bk];
    #       v_smem [nc, stages, bk, dc]; p_smem [bq, bk]; lse_smem [bq] fp32.
    # Barriers: one per chunk (x slot).
    i, h, b = lax.axis_index("q_tile"), lax.axis_index("kv_head"), lax.axis_index("batch")
    bq, bk, dc, nc, st = t.block_q, t.block_kv, t.d_chunk, t.num_chunks, t.num_stages
    dtype = q_smem.dtype
    rows = pl.ds(i * bq, bq)
    for c in range(nc):
        plgpu.copy_gmem_to_smem(q_ref.at[b, h, rows, pl.ds(c * dc, dc)], q_smem.at[c], q_bars[c])
    lo, a, mid_end, hi = block_ranges(i, t)

    def fetch(j):  # TMA K^T and V block j into slot (j - lo) % stages
        slot, cols = lax.rem(j - lo, st), pl.ds(j * bk, bk)
        for c in range(nc):
            plgpu.copy_gmem_to_smem(kt_ref.at[b, h, pl.ds(c * dc, dc), cols],
                                    k_smem.at[c, slot], k_bars[c].at[slot])
            plgpu.copy_gmem_to_smem(v_ref.at[b, cols, h, pl.ds(c * dc, dc)],
                                    v_smem.at[c, slot], v_bars[c].at[slot])

    for s in range(min(st, t.kv_len_padded // bk)):  # prologue: fill the ring
        pl.when(lo + s < hi)(lambda s=s: fetch(lo + s))
    for c in range(nc):
        plgpu.barrier_wait(q_bars[c])

    def step(j, carry, masked: bool):
        acc, m, l = carry  # acc: nc x [bq, dc] fp32; m, l: [bq] fp32 (m in base 2)
        slot = lax.rem(j - lo, st)

        def qk(s_ref):
            for c in range(nc):
                plgpu.barrier_wait(k_bars[c].at[slot])
                plgpu.wgmma(s_ref, q_smem.at[c], k_smem.at[c, slot])
            return s_ref[...]

        s = pl.run_scoped(qk, plgpu.ACC((bq, bk), jnp.float32))
        if t.softcap is None:
            s = s * (t.scale * LOG2E)
        else:
            s = jnp.tanh(s * (t.scale / t.softcap)) * (t.softcap * LOG2E)
        if masked:
            s = jnp.where(mask(i, j, t), s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows with no key yet
        p = jnp.exp2(s - lax.broadcast_in_dim(m_safe, s.shape, [0]))
        alpha = jnp.exp2(m - m_safe)
        l = l * alpha + p.sum(axis=1)
        p_smem[...] = p.astype(dtype)
        plgpu.commit_smem()  # make the register -> smem store visible to wgmma

        new_acc = []
        for c in range(nc):
            def pv(o_ref, c=c):
                plgpu.barrier_wait(v_bars[c].at[slot])
                plgpu.wgmma(o_ref, p_smem, v_smem.at[c, slot])
                return o_ref[...]

            o = pl.run_scoped(pv, plgpu.ACC((bq, dc), jnp.float32))
            new_acc.append(acc[c] * lax.broadcast_in_dim(alpha, o.shape, [0]) + o)
        pl.when(j + st < hi)(lambda: fetch(j + st))  # slot consumed: refill it
        return tuple(new_acc), m_new, l

    acc = tuple(wgmma_layout(jnp.zeros((bq, dc), jnp.float32), t) for _ in range(nc))
    m = wgmma_layout(jnp.full((bq,), -jnp.inf, jnp.float32), t, reduced=1)
    l = wgmma_layout(jnp.zeros((bq,), jnp.float32), t, reduced=1)
    carry = (acc, m, l)
    if t.window is not None:  # blocks crossing the window's lower edge
        carry = lax.fori_loop(lo, a, lambda j, c: step(j, c, True), carry)
    carry = lax.fori_loop(a, mid_end, lambda j, c: step(j, c, False), carry)
    carry = lax.fori_loop(mid_end, hi, lambda j, c: step(j, c, True), carry)
    acc, m, l = carry

    inv = 1.0 / jnp.where(l > 0, l, 1.0)  # rows that saw no key: acc == 0 -> output 0
    for c in range(nc):
        q_smem.at[c][...] = (acc[c] * lax.broadcast_in_dim(inv, acc[c].shape, [0])).astype(dtype)
    # lse = m + log2(l); +inf for rows that saw no key, so the backward's exp2(s - lse) is 0
    lse_smem[...] = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)) * LOG2E, jnp.inf)
    plgpu.commit_smem()
    for c in range(nc):
        plgpu.copy_smem_to_gmem(q_smem.at[c], o_ref.at[b, h, rows, pl.ds(c * dc, dc)])
    plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[b, h, rows])
    plgpu.wait_smem_to_gmem(0)
