"""MQA/GQA flash attention in Pallas for TPU (Mosaic), forward and backward.

Computes softmax(scale * q k^T [soft-capped, masked]) v for q [B, Sq, H, D] and
k, v [B, Skv, KVH, D], H % KVH == 0, with the bottom-right causal mask, sliding window,
softcap and segment ids of ``spec.py``. The G = H / KVH query heads of a kv group are
folded into the rows of each q tile (row r = s * G + g): a K/V tile is DMA'd once per
group, never once per query head, and dK/dV accumulate over the G heads in the kernel
(K/V are never repeated). Three kernels (``pallas_tpu_kernels.py``): forward (o, lse),
dK/dV (grid walks q tiles innermost), dQ (walks kv tiles innermost).

Layout: the wrapper pads lengths to block multiples and head_dim to 128 lanes, and lays
K/V out as [B, KVH, Skv_pad, Dp] (one copy of K/V; Q/O/dO are folded). Causal / windowed
calls skip fully masked tile pairs: visible ranges are host-computed and scalar-prefetched,
the K/V (or Q) index_map clamps into them so skipped steps issue no DMA, and ``pl.when``
skips their compute; tile pairs wholly inside the band run without building a mask.
Segment ids mask but do not skip.

Limits: head_dim <= 256 (padded to 128 / 256 lanes, so 80 costs as much as 128); fp32,
bf16, fp16 inputs with fp32 accumulation. Tiles per chip generation: ``TPU_BLOCKS`` /
``chip_blocks()`` (device kinds such as "TPU v5" / "TPU v5p" mapped to generations by
``kernels/_tpu_chips.py``; an unknown TPU kind warns); sweep candidates: ``candidate_blocks()``
(timed on a TPU by ``benchmarks/sweep.py --ops tpu_attention``).
Fast where: TPU v4 / v5e / v5p / v6e, long sequences with large G (K/V read amortised
over G heads). Elsewhere it runs in TPU interpret mode (a CPU simulator; tests only).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from .._tpu_chips import chip_entry
from .pallas_tpu_kernels import TpuTileStatics, block_ranges, clamp_block, dkdv_kernel, dq_kernel, fwd_kernel

LANES = 128


@dataclasses.dataclass(frozen=True)
class TpuAttentionBlocks:
    """Tile sizes. block_q counts folded rows (query x group head); all are multiples of 128.

    block_kv is the K/V tile DMA'd per grid step; block_kv_compute the chunk one matmul
    takes from it (divides block_kv). The backward kernels use block_q_bwd x block_kv_bwd.
    Tiles larger than a (padded) problem shrink to it.
    """

    block_q: int = 128
    block_kv: int = 128
    block_kv_compute: int = 128
    block_q_bwd: int = 128
    block_kv_bwd: int = 128

    def __post_init__(self):
        for f in dataclasses.fields(self):
            b = getattr(self, f.name)
            if isinstance(b, bool) or not isinstance(b, int) or b < LANES or b % LANES:
                raise ValueError(f"{f.name} must be a positive multiple of {LANES}, got {b!r}")
        if self.block_kv % self.block_kv_compute:
            raise ValueError(f"block_kv_compute={self.block_kv_compute} must divide "
                             f"block_kv={self.block_kv}")


# Starting points per chip generation (device kinds map to generations through
# kernels/_tpu_chips.py: "TPU v5" and "TPU v5p" are both v5p); the benchmark sweeps
# candidate_blocks(). VMEM: v4 32 MiB, v5e 128 MiB, v5p 95 MiB, v6e 128 MiB (MXU 256 wide).
TPU_BLOCKS = {
    "v4": TpuAttentionBlocks(512, 1024, 512, 256, 512),
    "v5e": TpuAttentionBlocks(512, 1024, 512, 512, 512),
    "v5p": TpuAttentionBlocks(512, 1024, 512, 512, 512),
    "v6e": TpuAttentionBlocks(1024, 1024, 512, 512, 1024),
}
DEFAULT_BLOCKS = TpuAttentionBlocks()  # unknown chips and CPU interpret mode (small grids)


def chip_blocks(device_kind: str | None = None) -> TpuAttentionBlocks:
    """The table's tiles for ``device_kind`` (default: the first JAX device), any alias of the
    chip; DEFAULT_BLOCKS for non-TPU kinds, and for unknown TPU kinds with a RuntimeWarning
    (once per kind, ``kernels._tpu_chips.chip_entry``)."""
    return chip_entry(TPU_BLOCKS, device_kind, DEFAULT_BLOCKS, "TPU attention blocks")


def candidate_blocks(device_kind: str | None = None) -> list[TpuAttentionBlocks]:
    """Tiles for a benchmark sweep on ``device_kind``: the table entry first, then a grid."""
    base = chip_blocks(device_kind)
    out = [base]
    for bq in (256, 512, 1024):
        for bk in (256, 512, 1024, 2048):
            for bc in (256, 512):
                if bk % bc == 0:
                    c = TpuAttentionBlocks(bq, bk, bc, min(bq, 512), min(bk, 512))
                    if c not in out:
                        out.append(c)
    return out


def default_interpret():
    """TPU interpret mode (CPU simulator) unless JAX's default backend is a TPU."""
    return False if jax.default_backend() == "tpu" else pltpu.InterpretParams()


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything static about one call (hashable: a jit / custom_vjp static argument)."""

    causal: bool
    window: int | None
    softcap: float | None
    scale: float
    blocks: TpuAttentionBlocks
    interpret: object  # False (compile for TPU) or a pltpu.InterpretParams


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _pad_to(x, axis: int, size: int, value=0):
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def _statics(q_shape, kv_len, kv_heads, cfg: _Config, has_segments, *, backward: bool):
    _, q_len, heads, _ = q_shape
    g = heads // kv_heads
    blk = cfg.blocks
    bq = min(blk.block_q_bwd if backward else blk.block_q, _round_up(q_len * g, LANES))
    bk = min(blk.block_kv_bwd if backward else blk.block_kv, _round_up(kv_len, LANES))
    bc = bk if backward else max(c for c in range(LANES, min(blk.block_kv_compute, bk) + 1, LANES)
                                 if bk % c == 0)
    return TpuTileStatics(q_len=q_len, kv_len=kv_len, group=g, block_q=bq, block_kv=bk,
                          block_kv_compute=bc, causal=cfg.causal, window=cfg.window,
                          softcap=cfg.softcap, scale=cfg.scale, has_segments=has_segments,
                          kv_padded=kv_len % bk != 0)


def _fold(x, kv_heads, rows_p, d_p):
    """[B, Sq, H, D] -> [B, KVH, rows_p, Dp], row r = s * G + g (zero padded)."""
    b, sq, h, d = x.shape
    x = x.reshape(b, sq, kv_heads, h // kv_heads, d).transpose(0, 2, 1, 3, 4)
    return _pad_to(_pad_to(x.reshape(b, kv_heads, sq * (h // kv_heads), d), 2, rows_p), 3, d_p)


def _unfold(x, q_shape):
    """Inverse of _fold: [B, KVH, rows_p, Dp] -> [B, Sq, H, D]."""
    b, sq, h, d = q_shape
    kvh = x.shape[1]
    x = x[:, :, : sq * (h // kvh), :d].reshape(b, kvh, sq, h // kvh, d)
    return x.transpose(0, 2, 1, 3, 4).reshape(b, sq, h, d)


def _kv_layout(x, kv_p, d_p):
    """[B, Skv, KVH, D] -> [B, KVH, Skv_pad, Dp]."""
    return _pad_to(_pad_to(x.transpose(0, 2, 1, 3), 2, kv_p), 3, d_p)


class _Operands:
    """Padded, folded operands and per-row / per-key side inputs for one tiling."""

    def __init__(self, q, k, v, q_ids, kv_ids, t: TpuTileStatics):
        kvh, d = k.shape[2], q.shape[3]
        self.t = t
        self.rows_p = _round_up(t.rows, t.block_q)
        self.kv_p = _round_up(t.kv_len, t.block_kv)
        self.d_p = _round_up(d, LANES)
        self.nq, self.nk = self.rows_p // t.block_q, self.kv_p // t.block_kv
        self.qf = _fold(q, kvh, self.rows_p, self.d_p)
        self.k, self.v = (_kv_layout(x, self.kv_p, self.d_p) for x in (k, v))
        r = np.arange(self.rows_p)
        pos = np.where(r < t.rows, r // t.group, t.q_len - 1) + t.offset  # padded rows: last query
        self.pos = jnp.asarray(pos.astype(np.int32))  # [rows_p]
        self.q_ids = self.kv_ids = None
        if q_ids is not None:
            self.q_ids = _pad_to(jnp.repeat(q_ids.astype(jnp.int32), t.group, axis=1), 1, self.rows_p)
            self.kv_ids = _pad_to(kv_ids.astype(jnp.int32), 1, self.kv_p)
        fwd, dkdv = block_ranges(t, self.nq, self.nk)
        self.tables = [jnp.asarray(a) for a in fwd]  # per q tile: forward and dQ
        self.tables_t = [jnp.asarray(a) for a in dkdv]  # per kv tile: dK/dV

    def side_inputs(self, *, transposed: bool):
        """(arrays, BlockSpec makers) for positions / segment ids. ``transposed``: dK/dV layout."""
        t, bq, bk = self.t, self.t.block_q, self.t.block_kv
        arrays, specs = [], []
        # Index maps take (b, h, outer, inner, lo, hi, full_lo, full_hi); ``qi``/``kj`` pick
        # the q / kv tile, clamped into the visible interval along the inner axis.
        if transposed:
            qi = lambda b, h, j, i, lo, hi, *_: clamp_block(i, lo, hi, j)
            kj = lambda b, h, j, i, *_: j
        else:
            qi = lambda b, h, i, j, *_: i
            kj = lambda b, h, i, j, lo, hi, *_: clamp_block(j, lo, hi, i)
        if t.banded:
            if transposed:
                arrays.append(self.pos[None, :])
                specs.append(pl.BlockSpec((1, bq), lambda *a: (0, qi(*a))))
            else:
                arrays.append(self.pos[:, None])
                specs.append(pl.BlockSpec((bq, 1), lambda *a: (qi(*a), 0)))
        if t.has_segments:
            if transposed:
                arrays += [self.q_ids[:, None, :], self.kv_ids[:, :, None]]
                specs += [pl.BlockSpec((None, 1, bq), lambda *a: (a[0], 0, qi(*a))),
                          pl.BlockSpec((None, bk, 1), lambda *a: (a[0], kj(*a), 0))]
            else:
                arrays += [self.q_ids[:, :, None], self.kv_ids[:, None, :]]
                specs += [pl.BlockSpec((None, bq, 1), lambda *a: (a[0], qi(*a), 0)),
                          pl.BlockSpec((None, 1, bk), lambda *a: (a[0], 0, kj(*a)))]
        return arrays, specs, qi, kj


def _call(kernel, ops: _Operands, grid, in_specs, out_specs, out_shape, scratch, cfg, name):
    return pl.pallas_call(
        functools.partial(kernel, t=ops.t),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4, grid=grid, in_specs=in_specs, out_specs=out_specs,
            scratch_shapes=scratch),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret,
        name=name,
    )


def _forward(q, k, v, q_ids, kv_ids, cfg: _Config):
    """Forward kernel; returns (o [B, Sq, H, D], lse [B, KVH, rows, 1] fp32 natural log)."""
    t = _statics(q.shape, k.shape[1], k.shape[2], cfg, q_ids is not None, backward=False)
    ops = _Operands(q, k, v, q_ids, kv_ids, t)
    b, kvh = q.shape[0], k.shape[2]
    bq, bk, d_p = t.block_q, t.block_kv, ops.d_p
    side, side_specs, qi, kj = ops.side_inputs(transposed=False)
    q_spec = pl.BlockSpec((None, None, bq, d_p), lambda *a: (a[0], a[1], qi(*a), 0))
    kv_spec = pl.BlockSpec((None, None, bk, d_p), lambda *a: (a[0], a[1], kj(*a), 0))
    col_spec = pl.BlockSpec((None, None, bq, 1), lambda *a: (a[0], a[1], qi(*a), 0))
    f32 = jnp.float32
    of, lse = _call(
        fwd_kernel, ops, (b, kvh, ops.nq, ops.nk), [q_spec, kv_spec, kv_spec, *side_specs],
        [q_spec, col_spec],
        [jax.ShapeDtypeStruct(ops.qf.shape, q.dtype),
         jax.ShapeDtypeStruct((b, kvh, ops.rows_p, 1), f32)],
        [pltpu.VMEM((bq, 1), f32), pltpu.VMEM((bq, 1), f32), pltpu.VMEM((bq, d_p), f32)],
        cfg, "tpu_mqa_flash_fwd",
    )(*ops.tables, ops.qf, ops.k, ops.v, *side)
    return _unfold(of, q.shape), lse[:, :, : t.rows]


def _backward_operands(q, k, v, q_ids, kv_ids, o, lse, do, cfg: _Config):
    """Backward tiling plus folded dO and padded lse / delta columns [B, KVH, rows_p, 1]."""
    t = _statics(q.shape, k.shape[1], k.shape[2], cfg, q_ids is not None, backward=True)
    ops = _Operands(q, k, v, q_ids, kv_ids, t)
    kvh = k.shape[2]
    dof = _fold(do, kvh, ops.rows_p, ops.d_p)
    lse = _pad_to(lse, 2, ops.rows_p, jnp.inf)  # padded rows: p = 0
    # delta = rowsum(dO * O) per folded row, fp32: O(S * H * D), plain jnp.
    delta = _fold((do.astype(jnp.float32) * o.astype(jnp.float32)).sum(-1, keepdims=True),
                  kvh, ops.rows_p, 1)
    return ops, dof, lse, delta


def _backward_dkdv(ops: _Operands, dof, lse, delta, cfg: _Config):
    """dK/dV kernel: padded [B, KVH, Skv_pad, Dp] each."""
    t, (b, kvh, rows_p, d_p) = ops.t, ops.qf.shape
    bq, bk = t.block_q, t.block_kv
    side, side_specs, qi, kj = ops.side_inputs(transposed=True)
    q_spec = pl.BlockSpec((None, None, bq, d_p), lambda *a: (a[0], a[1], qi(*a), 0))
    kv_spec = pl.BlockSpec((None, None, bk, d_p), lambda *a: (a[0], a[1], kj(*a), 0))
    row_spec = pl.BlockSpec((None, None, 1, bq), lambda *a: (a[0], a[1], 0, qi(*a)))
    lse_t, delta_t = lse.reshape(b, kvh, 1, rows_p), delta.reshape(b, kvh, 1, rows_p)
    return _call(
        dkdv_kernel, ops, (b, kvh, ops.nk, ops.nq),
        [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec, *side_specs], [kv_spec, kv_spec],
        [jax.ShapeDtypeStruct(ops.k.shape, ops.k.dtype), jax.ShapeDtypeStruct(ops.v.shape, ops.v.dtype)],
        [pltpu.VMEM((bk, d_p), jnp.float32), pltpu.VMEM((bk, d_p), jnp.float32)],
        cfg, "tpu_mqa_flash_bwd_dkdv",
    )(*ops.tables_t, ops.qf, ops.k, ops.v, dof, lse_t, delta_t, *side)


def _backward_dq(ops: _Operands, dof, lse, delta, cfg: _Config):
    """dQ kernel: folded [B, KVH, rows_p, Dp]."""
    t, (b, kvh, _, d_p) = ops.t, ops.qf.shape
    bq, bk = t.block_q, t.block_kv
    side, side_specs, qi, kj = ops.side_inputs(transposed=False)
    q_spec = pl.BlockSpec((None, None, bq, d_p), lambda *a: (a[0], a[1], qi(*a), 0))
    kv_spec = pl.BlockSpec((None, None, bk, d_p), lambda *a: (a[0], a[1], kj(*a), 0))
    col_spec = pl.BlockSpec((None, None, bq, 1), lambda *a: (a[0], a[1], qi(*a), 0))
    return _call(
        dq_kernel, ops, (b, kvh, ops.nq, ops.nk),
        [q_spec, kv_spec, kv_spec, q_spec, col_spec, col_spec, *side_specs], q_spec,
        jax.ShapeDtypeStruct(ops.qf.shape, ops.qf.dtype), [pltpu.VMEM((bq, d_p), jnp.float32)],
        cfg, "tpu_mqa_flash_bwd_dq",
    )(*ops.tables, ops.qf, ops.k, ops.v, dof, lse, delta, *side)


def _backward(q, k, v, q_ids, kv_ids, o, lse, do, cfg: _Config):
    """dK/dV and dQ kernels; returns (dq, dk, dv) in the input layouts."""
    ops, dof, lse, delta = _backward_operands(q, k, v, q_ids, kv_ids, o, lse, do, cfg)
    dkp, dvp = _backward_dkdv(ops, dof, lse, delta, cfg)
    dqf = _backward_dq(ops, dof, lse, delta, cfg)
    skv, d = k.shape[1], k.shape[3]
    unkv = lambda x: x[:, :, :skv, :d].transpose(0, 2, 1, 3)
    return _unfold(dqf, q.shape), unkv(dkp), unkv(dvp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_ids, kv_ids, cfg):
    return _forward(q, k, v, q_ids, kv_ids, cfg)[0]


def _flash_fwd(q, k, v, q_ids, kv_ids, cfg):
    o, lse = _forward(q, k, v, q_ids, kv_ids, cfg)
    return o, (q, k, v, q_ids, kv_ids, o, lse)


def _flash_bwd(cfg, res, do):
    q, k, v, q_ids, kv_ids, o, lse = res
    dq, dk, dv = _backward(q, k, v, q_ids, kv_ids, o, lse, do, cfg)
    return dq, dk, dv, None, None  # segment ids are integers: no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)
_flash_jit = jax.jit(_flash, static_argnums=(5,))


def attention_pallas_tpu(q, k, v, *, causal, window, softcap, scale, q_segment_ids,
                         kv_segment_ids, blocks: TpuAttentionBlocks | None = None,
                         interpret=None):
    """Flash attention on validated arguments (see ``kernels.jax_ops.attention``).

    scale: float; softcap: float | None; window: int | None; segment ids: int arrays
    [B, Sq] / [B, Skv] or both None. blocks=None: ``chip_blocks()`` on a TPU, else
    DEFAULT_BLOCKS. interpret=None: compiled on a TPU, TPU interpret mode elsewhere; True
    or a ``pltpu.InterpretParams`` forces interpret mode. Differentiable in q, k, v.
    """
    if interpret is None:
        interpret = default_interpret()
    elif interpret is True:
        interpret = pltpu.InterpretParams()
    if blocks is None:
        blocks = DEFAULT_BLOCKS if interpret else chip_blocks()
    cfg = _Config(causal=bool(causal), window=window,
                  softcap=None if softcap is None else float(softcap), scale=float(scale),
                  blocks=blocks, interpret=interpret)
    return _flash_jit(q, k, v, q_segment_ids, kv_segment_ids, cfg)
