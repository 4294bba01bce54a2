"""Pallas (GPU/Triton lowering) RMSNorm / LayerNorm for JAX, optionally fused with the residual add.

    norm_pallas(x, weight, bias, residual, *, rms, eps, offset, blocks=None, interpret=None)

Same math and layout as the Triton kernels (``triton_kernels.py``): the forward normalizes
block_m whole rows per program from a [block_m, next_pow2(hidden)] masked tile with fp32
statistics; the backward runs a fixed grid of ``bwd_programs`` programs, each striding over
row blocks and keeping fp32 partial dweight/dbias sums, reduced after the call. Operands
are whole-array refs read with masked gathers, so odd hidden sizes (100, 1152) and row
counts need no padding copies. Limits: hidden <= 16384; offsets are 32-bit in the Triton
lowering (arrays < 2^31 elements). Fast where: memory-bound rows of 1k-8k columns on GPU;
in interpret mode (no GPU) it is slow and meant for tests.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .._platform import pallas_interpret_default


@dataclasses.dataclass(frozen=True)
class PallasNormBlocks:
    """block_m rows per tile (whole rows), Triton num_warps, backward grid size."""

    block_m: int = 1
    num_warps: int = 4
    bwd_programs: int = 512

    def __post_init__(self):
        if not isinstance(self.block_m, int) or not 1 <= self.block_m <= 256 or self.block_m & (self.block_m - 1):
            raise ValueError(f"block_m must be a power of two in [1, 256], got {self.block_m!r}")
        if self.num_warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"num_warps must be one of 1, 2, 4, 8, 16, 32, got {self.num_warps!r}")
        if not isinstance(self.bwd_programs, int) or self.bwd_programs < 1:
            raise ValueError(f"bwd_programs must be an int >= 1, got {self.bwd_programs!r}")


def default_blocks(hidden: int, *, interpret: bool) -> PallasNormBlocks:
    block_n = pl.next_power_of_2(hidden)
    if interpret:  # fewer, larger grid steps
        return PallasNormBlocks(block_m=max(1, min(64, 32768 // block_n)), num_warps=4, bwd_programs=4)
    warps = 4 if block_n <= 1024 else (8 if block_n <= 4096 else 16)
    return PallasNormBlocks(block_m=max(1, min(16, 4096 // block_n)), num_warps=warps, bwd_programs=512)


@dataclasses.dataclass(frozen=True)
class _Config:
    rms: bool
    eps: float
    offset: float
    blocks: PallasNormBlocks
    interpret: bool


def _tile(rows_start, block_m, block_n, n_rows, n_cols):
    rows = rows_start + jnp.arange(block_m)
    cols = jnp.arange(block_n)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return rows, cols, (rows[:, None], cols[None, :]), mask


def _fwd_kernel(*refs, cfg: _Config, has_res: bool, has_bias: bool, block_n: int):
    it = iter(refs)
    x_ref, w_ref = next(it), next(it)
    r_ref = next(it) if has_res else None
    b_ref = next(it) if has_bias else None
    y_ref = next(it)
    h_ref = next(it) if has_res else None
    mean_ref = None if cfg.rms else next(it)
    rstd_ref = next(it)
    n_rows, n_cols = x_ref.shape
    bm = cfg.blocks.block_m
    rows, cols, idx, mask = _tile(pl.program_id(0) * bm, bm, block_n, n_rows, n_cols)
    x = plgpu.load(x_ref.at[idx], mask=mask, other=0.0)
    if has_res:
        r = plgpu.load(r_ref.at[idx], mask=mask, other=0.0)
        x = (x.astype(jnp.float32) + r.astype(jnp.float32)).astype(x.dtype)  # rounds like x + r
        plgpu.store(h_ref.at[idx], x, mask=mask)
    h = x.astype(jnp.float32)
    if cfg.rms:
        rstd = jax.lax.rsqrt(jnp.sum(h * h, axis=1) / n_cols + cfg.eps)
        n = h * rstd[:, None]
    else:
        mean = jnp.sum(h, axis=1) / n_cols
        d = jnp.where(mask, h - mean[:, None], 0.0)
        rstd = jax.lax.rsqrt(jnp.sum(d * d, axis=1) / n_cols + cfg.eps)
        n = d * rstd[:, None]
        plgpu.store(mean_ref.at[rows], mean, mask=rows < n_rows)
    plgpu.store(rstd_ref.at[rows], rstd, mask=rows < n_rows)
    col_ok = cols < n_cols
    y = n * (plgpu.load(w_ref.at[cols], mask=col_ok, other=0.0).astype(jnp.float32) + cfg.offset)[None, :]
    if has_bias:
        y = y + plgpu.load(b_ref.at[cols], mask=col_ok, other=0.0).astype(jnp.float32)[None, :]
    plgpu.store(y_ref.at[idx], y.astype(y_ref.dtype), mask=mask)


def _bwd_kernel(*refs, cfg: _Config, has_dh: bool, has_bias: bool, block_n: int, steps: int):
    it = iter(refs)
    dy_ref = next(it)
    dh_ref = next(it) if has_dh else None
    h_ref, w_ref = next(it), next(it)
    mean_ref = None if cfg.rms else next(it)
    rstd_ref, dx_ref, dw_ref = next(it), next(it), next(it)
    db_ref = next(it) if has_bias else None
    n_rows, n_cols = h_ref.shape
    bm, programs = cfg.blocks.block_m, dw_ref.shape[0]
    pid = pl.program_id(0)
    cols = jnp.arange(block_n)
    col_ok = cols < n_cols
    w = plgpu.load(w_ref.at[cols], mask=col_ok, other=0.0).astype(jnp.float32) + cfg.offset

    def body(i, carry):  # row block pid + i * programs (past the end: fully masked)
        dw, db = carry
        rows, _, idx, mask = _tile((pid + i * programs) * bm, bm, block_n, n_rows, n_cols)
        row_ok = rows < n_rows
        dy = plgpu.load(dy_ref.at[idx], mask=mask, other=0.0).astype(jnp.float32)
        h = plgpu.load(h_ref.at[idx], mask=mask, other=0.0).astype(jnp.float32)
        rstd = plgpu.load(rstd_ref.at[rows], mask=row_ok, other=0.0)
        if cfg.rms:
            n = h * rstd[:, None]
        else:
            mean = plgpu.load(mean_ref.at[rows], mask=row_ok, other=0.0)
            n = jnp.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c2 = jnp.sum(g * n, axis=1) / n_cols
        if cfg.rms:
            dh = rstd[:, None] * (g - n * c2[:, None])
        else:
            c1 = jnp.sum(g, axis=1) / n_cols
            dh = rstd[:, None] * (g - c1[:, None] - n * c2[:, None])
        if has_dh:
            dh = dh + plgpu.load(dh_ref.at[idx], mask=mask, other=0.0).astype(jnp.float32)
        plgpu.store(dx_ref.at[idx], dh.astype(dx_ref.dtype), mask=mask)
        return dw + jnp.sum(dy * n, axis=0), db + jnp.sum(dy, axis=0)

    zeros = jnp.zeros((block_n,), jnp.float32)
    dw, db = jax.lax.fori_loop(0, steps, body, (zeros, zeros))
    out_idx = (jnp.full((1, 1), pid, jnp.int32), cols[None, :])
    plgpu.store(dw_ref.at[out_idx], dw[None, :], mask=col_ok[None, :])
    if has_bias:
        plgpu.store(db_ref.at[out_idx], db[None, :], mask=col_ok[None, :])


def _forward(x2, w, b, r2, cfg: _Config):
    m, n = x2.shape
    bm = cfg.blocks.block_m
    f32 = jax.ShapeDtypeStruct((m,), jnp.float32)
    out_shape = [jax.ShapeDtypeStruct(x2.shape, x2.dtype)]
    out_shape += [jax.ShapeDtypeStruct(x2.shape, x2.dtype)] if r2 is not None else []
    out_shape += ([] if cfg.rms else [f32]) + [f32]
    outs = pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg, has_res=r2 is not None, has_bias=b is not None,
                          block_n=pl.next_power_of_2(n)),
        grid=(pl.cdiv(m, bm),), out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.blocks.num_warps, num_stages=1),
        interpret=cfg.interpret, name="rms_norm_fwd" if cfg.rms else "layer_norm_fwd",
    )(x2, w, *([r2] if r2 is not None else []), *([b] if b is not None else []))
    y, outs = outs[0], list(outs[1:])
    h = outs.pop(0) if r2 is not None else x2
    mean = None if cfg.rms else outs.pop(0)
    return y, h, mean, outs[0]


def _backward(dy2, dh2, h2, w, mean, rstd, has_bias, cfg: _Config):
    m, n = h2.shape
    bm = cfg.blocks.block_m
    n_blocks = pl.cdiv(m, bm)
    programs = min(n_blocks, cfg.blocks.bwd_programs)
    part = jax.ShapeDtypeStruct((programs, n), jnp.float32)
    out_shape = [jax.ShapeDtypeStruct(h2.shape, h2.dtype), part] + ([part] if has_bias else [])
    outs = pl.pallas_call(
        functools.partial(_bwd_kernel, cfg=cfg, has_dh=dh2 is not None, has_bias=has_bias,
                          block_n=pl.next_power_of_2(n), steps=pl.cdiv(n_blocks, programs)),
        grid=(programs,), out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.blocks.num_warps, num_stages=1),
        interpret=cfg.interpret, name="rms_norm_bwd" if cfg.rms else "layer_norm_bwd",
    )(dy2, *([dh2] if dh2 is not None else []), h2, w, *([mean] if mean is not None else []), rstd)
    dx, dw = outs[0], outs[1].sum(0).astype(w.dtype)
    db = outs[2].sum(0).astype(w.dtype) if has_bias else None
    return dx, dw, db


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _norm(x, w, b, r, cfg):
    return _norm_fwd(x, w, b, r, cfg)[0]


def _norm_fwd(x, w, b, r, cfg):
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    r2 = None if r is None else r.reshape(-1, n)
    y, h, mean, rstd = _forward(x2, w, b, r2, cfg)
    out = y.reshape(x.shape) if r is None else (y.reshape(x.shape), h.reshape(x.shape))
    return out, (h, w, b, mean, rstd)


def _norm_bwd(cfg, res, g):
    h2, w, b, mean, rstd = res
    has_res, has_bias = isinstance(g, (tuple, list)), b is not None
    dy, dh = g if has_res else (g, None)
    n = h2.shape[-1]
    dx, dw, db = _backward(dy.reshape(-1, n), None if dh is None else dh.reshape(-1, n), h2, w,
                           mean, rstd, has_bias, cfg)
    dx = dx.reshape(dy.shape)
    return dx, dw, db, (dx if has_res else None)


_norm.defvjp(_norm_fwd, _norm_bwd)
_norm_jit = jax.jit(_norm, static_argnums=(4,))


def norm_pallas(x, weight, bias, residual, *, rms: bool, eps: float, offset: float,
                blocks: PallasNormBlocks | None = None, interpret: bool | None = None):
    """RMSNorm (rms=True, bias None) or LayerNorm on validated arguments (``kernels.jax_ops``)."""
    if interpret is None:
        interpret = pallas_interpret_default()
    if blocks is None:
        blocks = default_blocks(x.shape[-1], interpret=interpret)
    cfg = _Config(rms=bool(rms), eps=float(eps), offset=float(offset), blocks=blocks,
                  interpret=bool(interpret))
    return _norm_jit(x, weight, bias, residual, cfg)
