"""patch_embed device code (Triton): fused patchify-matmul forward and its three backward passes.

What it computes (contract in ``spec.py``): row m = b * N + n of the unfolded patch matrix
is image b's patch n = (gh, gw); feature k = (ph * P + pw) * C + c is the pixel at
(gh * P + ph, gw * P + pw, c). The fused kernels never materialize that matrix: each tile
computes the pixel offsets row_off[m] + col_off[k] (int64, any image strides) and gathers.
  forward  Y[m, d]  = sum_k X[m, k] W[k, d] + bias[d] + pos[n, d]      (one kernel, fused)
           or, two-pass: ``_patchify_kernel`` writes the matrix A [M, KP] (rows padded to a
           16-byte multiple), then the forward kernel with DENSE runs a plain GEMM over it
           (contiguous rows: vectorized cp.async straight to shared memory, no gather)
  dweight  dW[k, d] = sum_m X[m, k] dY[m, d]
  dimages  dX[m, k] = sum_d dY[m, d] W[k, d]   (patches do not overlap: one write per pixel)
  dpos     dP[n, d] = sum_b dY[b * N + n, d], plus per-tile column sums for dbias
Limits: patch and channels are compile-time constants (div/mod by constants); tl.dot tiles
need block sizes >= 16; fp32 inputs use ieee dots (FMA units), fp16/bf16 use tensor cores
(wgmma on sm_90) with fp32 accumulation. Fast where: large batches of 224-448 px images,
dim >= 256 (the forward is a [B*N, P*P*C] x [P*P*C, D] GEMM with gather-loaded A).
"""
from __future__ import annotations

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before any @triton.jit: the interpreter when there is no GPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _row_offsets(offs_m, N_PATCHES, GRID_W, stride_xb, stride_xh, stride_xw, PATCH: tl.constexpr):
    """int64 offset of each patch's top-left pixel, and its patch index n."""
    b = offs_m // N_PATCHES
    n = offs_m % N_PATCHES
    gh, gw = n // GRID_W, n % GRID_W
    row = b.to(tl.int64) * stride_xb + (gh * PATCH).to(tl.int64) * stride_xh \
        + (gw * PATCH).to(tl.int64) * stride_xw
    return row, n


@triton.jit
def _col_offsets(offs_k, stride_xh, stride_xw, stride_xc, PATCH: tl.constexpr, CHANNELS: tl.constexpr):
    """int64 offset of feature k = (ph, pw, c) inside a patch."""
    ph = offs_k // (PATCH * CHANNELS)
    pw = (offs_k // CHANNELS) % PATCH
    c = offs_k % CHANNELS
    return ph.to(tl.int64) * stride_xh + pw.to(tl.int64) * stride_xw + c.to(tl.int64) * stride_xc


@triton.jit
def _patchify_kernel(
    X,  # [B, H, W, C] images, any strides
    A,  # [M, KP] out: the unfolded patch matrix (columns >= K are not written)
    stride_xb, stride_xh, stride_xw, stride_xc, stride_am,
    M, N_PATCHES, GRID_W,
    PATCH: tl.constexpr, CHANNELS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr,
):
    # program (row block, ph): pixel row ph of BLOCK_M patches -> A[m, ph*P*C : (ph+1)*P*C]
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ph = tl.program_id(1)
    m_ok = offs_m < M
    row, _ = _row_offsets(offs_m, N_PATCHES, GRID_W, stride_xb, stride_xh, stride_xw, PATCH)
    offs_j = tl.arange(0, BLOCK_J)  # (pw, c) within the pixel row, BLOCK_J >= P * C
    j_ok = offs_j < PATCH * CHANNELS
    col = ph.to(tl.int64) * stride_xh + (offs_j // CHANNELS).to(tl.int64) * stride_xw \
        + (offs_j % CHANNELS).to(tl.int64) * stride_xc
    mask = m_ok[:, None] & j_ok[None, :]
    v = tl.load(X + row[:, None] + col[None, :], mask=mask)
    tl.store(A + offs_m.to(tl.int64)[:, None] * stride_am + (ph * PATCH * CHANNELS + offs_j)[None, :],
             v, mask=mask)


@triton.jit
def _patch_embed_fwd_kernel(
    X,  # [B, H, W, C] images, any strides
    Wt,  # [K, D] weight, K = P * P * C in (ph, pw, c) order
    BIAS,  # [D]
    POS,  # [N, D] position embedding
    Y,  # [B * N, D] output, contiguous, images' dtype
    stride_xb, stride_xh, stride_xw, stride_xc,
    stride_wk, stride_wd, stride_bias, stride_pn, stride_pd,
    M, N_PATCHES, GRID_W, DIM,  # M = B * N rows; patches per image; patches per grid row; D
    PATCH: tl.constexpr, CHANNELS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ROW_STEPS: tl.constexpr = False,
    DENSE: tl.constexpr = False,  # X is the patchified matrix A [M, KP]: row stride stride_xb, unit columns
):
    K: tl.constexpr = PATCH * PATCH * CHANNELS
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < DIM
    row, n_idx = _row_offsets(offs_m, N_PATCHES, GRID_W, stride_xb, stride_xh, stride_xw, PATCH)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if DENSE:  # a plain GEMM over A's rows: whole K blocks unmasked on k, then the tail
        a_rows = X + offs_m.to(tl.int64)[:, None] * stride_xb
        for k0 in range(0, K // BLOCK_K * BLOCK_K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_rows + offs_k[None, :], mask=m_ok[:, None], other=0.0)
            w = tl.load(Wt + offs_k.to(tl.int64)[:, None] * stride_wk + offs_n[None, :] * stride_wd,
                        mask=n_ok[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
        if K % BLOCK_K:
            offs_k = K // BLOCK_K * BLOCK_K + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            a = tl.load(a_rows + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(Wt + offs_k.to(tl.int64)[:, None] * stride_wk + offs_n[None, :] * stride_wd,
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    elif ROW_STEPS:  # one patch row per step: its (pw, c) pixels are one contiguous run of P * C
        # (the launcher checks stride_xw == C and stride_xc == 1); BLOCK_K >= P * C, masked
        offs_j = tl.arange(0, BLOCK_K)
        j_ok = offs_j < PATCH * CHANNELS
        for ph in range(PATCH):
            a = tl.load(X + (row + ph * stride_xh)[:, None] + offs_j[None, :],
                        mask=m_ok[:, None] & j_ok[None, :], other=0.0)
            offs_k = ph * PATCH * CHANNELS + offs_j
            w = tl.load(Wt + offs_k.to(tl.int64)[:, None] * stride_wk + offs_n[None, :] * stride_wd,
                        mask=j_ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    else:
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            col = _col_offsets(offs_k, stride_xh, stride_xw, stride_xc, PATCH, CHANNELS)
            a = tl.load(X + row[:, None] + col[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(Wt + offs_k.to(tl.int64)[:, None] * stride_wk + offs_n[None, :] * stride_wd,
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    bias = tl.load(BIAS + offs_n * stride_bias, mask=n_ok, other=0.0).to(tl.float32)
    pos = tl.load(POS + n_idx.to(tl.int64)[:, None] * stride_pn + offs_n[None, :] * stride_pd,
                  mask=m_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    y = acc + bias[None, :] + pos
    tl.store(Y + offs_m.to(tl.int64)[:, None] * DIM + offs_n[None, :], y.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _patch_embed_dweight_kernel(
    X,  # [B, H, W, C] images, any strides
    DY,  # [B * N, D] output gradient, contiguous
    DW,  # [K, D] weight gradient, contiguous, weight's dtype
    stride_xb, stride_xh, stride_xw, stride_xc,
    M, N_PATCHES, GRID_W, DIM,
    PATCH: tl.constexpr, CHANNELS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    K: tl.constexpr = PATCH * PATCH * CHANNELS
    offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok, n_ok = offs_k < K, offs_n < DIM
    col = _col_offsets(offs_k, stride_xh, stride_xw, stride_xc, PATCH, CHANNELS)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < M
        row, _ = _row_offsets(offs_m, N_PATCHES, GRID_W, stride_xb, stride_xh, stride_xw, PATCH)
        a_t = tl.load(X + col[:, None] + row[None, :], mask=k_ok[:, None] & m_ok[None, :],
                      other=0.0)  # [BLOCK_K, BLOCK_M] = unfolded patches, transposed
        dy = tl.load(DY + offs_m.to(tl.int64)[:, None] * DIM + offs_n[None, :],
                     mask=m_ok[:, None] & n_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_N]
        acc = tl.dot(a_t, dy, acc, input_precision=DOT_PRECISION)
    tl.store(DW + offs_k.to(tl.int64)[:, None] * DIM + offs_n[None, :], acc.to(DW.dtype.element_ty),
             mask=k_ok[:, None] & n_ok[None, :])


@triton.jit
def _patch_embed_dimages_kernel(
    DY,  # [B * N, D] output gradient, contiguous
    Wt,  # [K, D] weight, any strides
    DX,  # [B, H, W, C] images gradient (strides given), images' dtype
    stride_wk, stride_wd,
    stride_xb, stride_xh, stride_xw, stride_xc,
    M, N_PATCHES, GRID_W, DIM,
    PATCH: tl.constexpr, CHANNELS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    K: tl.constexpr = PATCH * PATCH * CHANNELS
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    m_ok, k_ok = offs_m < M, offs_k < K
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, DIM, BLOCK_N):
        offs_d = d0 + tl.arange(0, BLOCK_N)
        d_ok = offs_d < DIM
        dy = tl.load(DY + offs_m.to(tl.int64)[:, None] * DIM + offs_d[None, :],
                     mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_N]
        w_t = tl.load(Wt + offs_k.to(tl.int64)[None, :] * stride_wk + offs_d[:, None] * stride_wd,
                      mask=d_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_K]
        acc = tl.dot(dy, w_t, acc, input_precision=DOT_PRECISION)
    row, _ = _row_offsets(offs_m, N_PATCHES, GRID_W, stride_xb, stride_xh, stride_xw, PATCH)
    col = _col_offsets(offs_k, stride_xh, stride_xw, stride_xc, PATCH, CHANNELS)
    tl.store(DX + row[:, None] + col[None, :], acc.to(DX.dtype.element_ty),
             mask=m_ok[:, None] & k_ok[None, :])


@triton.jit
def _patch_embed_dpos_kernel(
    DY,  # [B, N, D] output gradient, contiguous
    DPOS,  # [N, D] out, pos_embed's dtype
    PART,  # [cdiv(N, BLOCK_M), D] fp32 out: column sums of this tile's dpos rows (for dbias)
    BATCH, N_PATCHES, DIM,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # patch index
    offs_d = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = (offs_n < N_PATCHES)[:, None] & (offs_d < DIM)[None, :]
    ptrs = DY + offs_n.to(tl.int64)[:, None] * DIM + offs_d[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, BATCH):
        acc += tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)
        ptrs += N_PATCHES * DIM  # next image (64-bit pointer arithmetic)
    tl.store(DPOS + offs_n.to(tl.int64)[:, None] * DIM + offs_d[None, :], acc.to(DPOS.dtype.element_ty),
             mask=ok)
    tl.store(PART + tl.program_id(0) * DIM + offs_d, tl.sum(acc, 0), mask=offs_d < DIM)
