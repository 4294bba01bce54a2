"""Triton RMSNorm / LayerNorm for PyTorch (optionally fused residual add): launchers and autograd.

    norm_triton(x, weight, bias, residual, *, rms, eps, offset, blocks=None) -> y | (y, h)

Limits: hidden <= 16384 (a row lives on chip); any leading dims (flattened to rows; a
non-unit last-dim stride costs a copy); fp16/bf16/fp32 with fp32 statistics.
Fast where: memory-bound rows of 1k-8k columns; the forward reads x (+ residual) once and
writes y (+ h) once, the backward reads dy, h (+ dh) once and writes dx once, with the
dweight/dbias reduction over a persistent grid (no atomics, deterministic). Past
WHOLE_ROW_BWD_MAX columns the backward is column-blocked (two kernels, dy and h read twice)
so that no row-wide vector stays in registers.
Arguments arrive validated from ``kernels.torch_ops``. ``LAUNCHES`` counts kernel launches.
"""
import collections
import dataclasses
from typing import Optional

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before triton is imported: the interpreter when there is no GPU

import torch  # noqa: E402
import triton  # noqa: E402

from .._platform import triton_interpreting  # noqa: E402
from .._aot import aot_kernel, jit_module, triton_dtype  # noqa: E402
from . import triton_kernels  # noqa: E402

LAUNCHES: collections.Counter = collections.Counter()
WHOLE_ROW_BWD_MAX = 8192  # columns; wider rows take the column-blocked backward


def _check_pow2(name, v, hi):
    if not isinstance(v, int) or not 1 <= v <= hi or v & (v - 1):
        raise ValueError(f"{name}={v!r} must be a power of two in [1, {hi}]")


@dataclasses.dataclass(frozen=True)
class NormBlocks:
    """block_m rows per tile (whole rows) of the forward and the whole-row backward;
    bwd_programs: backward programs along the rows (partial dweight rows), 0 = per device.
    bwd_block_m x bwd_block_n tiles and bwd_warps: the column-blocked backward (hidden >
    WHOLE_ROW_BWD_MAX) only."""

    block_m: int = 1
    num_warps: int = 4
    bwd_programs: int = 0
    bwd_block_m: int = 4
    bwd_block_n: int = 1024
    bwd_warps: int = 8
    # whole-row backward: row blocks in flight per program (cp.async stages; 1 = no pipelining)
    bwd_stages: int = 1

    def __post_init__(self):
        _check_pow2("block_m", self.block_m, 256)
        _check_pow2("bwd_block_m", self.bwd_block_m, 256)
        _check_pow2("bwd_block_n", self.bwd_block_n, WHOLE_ROW_BWD_MAX)
        for name in ("num_warps", "bwd_warps"):
            if getattr(self, name) not in (1, 2, 4, 8, 16, 32):
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of 1, 2, 4, 8, 16, 32")
        if not isinstance(self.bwd_programs, int) or self.bwd_programs < 0:
            raise ValueError(f"bwd_programs={self.bwd_programs!r} must be an int >= 0 (0 = auto)")
        if self.bwd_stages not in (1, 2, 3, 4):
            raise ValueError(f"bwd_stages={self.bwd_stages!r} must be 1, 2, 3 or 4")


def default_blocks(hidden: int, dtype: torch.dtype, *, capability: Optional[tuple] = None) -> NormBlocks:
    """Per-device defaults. ``capability`` None means the CPU interpreter (large numpy tiles).

    GPU: about 4k-8k fp32 elements per tile, ~16-32 per thread; checked spill-free on sm_80
    and sm_90 at fp32/fp16/bf16 by tests/test_encoder_kernels_aot.py. Past 8192 columns the
    whole-row backward's three loop-carried row vectors (w, dweight, dbias) spilled at any
    warp count, so the backward is column-blocked there: [4, 1024] tiles, 8 warps.
    """
    block_n = triton.next_power_of_2(hidden)
    if capability is None:
        return NormBlocks(block_m=max(1, min(64, 32768 // block_n)), num_warps=4, bwd_programs=4,
                          bwd_block_m=8, bwd_block_n=4096)
    if block_n <= 1024:
        warps = 4
    elif block_n <= 4096:  # fp32 with 8 warps spilled at 4096 columns on sm_80
        warps = 16 if block_n == 4096 and dtype == torch.float32 else 8
    else:  # fp32 at 8192 with 16 warps: ptxas gave rms_norm's forward 32 registers and spilled on sm_80
        warps = 16 if block_n <= 8192 and dtype != torch.float32 else 32
    block_m = max(1, min(16, 4096 // block_n))
    return NormBlocks(block_m=block_m, num_warps=warps, bwd_stages=bwd_stages(block_m, block_n, dtype))


def bwd_stages(block_m: int, block_n: int, dtype) -> int:
    """Cp.async stages of the whole-row backward: its three row tiles (dy, h, dh) a stage in at
    most about 48 KiB of shared memory beyond the first, so two programs still fit an SM.
    Without them the backward holds one row block's loads in flight a program, at 2 programs an
    SM (~100 registers x 256 threads): about the ~32 KB an SM needs in flight to stream at an
    H100's copy bandwidth, with no overlap of its own compute (fwd+bwd read 75% of copy on the
    H200). Compiled for sm_90 at hidden 4096 bf16: 3 stages, 102 registers, no spills."""
    stage = 3 * block_m * block_n * dtype.itemsize
    return max(1, min(3, 1 + (48 * 1024) // stage))


def _rows(t: torch.Tensor) -> torch.Tensor:
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _norm_fwd(x2, w, b, r2, *, rms, eps, offset, blocks):
    """-> y, h (None without residual), mean (None for rms), rstd; all [rows, ...]."""
    m, n = x2.shape
    y = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    h = torch.empty_like(y) if r2 is not None else None
    rstd = torch.empty(m, dtype=torch.float32, device=x2.device)
    mean = None if rms else torch.empty_like(rstd)
    grid = (triton.cdiv(m, blocks.block_m),)
    triton_kernels._norm_fwd_kernel[grid](
        x2, r2 if r2 is not None else x2, w, b if b is not None else w, y,
        h if h is not None else y, mean if mean is not None else rstd, rstd,
        x2.stride(0), r2.stride(0) if r2 is not None else 0, y.stride(0),
        h.stride(0) if h is not None else 0, m, n, eps, offset,
        IS_RMS=rms, HAS_RESIDUAL=r2 is not None, HAS_BIAS=b is not None,
        BLOCK_M=blocks.block_m, BLOCK_N=triton.next_power_of_2(n), num_warps=blocks.num_warps,
    )
    LAUNCHES["_norm_fwd_kernel"] += 1
    return y, h, mean, rstd


def _programs(n_blocks, blocks, device, col_blocks=1):
    """Backward programs along the rows: bwd_programs, else about 4 per SM in all."""
    if blocks.bwd_programs:
        return min(n_blocks, blocks.bwd_programs)
    if device.type == "cuda" and not triton_interpreting():
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return min(n_blocks, max(1, 4 * sms // col_blocks))
    return min(n_blocks, 4)


def _norm_bwd(dy2, dh2, h2, w, mean, rstd, *, rms, offset, has_bias, blocks):
    """-> dx [rows, n] (h's dtype), dweight, dbias (None for rms) in the weight's dtype."""
    m, n = h2.shape
    if n > WHOLE_ROW_BWD_MAX:
        return _norm_bwd_col_blocked(dy2, dh2, h2, w, mean, rstd, rms=rms, offset=offset,
                                     has_bias=has_bias, blocks=blocks)
    p = _programs(triton.cdiv(m, blocks.block_m), blocks, h2.device)
    dx = torch.empty((m, n), dtype=h2.dtype, device=h2.device)
    dw_part = torch.empty((p, n), dtype=torch.float32, device=h2.device)
    db_part = torch.empty_like(dw_part) if has_bias else dw_part
    triton_kernels._norm_bwd_kernel[(p,)](
        dy2, dh2 if dh2 is not None else dy2, h2, w, mean if mean is not None else rstd, rstd,
        dx, dw_part, db_part,
        dy2.stride(0), dh2.stride(0) if dh2 is not None else 0, h2.stride(0), dx.stride(0),
        m, n, offset, IS_RMS=rms, HAS_DH=dh2 is not None, HAS_BIAS=has_bias,
        BLOCK_M=blocks.block_m, BLOCK_N=triton.next_power_of_2(n), NUM_STAGES=blocks.bwd_stages,
        num_warps=blocks.num_warps,
    )
    LAUNCHES["_norm_bwd_kernel"] += 1
    dw = dw_part.sum(0).to(w.dtype)
    db = db_part.sum(0).to(w.dtype) if has_bias else None
    return dx, dw, db


def _norm_bwd_col_blocked(dy2, dh2, h2, w, mean, rstd, *, rms, offset, has_bias, blocks):
    """``_norm_bwd`` for wide rows: row means c1, c2, then a (row groups, column blocks) grid."""
    m, n = h2.shape
    bm, bn = blocks.bwd_block_m, blocks.bwd_block_n
    c2 = torch.empty(m, dtype=torch.float32, device=h2.device)
    c1 = c2 if rms else torch.empty_like(c2)
    mean = mean if mean is not None else rstd
    triton_kernels._norm_bwd_row_sums_kernel[(triton.cdiv(m, bm),)](
        dy2, h2, w, mean, rstd, c1, c2, dy2.stride(0), h2.stride(0), m, n, offset,
        IS_RMS=rms, BLOCK_M=bm, BLOCK_N=bn, num_warps=blocks.bwd_warps,
    )
    LAUNCHES["_norm_bwd_row_sums_kernel"] += 1
    col_blocks = triton.cdiv(n, bn)
    p = _programs(triton.cdiv(m, bm), blocks, h2.device, col_blocks)
    dx = torch.empty((m, n), dtype=h2.dtype, device=h2.device)
    dw_part = torch.empty((p, n), dtype=torch.float32, device=h2.device)
    db_part = torch.empty_like(dw_part) if has_bias else dw_part
    triton_kernels._norm_bwd_col_block_kernel[(p, col_blocks)](
        dy2, dh2 if dh2 is not None else dy2, h2, w, mean, rstd, c1, c2, dx, dw_part, db_part,
        dy2.stride(0), dh2.stride(0) if dh2 is not None else 0, h2.stride(0), dx.stride(0),
        m, n, offset, IS_RMS=rms, HAS_DH=dh2 is not None, HAS_BIAS=has_bias,
        BLOCK_M=bm, BLOCK_N=bn, num_warps=blocks.bwd_warps,
    )
    LAUNCHES["_norm_bwd_col_block_kernel"] += 1
    dw = dw_part.sum(0).to(w.dtype)
    db = db_part.sum(0).to(w.dtype) if has_bias else None
    return dx, dw, db


class _NormFunction(torch.autograd.Function):
    """Differentiable in x, weight, bias, residual; returns y, or (y, h) with a residual."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, rms, eps, offset, blocks):
        x2, weight = _rows(x), weight.contiguous()
        bias = bias.contiguous() if bias is not None else None
        r2 = _rows(residual) if residual is not None else None
        y, h, mean, rstd = _norm_fwd(x2, weight, bias, r2, rms=rms, eps=eps, offset=offset,
                                     blocks=blocks)
        ctx.save_for_backward(h if h is not None else x2, weight, mean, rstd)
        ctx.cfg = (rms, offset, bias is not None, residual is not None, blocks, x.shape)
        ctx.set_materialize_grads(False)
        if residual is None:
            return y.view(x.shape)
        return y.view(x.shape), h.view(x.shape)

    @staticmethod
    def backward(ctx, dy, dh=None):
        h2, weight, mean, rstd = ctx.saved_tensors
        rms, offset, has_bias, has_res, blocks, shape = ctx.cfg
        dy2 = _rows(dy) if dy is not None else torch.zeros_like(h2)
        dh2 = _rows(dh) if dh is not None else None
        dx, dw, db = _norm_bwd(dy2, dh2, h2, weight, mean, rstd, rms=rms, offset=offset,
                               has_bias=has_bias, blocks=blocks)
        dx = dx.view(shape)
        return dx, dw, db, (dx if has_res else None), None, None, None, None


def norm_triton(x, weight, bias, residual, *, rms: bool, eps: float, offset: float,
                blocks: Optional[NormBlocks] = None):
    """RMSNorm (rms=True, bias None) or LayerNorm on validated arguments (see ``spec.py``)."""
    if blocks is None:
        cap = None if triton_interpreting() or x.device.type != "cuda" else \
            torch.cuda.get_device_capability(x.device)
        blocks = default_blocks(x.shape[-1], x.dtype, capability=cap)
    return _NormFunction.apply(x, weight, bias, residual, bool(rms), float(eps), float(offset), blocks)


def aot_kernels(hidden=2048, dtype=torch.bfloat16, *, rms=True, residual=True,
                capability=(9, 0)) -> dict:
    """name -> AotKernel for the forward and backward kernels in their default configuration
    (past WHOLE_ROW_BWD_MAX columns the backward is the two column-blocked kernels)."""
    mod = jit_module(triton_kernels)
    blocks = default_blocks(hidden, dtype, capability=tuple(capability))
    ty, f32 = "*" + triton_dtype(dtype), "*fp32"
    meta = dict(IS_RMS=rms, HAS_BIAS=not rms, BLOCK_M=blocks.block_m,
                BLOCK_N=triton.next_power_of_2(hidden))
    sizes16 = ("n_cols",) if hidden % 16 == 0 else ()  # as the JIT specializes 1152, 2048, ...
    fwd_ptrs = dict(X=ty, R=ty, W=ty, B=ty, Y=ty, H=ty, MEAN=f32, RSTD=f32)
    bwd_ptrs = dict(DY=ty, DH=ty, H=ty, W=ty, MEAN=f32, RSTD=f32, C1=f32, C2=f32, DX=ty,
                    DW_PART=f32, DB_PART=f32)
    out = {"_norm_fwd_kernel": aot_kernel(mod._norm_fwd_kernel, pointers=fwd_ptrs,
                                          constexprs={**meta, "HAS_RESIDUAL": residual},
                                          floats=("eps", "offset"), num_warps=blocks.num_warps,
                                          sizes16=sizes16)}
    if hidden <= WHOLE_ROW_BWD_MAX:
        out["_norm_bwd_kernel"] = aot_kernel(mod._norm_bwd_kernel, pointers=bwd_ptrs,
                                             constexprs={**meta, "HAS_DH": residual,
                                                         "NUM_STAGES": blocks.bwd_stages},
                                             floats=("offset",), num_warps=blocks.num_warps,
                                             sizes16=sizes16)
        return out
    wide = dict(IS_RMS=rms, BLOCK_M=blocks.bwd_block_m, BLOCK_N=blocks.bwd_block_n)
    for fn, extra in ((mod._norm_bwd_row_sums_kernel, {}),
                      (mod._norm_bwd_col_block_kernel, dict(HAS_DH=residual, HAS_BIAS=not rms))):
        out[fn.__name__] = aot_kernel(fn, pointers=bwd_ptrs, constexprs={**wide, **extra},
                                      floats=("offset",), num_warps=blocks.bwd_warps, sizes16=sizes16)
    return out
