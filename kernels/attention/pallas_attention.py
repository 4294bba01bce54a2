"""MQA/GQA flash attention in JAX Pallas (GPU/Triton lowering), forward and backward.

Computes softmax(scale * q k^T [soft-capped, masked]) v for q [B, Sq, H, D] and
k, v [B, Skv, KVH, D], H % KVH == 0, with bottom-right causal masks, sliding windows,
softcap and segment ids exactly as ``spec.py``. The G = H / KVH query heads of a kv
group are folded into the rows of each tile (row r = s * G + g), so every K/V tile is
read once per group, never once per query head, and dK/dV accumulate over the G heads
inside the kernel. Only Q/O/dO are re-laid out; K/V are copied only to pad a length
that is not a block multiple or a head_dim that is not a power of two (>= 16).

Limits: head_dim <= 256 (padded to a power of two, so 80/96 cost as much as 128);
fp16/bf16/fp32 with fp32 accumulation. Causal and windowed tiles skip fully masked
K/V blocks in all three loops; segment ids mask but do not skip. Bidirectional blocks
(``q_end``, int32 [B, Sq]: each query's last visible key, from ``jax_ops``) ride along as
a per-row input like segment ids; the dK/dV pass also gets per-key-block query counts
(searchsorted over q_end, computed here in jnp) to bound its row loop.
Fast where: long sequences with MQA/GQA (large G) on GPU, where the K/V read is
amortized over G heads. Without a GPU it runs in Pallas interpret mode (slow; tests).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .._platform import pallas_interpret_default
from .pallas_kernels import (LANES, QEND_COUNTS, TileStatics, _bwd_dkdv_kernel, _bwd_dq_kernel,
                             _fwd_kernel)


@dataclasses.dataclass(frozen=True)
class PallasAttentionBlocks:
    """Tile sizes and Triton launch knobs. block_q counts folded rows (query x group head)."""

    block_q: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_q", "block_k"):
            b = getattr(self, name)
            if not isinstance(b, int) or b < 16 or b & (b - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {b!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be one of 1, 2, 4, 8, 16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"num_stages must be an int >= 1, got {self.num_stages!r}")


def default_blocks(head_dim: int, *, interpret: bool) -> PallasAttentionBlocks:
    """Default tiles: GPU-sized for compiled runs, large for interpret mode (fewer grid steps)."""
    if interpret:
        return PallasAttentionBlocks(block_q=256, block_k=256, num_warps=4, num_stages=1)
    if head_dim <= 64:
        return PallasAttentionBlocks(block_q=128, block_k=64, num_warps=4, num_stages=2)
    if head_dim <= 128:
        return PallasAttentionBlocks(block_q=128, block_k=64, num_warps=8, num_stages=2)
    return PallasAttentionBlocks(block_q=64, block_k=64, num_warps=8, num_stages=1)


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything static about one call (hashable: a jit / custom_vjp static argument)."""

    causal: bool
    window: int | None
    softcap: float | None
    scale: float
    blocks: PallasAttentionBlocks
    interpret: bool


def _pad_to(x, axis: int, size: int):
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


def _tiles(q_shape, kv_len, kv_heads, cfg: _Config, has_segments: bool, has_qend: bool = False):
    """Static tiling of one problem: TileStatics, padded row / kv / head_dim sizes."""
    _, q_len, heads, d = q_shape
    group = heads // kv_heads
    bq = min(cfg.blocks.block_q, max(16, pl.next_power_of_2(q_len * group)))
    bk = min(cfg.blocks.block_k, max(16, pl.next_power_of_2(kv_len)))
    t = TileStatics(q_len=q_len, kv_len=kv_len, group=group, block_q=bq, block_k=bk,
                    causal=cfg.causal, window=cfg.window, softcap=cfg.softcap,
                    scale=cfg.scale, has_segments=has_segments, has_qend=has_qend)
    rows_p = pl.cdiv(t.rows, bq) * bq
    kv_p = pl.cdiv(kv_len, bk) * bk
    d_p = max(16, pl.next_power_of_2(d))
    return t, rows_p, kv_p, d_p


def _fold(x, kv_heads, rows_p, d_p):
    """[B, Sq, H, D] -> [B, KVH, rows_p, Dp], row r = s * G + g (zero padded)."""
    b, sq, h, d = x.shape
    x = x.reshape(b, sq, kv_heads, h // kv_heads, d).transpose(0, 2, 1, 3, 4)
    x = x.reshape(b, kv_heads, sq * (h // kv_heads), d)
    return _pad_to(_pad_to(x, 2, rows_p), 3, d_p)


def _unfold(x, q_shape):
    """Inverse of _fold: [B, KVH, rows_p, Dp] -> [B, Sq, H, D]."""
    b, sq, h, d = q_shape
    kvh = x.shape[1]
    x = x[:, :, : sq * (h // kvh), :d].reshape(b, kvh, sq, h // kvh, d)
    return x.transpose(0, 2, 1, 3, 4).reshape(b, sq, h, d)


def _prepare(q, k, v, q_ids, kv_ids, cfg: _Config, q_end=None):
    """Tiling plus padded operands: folded q, padded k/v, per-row and per-key segment ids,
    and with q_end its per-row copy [B, rows_p] (padded rows repeat the last real row's, so a
    tile's min / max q_end are its real rows' bounds)."""
    kvh = k.shape[2]
    t, rows_p, kv_p, d_p = _tiles(q.shape, k.shape[1], kvh, cfg, q_ids is not None, q_end is not None)
    qf = _fold(q, kvh, rows_p, d_p)
    kp = _pad_to(_pad_to(k, 1, kv_p), 3, d_p)  # copies only when padding is needed
    vp = _pad_to(_pad_to(v, 1, kv_p), 3, d_p)
    segs = []
    if q_ids is not None:
        rows_ids = jnp.repeat(q_ids.astype(jnp.int32), t.group, axis=1)  # [B, Sq * G]
        segs = [_pad_to(rows_ids, 1, rows_p), _pad_to(kv_ids.astype(jnp.int32), 1, kv_p)]
    qend = []
    if q_end is not None:
        rows_end = jnp.repeat(q_end.astype(jnp.int32), t.group, axis=1)  # [B, Sq * G]
        qend = [jnp.pad(rows_end, ((0, 0), (0, rows_p - t.rows)), mode="edge")]
    return t, qf, kp, vp, segs, qend


def _qend_counts(q_end, t: TileStatics, kv_p: int):
    """[B, nk, QEND_COUNTS * LANES] int32: per key block j (c_first = j * bk, c_last its last
    real key), the queries whose q_end is < c_first, c_first + bk - 1, c_last + W and
    c_first + W (q_end is non-decreasing: a searchsorted), each broadcast over LANES."""
    c_first = jnp.arange(kv_p // t.block_k, dtype=jnp.int32) * t.block_k
    c_last = jnp.minimum(c_first + t.block_k, t.kv_len) - 1
    w = t.window or 0
    xs = jnp.stack([c_first, c_first + t.block_k - 1, c_last + w, c_first + w], -1)  # [nk, 4]
    counts = jax.vmap(lambda e: jnp.searchsorted(e, xs, side="left"))(q_end.astype(jnp.int32))
    return jnp.repeat(counts.astype(jnp.int32), LANES, axis=-1).reshape(q_end.shape[0], -1, QEND_COUNTS * LANES)


def _params(cfg: _Config):
    return plgpu.CompilerParams(num_warps=cfg.blocks.num_warps,
                                num_stages=cfg.blocks.num_stages)


def _forward(q, k, v, q_ids, kv_ids, cfg: _Config, q_end=None):
    """Launch the forward kernel; return (o [B, Sq, H, D], lse folded [B, KVH, rows_p])."""
    t, qf, kp, vp, segs, qend = _prepare(q, k, v, q_ids, kv_ids, cfg, q_end)
    b, kvh, rows_p, d_p = qf.shape
    kv_p, bq = kp.shape[1], t.block_q
    q_tile = pl.BlockSpec((None, None, bq, d_p), lambda i, n, h: (n, h, i, 0))
    kv_full = pl.BlockSpec((None, kv_p, None, d_p), lambda i, n, h: (n, 0, h, 0))
    seg_specs = [pl.BlockSpec((None, bq), lambda i, n, h: (n, i)),
                 pl.BlockSpec((None, kv_p), lambda i, n, h: (n, 0))] if segs else []
    qend_specs = [pl.BlockSpec((None, bq), lambda i, n, h: (n, i))] if qend else []
    of, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, t=t),
        grid=(rows_p // bq, b, kvh),
        in_specs=[q_tile, kv_full, kv_full, *seg_specs, *qend_specs],
        out_specs=[q_tile, pl.BlockSpec((None, None, bq), lambda i, n, h: (n, h, i))],
        out_shape=[jax.ShapeDtypeStruct(qf.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, kvh, rows_p), jnp.float32)],
        compiler_params=_params(cfg),
        interpret=cfg.interpret,
        name="mqa_flash_fwd",
    )(qf, kp, vp, *segs, *qend)
    return _unfold(of, q.shape), lse


def _backward(q, k, v, q_ids, kv_ids, o, lse, do, cfg: _Config, q_end=None):
    """Launch the dK/dV and dQ kernels; return (dq, dk, dv) in the input layouts."""
    t, qf, kp, vp, segs, qend = _prepare(q, k, v, q_ids, kv_ids, cfg, q_end)
    b, kvh, rows_p, d_p = qf.shape
    kv_p, bq, bk = kp.shape[1], t.block_q, t.block_k
    dof = _fold(do, kvh, rows_p, d_p)
    # delta = rowsum(dO * O) per folded row, fp32: O(S * H * D), plain jnp.
    delta = _fold((do.astype(jnp.float32) * o.astype(jnp.float32)).sum(-1, keepdims=True),
                  kvh, rows_p, 1)[..., 0]

    rows_full = pl.BlockSpec((None, None, rows_p, d_p), lambda j, n, h: (n, h, 0, 0))
    row_vec_full = pl.BlockSpec((None, None, rows_p), lambda j, n, h: (n, h, 0))
    kv_full = pl.BlockSpec((None, kv_p, None, d_p), lambda j, n, h: (n, 0, h, 0))
    kv_tile = pl.BlockSpec((None, bk, None, d_p), lambda j, n, h: (n, j, h, 0))
    seg_full = [pl.BlockSpec((None, rows_p), lambda j, n, h: (n, 0)),
                pl.BlockSpec((None, kv_p), lambda j, n, h: (n, 0))] if segs else []
    qend_full, qend_in = [], []
    if qend:  # the rows' q_end, and this key block's query counts
        qend_full = [pl.BlockSpec((None, rows_p), lambda j, n, h: (n, 0)),
                     pl.BlockSpec((None, None, QEND_COUNTS * LANES), lambda j, n, h: (n, j, 0))]
        qend_in = [qend[0], _qend_counts(q_end, t, kv_p)]
    dkp, dvp = pl.pallas_call(
        functools.partial(_bwd_dkdv_kernel, t=t),
        grid=(kv_p // bk, b, kvh),
        in_specs=[rows_full, kv_full, kv_full, rows_full, row_vec_full, row_vec_full, *seg_full,
                  *qend_full],
        out_specs=[kv_tile, kv_tile],
        out_shape=[jax.ShapeDtypeStruct(kp.shape, k.dtype), jax.ShapeDtypeStruct(vp.shape, v.dtype)],
        compiler_params=_params(cfg),
        interpret=cfg.interpret,
        name="mqa_flash_bwd_dkdv",
    )(qf, kp, vp, dof, lse, delta, *segs, *qend_in)

    q_tile = pl.BlockSpec((None, None, bq, d_p), lambda i, n, h: (n, h, i, 0))
    row_vec_tile = pl.BlockSpec((None, None, bq), lambda i, n, h: (n, h, i))
    seg_q = [pl.BlockSpec((None, bq), lambda i, n, h: (n, i)),
             pl.BlockSpec((None, kv_p), lambda i, n, h: (n, 0))] if segs else []
    qend_q = [pl.BlockSpec((None, bq), lambda i, n, h: (n, i))] if qend else []
    dqf = pl.pallas_call(
        functools.partial(_bwd_dq_kernel, t=t),
        grid=(rows_p // bq, b, kvh),
        in_specs=[q_tile, kv_full, kv_full, q_tile, row_vec_tile, row_vec_tile, *seg_q, *qend_q],
        out_specs=q_tile,
        out_shape=jax.ShapeDtypeStruct(qf.shape, q.dtype),
        compiler_params=_params(cfg),
        interpret=cfg.interpret,
        name="mqa_flash_bwd_dq",
    )(qf, kp, vp, dof, lse, delta, *segs, *qend)
    skv, d = k.shape[1], k.shape[3]
    return _unfold(dqf, q.shape), dkp[:, :skv, :, :d], dvp[:, :skv, :, :d]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_ids, kv_ids, cfg, q_end):
    return _forward(q, k, v, q_ids, kv_ids, cfg, q_end)[0]


def _flash_fwd(q, k, v, q_ids, kv_ids, cfg, q_end):
    o, lse = _forward(q, k, v, q_ids, kv_ids, cfg, q_end)
    return o, (q, k, v, q_ids, kv_ids, q_end, o, lse)


def _flash_bwd(cfg, res, do):
    q, k, v, q_ids, kv_ids, q_end, o, lse = res
    dq, dk, dv = _backward(q, k, v, q_ids, kv_ids, o, lse, do, cfg, q_end)
    return dq, dk, dv, None, None, None  # segment ids and q_end are integers: no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)
_flash_jit = jax.jit(_flash, static_argnums=(5,))


def attention_pallas(q, k, v, *, causal, window, softcap, scale, q_segment_ids,
                     kv_segment_ids, blocks: PallasAttentionBlocks | None = None,
                     interpret: bool | None = None, q_end=None):
    """Flash attention on validated arguments (see ``kernels.jax_ops.attention``).

    scale: float; softcap: float | None; window: int | None; segment ids: int arrays
    [B, Sq] / [B, Skv] or both None. q_end: None, or int32 [B, Sq] each query's last visible
    key (bidirectional blocks; causal only). blocks=None picks ``default_blocks``; interpret=None
    interprets unless JAX's default backend is a GPU. Differentiable in q, k, v.
    """
    if interpret is None:
        interpret = pallas_interpret_default()
    if blocks is None:
        blocks = default_blocks(q.shape[-1], interpret=interpret)
    cfg = _Config(causal=bool(causal), window=window,
                  softcap=None if softcap is None else float(softcap), scale=float(scale),
                  blocks=blocks, interpret=bool(interpret))
    if q_end is not None and not causal:
        raise ValueError("q_end (bidirectional_ids) needs causal=True")
    return _flash_jit(q, k, v, q_segment_ids, kv_segment_ids, cfg, q_end)
