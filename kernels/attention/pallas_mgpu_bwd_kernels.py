"""Pallas Mosaic GPU (Hopper) device code for the MQA/GQA flash attention backward.

FA2's split, with the forward's folded rows (row r = s * G + g over the G query heads of a
kv group) and its base-2 log-sum-exp L; delta = rowsum(dO * O) comes from the wrapper:

    P  = exp2(S' - L)               S' = scaled, capped scores in base 2; masked -> P = 0
    dS = P * (dP - delta) [* (1 - tanh^2)]  with dP = dO V^T (the softcap's derivative)
    dK/dV kernel (one CTA per K/V block): dV += P^T dO, dK += dS^T Q over the q tiles
        that can see the block; the folded rows hold every query head of the group, so
        dK/dV of a kv head is summed over its group here, in fp32, with K/V never repeated.
    dQ kernel (one CTA per folded q tile): dQ += dS K over the visible K/V blocks.
Scale: dQ and dK get the softmax scale once, at the end.

Operands follow the forward's interpret-mode subset (wgmma from smem without transposes,
no register LHS, no run_state): every product reads both operands from smem in the
orientation it needs, so the wrapper supplies Q^T, dO^T, K^T and V^T beside Q, dO, K,
V, and P^T / dS^T go through smem. Q/dO tiles (dK/dV) and K/V tiles (dQ) stream through
a ``num_stages`` ring of TMA copies, one barrier per tensor and slot. head_dim <= 128.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from .pallas_mgpu_kernels import LOG2E, MgpuTileStatics, block_ranges, mask, wgmma_layout


def _matmul(a_smem, b_smem, shape):
    """a @ b by wgmma into a fresh fp32 accumulator; returns it in registers."""
    def body(acc):
        plgpu.wgmma(acc, a_smem, b_smem)
        return acc[...]

    return pl.run_scoped(body, plgpu.ACC(shape, jnp.float32))


def _probs_and_dscore(s, lse, delta, dp, t: MgpuTileStatics, visible, q_axis: int):
    """P and dS (w.r.t. the unscaled q.k) of one tile; lse, delta vary along ``q_axis``."""
    if t.softcap is None:
        s2, dcap = s * (t.scale * LOG2E), None
    else:
        th = jnp.tanh(s * (t.scale / t.softcap))
        s2, dcap = th * (t.softcap * LOG2E), 1.0 - th * th
    p = jnp.exp2(s2 - lax.broadcast_in_dim(lse, s.shape, [q_axis]))
    if visible is not None:
        p = jnp.where(visible, p, 0.0)  # before any product: masked exp2 may overflow
    ds = p * (dp - lax.broadcast_in_dim(delta, s.shape, [q_axis]))
    return p, ds if dcap is None else ds * dcap


def q_tile_range(j, t: MgpuTileStatics):
    """Folded q tiles [lo, hi) whose rows may see a key of K/V block j."""
    n = pl.cdiv(t.rows, t.block_q)
    if not t.banded:
        return 0, n
    first_key = j * t.block_kv
    last_key = jnp.minimum(first_key + t.block_kv, t.kv_len) - 1
    r_lo = jnp.maximum(first_key - t.offset, 0) * t.group  # first row with position >= key
    lo = jnp.minimum(lax.div(r_lo, t.block_q), n)
    if t.window is None:
        return lo, n
    # rows with position < last_key + window
    r_hi = jnp.clip((last_key + t.window - t.offset) * t.group, 0, t.rows)
    return lo, jnp.clip(lax.div(r_hi + t.block_q - 1, t.block_q), lo, n)


def dkv_kernel(q_ref, qt_ref, do_ref, dot_ref, lse_ref, delta_ref, k_ref, v_ref, dk_ref, dv_ref,
               k_smem, v_smem, q_smem, qt_smem, do_smem, dot_smem, lse_smem, delta_smem,
               pt_smem, ds_smem, kv_bars, q_bars, *, t: MgpuTileStatics):
    # GMEM: q_ref, do_ref [B, KVH, rows_p, Dp]; qt_ref, dot_ref [B, KVH, Dp, rows_p];
    #       lse_ref, delta_ref [B, KVH, rows_p] fp32; k/v/dk/dv_ref [B, Skv_p, KVH, Dp].
    # SMEM: k_smem, v_smem [bk, Dp] (then dK, dV); ring of q_smem, do_smem [st, bq, Dp],
    #       qt_smem, dot_smem [st, Dp, bq], lse_smem, delta_smem [st, bq];
    #       pt_smem, ds_smem [bk, bq]. Barriers: kv_bars 2, q_bars 6 x [st].
    j, h, b = lax.axis_index("kv_tile"), lax.axis_index("kv_head"), lax.axis_index("batch")
    bq, bk, st, dtype = t.block_q, t.block_kv, t.num_stages, k_smem.dtype
    keys = pl.ds(j * bk, bk)
    plgpu.copy_gmem_to_smem(k_ref.at[b, keys, h], k_smem, kv_bars.at[0])
    plgpu.copy_gmem_to_smem(v_ref.at[b, keys, h], v_smem, kv_bars.at[1])
    lo, hi = q_tile_range(j, t)
    ring = ((q_ref, q_smem, False), (qt_ref, qt_smem, True), (do_ref, do_smem, False),
            (dot_ref, dot_smem, True), (lse_ref, lse_smem, False), (delta_ref, delta_smem, False))

    def fetch(i):  # TMA q tile i's Q, Q^T, dO, dO^T, L, delta into slot (i - lo) % stages
        slot, rows = lax.rem(i - lo, st), pl.ds(i * bq, bq)
        for n, (src, dst, transposed) in enumerate(ring):
            src = src.at[b, h, :, rows] if transposed else src.at[b, h, rows]
            plgpu.copy_gmem_to_smem(src, dst.at[slot], q_bars[n].at[slot])

    for s in range(min(st, pl.cdiv(t.rows, bq))):  # prologue: fill the ring
        pl.when(lo + s < hi)(lambda s=s: fetch(lo + s))
    plgpu.barrier_wait(kv_bars.at[0])
    plgpu.barrier_wait(kv_bars.at[1])
    needs_mask = t.banded or t.kv_len % bk or t.rows % bq

    def step(i, carry):
        dk, dv = carry  # [bk, Dp] fp32 each
        slot = lax.rem(i - lo, st)
        for bar in q_bars:
            plgpu.barrier_wait(bar.at[slot])
        s_t = _matmul(k_smem, qt_smem.at[slot], (bk, bq))  # S^T = K Q^T
        dp_t = _matmul(v_smem, dot_smem.at[slot], (bk, bq))  # dP^T = V dO^T
        lse = wgmma_layout(lse_smem.at[slot][...], t, reduced=0)
        delta = wgmma_layout(delta_smem.at[slot][...], t, reduced=0)
        visible = mask(i, j, t, transposed=True) if needs_mask else None
        p_t, ds_t = _probs_and_dscore(s_t, lse, delta, dp_t, t, visible, q_axis=1)
        pt_smem[...] = p_t.astype(dtype)
        ds_smem[...] = ds_t.astype(dtype)
        plgpu.commit_smem()  # register -> smem stores visible to wgmma
        dv = dv + _matmul(pt_smem, do_smem.at[slot], dv.shape)
        dk = dk + _matmul(ds_smem, q_smem.at[slot], dk.shape)
        pl.when(i + st < hi)(lambda: fetch(i + st))  # slot consumed: refill it
        return dk, dv

    zeros = wgmma_layout(jnp.zeros((bk, k_smem.shape[-1]), jnp.float32), t)
    dk, dv = lax.fori_loop(lo, hi, step, (zeros, zeros))
    k_smem[...] = (dk * t.scale).astype(dtype)
    v_smem[...] = dv.astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[b, keys, h])
    plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[b, keys, h])
    plgpu.wait_smem_to_gmem(0)


def dq_kernel(q_ref, do_ref, lse_ref, delta_ref, kt_ref, k_ref, vt_ref, dq_ref,
              q_smem, do_smem, lse_smem, delta_smem, kt_smem, k_smem, vt_smem, ds_smem,
              row_bars, kv_bars, *, t: MgpuTileStatics):
    # GMEM: q_ref, do_ref, dq_ref [B, KVH, rows_p, Dp]; lse_ref, delta_ref [B, KVH, rows_p];
    #       kt_ref, vt_ref [B, KVH, Dp, Skv_p]; k_ref [B, Skv_p, KVH, Dp].
    # SMEM: q_smem (then dQ), do_smem [bq, Dp]; lse_smem, delta_smem [bq]; ring of
    #       kt_smem, vt_smem [st, Dp, bk], k_smem [st, bk, Dp]; ds_smem [bq, bk].
    i, h, b = lax.axis_index("q_tile"), lax.axis_index("kv_head"), lax.axis_index("batch")
    bq, bk, st, dtype = t.block_q, t.block_kv, t.num_stages, q_smem.dtype
    rows = pl.ds(i * bq, bq)
    for n, (src, dst) in enumerate(((q_ref, q_smem), (do_ref, do_smem), (lse_ref, lse_smem),
                                    (delta_ref, delta_smem))):
        plgpu.copy_gmem_to_smem(src.at[b, h, rows], dst, row_bars.at[n])
    lo, a, mid_end, hi = block_ranges(i, t)
    ring = ((kt_ref, kt_smem, True), (vt_ref, vt_smem, True), (k_ref, k_smem, False))

    def fetch(j):  # TMA K^T, V^T, K block j into slot (j - lo) % stages
        slot, keys = lax.rem(j - lo, st), pl.ds(j * bk, bk)
        for n, (src, dst, transposed) in enumerate(ring):
            src = src.at[b, h, :, keys] if transposed else src.at[b, keys, h]
            plgpu.copy_gmem_to_smem(src, dst.at[slot], kv_bars[n].at[slot])

    for s in range(min(st, t.kv_len_padded // bk)):  # prologue: fill the ring
        pl.when(lo + s < hi)(lambda s=s: fetch(lo + s))
    for n in range(4):
        plgpu.barrier_wait(row_bars.at[n])
    lse = wgmma_layout(lse_smem[...], t, reduced=1)
    delta = wgmma_layout(delta_smem[...], t, reduced=1)

    def step(j, dq, masked: bool):
        slot = lax.rem(j - lo, st)
        for bar in kv_bars:
            plgpu.barrier_wait(bar.at[slot])
        s = _matmul(q_smem, kt_smem.at[slot], (bq, bk))  # S = Q K^T
        dp = _matmul(do_smem, vt_smem.at[slot], (bq, bk))  # dP = dO V^T
        visible = mask(i, j, t) if masked else None
        _, ds = _probs_and_dscore(s, lse, delta, dp, t, visible, q_axis=0)
        ds_smem[...] = ds.astype(dtype)
        plgpu.commit_smem()
        dq = dq + _matmul(ds_smem, k_smem.at[slot], dq.shape)
        pl.when(j + st < hi)(lambda: fetch(j + st))
        return dq

    dq = wgmma_layout(jnp.zeros((bq, q_smem.shape[-1]), jnp.float32), t)
    if t.window is not None:  # blocks crossing the window's lower edge
        dq = lax.fori_loop(lo, a, lambda j, c: step(j, c, True), dq)
    dq = lax.fori_loop(a, mid_end, lambda j, c: step(j, c, False), dq)
    dq = lax.fori_loop(mid_end, hi, lambda j, c: step(j, c, True), dq)
    q_smem[...] = (dq * t.scale).astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(q_smem, dq_ref.at[b, h, rows])
    plgpu.wait_smem_to_gmem(0)
