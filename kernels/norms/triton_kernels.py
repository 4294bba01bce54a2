"""Triton device code for RMSNorm / LayerNorm, fused with the residual add (Liger-Kernel style).

Forward: one program normalizes BLOCK_M rows held whole in a [BLOCK_M, BLOCK_N] tile
(BLOCK_N = next power of two >= hidden, masked), fp32 statistics, one rounding of y.
Backward: a persistent grid of P programs; program p walks row blocks p, p + P, ... and
accumulates its partial dweight (and dbias) sums in fp32 registers, written once to a
[P, hidden] buffer that the launcher reduces. Row offsets are 64-bit (tensors > 2^31).
NUM_STAGES > 1 software-pipelines that walk: the next row blocks' dy / h / dh tiles stream
into shared memory (cp.async) while this one computes, where one block's loads a program
(at ~100 registers, 2 programs an SM) were about all an SM had in flight.
Wide rows (hidden > 8192; a whole row of w, dweight and dbias no longer fits in registers):
a column-blocked backward in two kernels. ``_norm_bwd_row_sums_kernel`` walks each row in
column chunks for the two row means the gradient needs, c1 = mean(g) and c2 = mean(g * n)
(g = dy * w); ``_norm_bwd_col_block_kernel`` runs on a (row groups, column blocks) grid and
writes dx plus dweight/dbias partials for its column block only, so per-program state is
one column block wide at any hidden size. It reads dy and h twice (1.5-2x the traffic).
Launchers and the autograd shell live in ``triton_norms.py``.
"""
from .._platform import configure_triton_interpret

configure_triton_interpret()  # before any @triton.jit: the interpreter when there is no GPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _norm_fwd_kernel(
    X,           # [n_rows, n_cols] input, row stride stride_x
    R,           # [n_rows, n_cols] residual (HAS_RESIDUAL) or a dummy pointer
    W,           # [n_cols] weight
    B,           # [n_cols] bias (HAS_BIAS) or a dummy pointer
    Y,           # [n_rows, n_cols] output, x's dtype
    H,           # [n_rows, n_cols] h = x + residual, written when HAS_RESIDUAL
    MEAN,        # [n_rows] fp32 row means (layer norm only)
    RSTD,        # [n_rows] fp32 1 / sqrt(var + eps)
    stride_x, stride_r, stride_y, stride_h,
    n_rows, n_cols,
    eps, offset,
    IS_RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(X + r64 * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + r64 * stride_r + cols[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # h rounds like a framework add
        tl.store(H + r64 * stride_h + cols[None, :], x, mask=mask)
    h = x.to(tl.float32)
    if IS_RMS:
        rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=1) / n_cols + eps)  # (BLOCK_M,)
        n = h * rstd[:, None]
    else:
        mean = tl.sum(h, axis=1) / n_cols
        d = tl.where(mask, h - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / n_cols + eps)
        n = d * rstd[:, None]
        tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32) + offset
    y = n * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + r64 * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(
    DY,          # [n_rows, n_cols] gradient of y
    DH,          # [n_rows, n_cols] gradient of the returned h (HAS_DH) or a dummy pointer
    H,           # [n_rows, n_cols] the normalized input h (x when there is no residual)
    W,           # [n_cols] weight
    MEAN, RSTD,  # [n_rows] fp32 statistics saved by the forward
    DX,          # [n_rows, n_cols] gradient of h (= dx = dresidual)
    DW_PART,     # [num_programs, n_cols] fp32 partial dweight sums
    DB_PART,     # [num_programs, n_cols] fp32 partial dbias sums (HAS_BIAS)
    stride_dy, stride_dh, stride_h, stride_dx,
    n_rows, n_cols, offset,
    IS_RMS: tl.constexpr, HAS_DH: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr = 1,  # > 1: the next row blocks' loads in flight (cp.async) meanwhile
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32) + offset
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for blk in tl.range(pid, tl.cdiv(n_rows, BLOCK_M), tl.num_programs(0), num_stages=NUM_STAGES):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        r64 = rows.to(tl.int64)[:, None]
        dy = tl.load(DY + r64 * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = tl.load(H + r64 * stride_h + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        if IS_RMS:
            n = h * rstd[:, None]
        else:
            mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
            n = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]  # gradient of the normalized row n
        c2 = tl.sum(g * n, axis=1) / n_cols
        if IS_RMS:
            dh = rstd[:, None] * (g - n * c2[:, None])
        else:
            c1 = tl.sum(g, axis=1) / n_cols
            dh = rstd[:, None] * (g - c1[:, None] - n * c2[:, None])
        if HAS_DH:
            dh += tl.load(DH + r64 * stride_dh + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + r64 * stride_dx + cols[None, :], dh.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * n, axis=0)
        if HAS_BIAS:
            db += tl.sum(dy, axis=0)
    tl.store(DW_PART + pid * n_cols + cols, dw, mask=col_ok)
    if HAS_BIAS:
        tl.store(DB_PART + pid * n_cols + cols, db, mask=col_ok)


@triton.jit
def _norm_bwd_row_sums_kernel(
    DY,          # [n_rows, n_cols] gradient of y
    H,           # [n_rows, n_cols] the normalized input h
    W,           # [n_cols] weight
    MEAN, RSTD,  # [n_rows] fp32 statistics saved by the forward
    C1,          # [n_rows] fp32 out: mean(g) over the row (layer norm only)
    C2,          # [n_rows] fp32 out: mean(g * n) over the row
    stride_dy, stride_h,
    n_rows, n_cols, offset,
    IS_RMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    r64 = rows.to(tl.int64)[:, None]
    rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
    if IS_RMS:
        mean = rstd  # unused
    else:
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
    s1 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, n_cols, BLOCK_N):  # column chunks: (BLOCK_M, BLOCK_N) tiles
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_cols
        mask = row_ok[:, None] & col_ok[None, :]
        dy = tl.load(DY + r64 * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = tl.load(H + r64 * stride_h + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32) + offset
        if IS_RMS:
            n = h * rstd[:, None]
        else:
            n = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        s2 += tl.sum(g * n, axis=1)
        if not IS_RMS:
            s1 += tl.sum(g, axis=1)
    tl.store(C2 + rows, s2 / n_cols, mask=row_ok)
    if not IS_RMS:
        tl.store(C1 + rows, s1 / n_cols, mask=row_ok)


@triton.jit
def _norm_bwd_col_block_kernel(
    DY,          # [n_rows, n_cols] gradient of y
    DH,          # [n_rows, n_cols] gradient of the returned h (HAS_DH) or a dummy pointer
    H,           # [n_rows, n_cols] the normalized input h
    W,           # [n_cols] weight
    MEAN, RSTD,  # [n_rows] fp32 statistics saved by the forward
    C1, C2,      # [n_rows] fp32 row means from _norm_bwd_row_sums_kernel (C1: layer norm)
    DX,          # [n_rows, n_cols] gradient of h (= dx = dresidual)
    DW_PART,     # [row_groups, n_cols] fp32 partial dweight sums
    DB_PART,     # [row_groups, n_cols] fp32 partial dbias sums (HAS_BIAS)
    stride_dy, stride_dh, stride_h, stride_dx,
    n_rows, n_cols, offset,
    IS_RMS: tl.constexpr, HAS_DH: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # grid (row groups, column blocks): row group p walks row blocks p, p + P, ...
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32) + offset
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for blk in range(pid, tl.cdiv(n_rows, BLOCK_M), tl.num_programs(0)):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        r64 = rows.to(tl.int64)[:, None]
        dy = tl.load(DY + r64 * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = tl.load(H + r64 * stride_h + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        c2 = tl.load(C2 + rows, mask=row_ok, other=0.0)
        if IS_RMS:
            n = h * rstd[:, None]
            dh = rstd[:, None] * (dy * w[None, :] - n * c2[:, None])
        else:
            mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
            c1 = tl.load(C1 + rows, mask=row_ok, other=0.0)
            n = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
            dh = rstd[:, None] * (dy * w[None, :] - c1[:, None] - n * c2[:, None])
        if HAS_DH:
            dh += tl.load(DH + r64 * stride_dh + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + r64 * stride_dx + cols[None, :], dh.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * n, axis=0)
        if HAS_BIAS:
            db += tl.sum(dy, axis=0)
    tl.store(DW_PART + pid * n_cols + cols, dw, mask=col_ok)
    if HAS_BIAS:
        tl.store(DB_PART + pid * n_cols + cols, db, mask=col_ok)
