"""Decode attention (one new token per row against a KV cache) in Pallas for TPU (Mosaic).

q [B, H, D], k_cache / v_cache [B, max_len, KVH, D], cache_seqlens [B]: row b attends cache
positions [0, L_b) (the last ``window`` of them if given); L_b == 0 gives zeros. The G = H / KVH
query heads of a kv group are the rows of one [G_pad, D] tile (G padded to 8 sublanes), so a
cache block is DMA'd once per group. The cache is read in place: [B, max_len, KVH * D] is a
free reshape, and a block is (block_kv, D) of one head when D is a multiple of 128 lanes, or
(block_kv, KVH * D) of all heads otherwise (sliced per head in VMEM); it is never copied or
padded. cache_seqlens are scalar-prefetched into SMEM: the K/V index_map clamps the block
index into the row's visible range, so blocks past L_b (or before its window) issue no DMA,
and ``pl.when`` skips their compute. Lengths are clamped into [0, max_len]. The paged kernel
(``pallas_tpu_paged_decode.py``) shares the tile update, state and query folding below.

Limits: head_dim <= 256; fp32 / bf16 / fp16 with fp32 accumulation; split-K across the
cache is not done (one row's blocks run sequentially), so small batch x kv_heads leaves
TensorCores idle. Fast where: TPU, batch x kv_heads >= cores, long caches with large G.
Elsewhere it runs in TPU interpret mode (a CPU simulator; tests only).
Tiles per chip generation: ``TPU_DECODE_BLOCKS`` / ``decode_chip_blocks()`` (device kinds such
as "TPU v5" / "TPU v5p" mapped by ``kernels/_tpu_chips.py``; an unknown TPU kind warns);
``benchmarks/sweep.py --ops tpu_decode`` times ``decode_candidate_blocks()`` on a TPU.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from .._tpu_chips import chip_entry

LANES, SUBLANES = 128, 8


@dataclasses.dataclass(frozen=True)
class TpuDecodeBlocks:
    """block_kv: cache positions per DMA'd tile, a multiple of 128 (shrinks to short caches)."""

    block_kv: int = 512

    def __post_init__(self):
        b = self.block_kv
        if isinstance(b, bool) or not isinstance(b, int) or b < LANES or b % LANES:
            raise ValueError(f"block_kv must be a positive multiple of {LANES}, got {b!r}")


# Starting points per chip generation (device kinds -> generations: kernels/_tpu_chips.py,
# shared with the attention table); benchmarks/sweep.py --ops tpu_decode times
# decode_candidate_blocks() on a TPU.
TPU_DECODE_BLOCKS = {
    "v4": TpuDecodeBlocks(512),
    "v5e": TpuDecodeBlocks(1024),
    "v5p": TpuDecodeBlocks(1024),
    "v6e": TpuDecodeBlocks(1024),
}
DEFAULT_DECODE_BLOCKS = TpuDecodeBlocks(128)  # unknown chips and CPU interpret mode


def decode_chip_blocks(device_kind: str | None = None) -> TpuDecodeBlocks:
    """The table's tile for ``device_kind`` (default: the first JAX device), any alias of the
    chip; DEFAULT_DECODE_BLOCKS for non-TPU kinds, and for unknown TPU kinds with a
    RuntimeWarning (once per kind)."""
    return chip_entry(TPU_DECODE_BLOCKS, device_kind, DEFAULT_DECODE_BLOCKS, "TPU decode blocks")


def decode_candidate_blocks(device_kind: str | None = None) -> list[TpuDecodeBlocks]:
    """Tiles for a sweep on ``device_kind``: the table entry first, then 256 ... 2048."""
    base = decode_chip_blocks(device_kind)
    return [base] + [TpuDecodeBlocks(b) for b in (256, 512, 1024, 2048) if b != base.block_kv]


@dataclasses.dataclass(frozen=True)
class _Statics:
    max_len: int
    head_dim: int
    heads_per_block: int  # 1 when head_dim % 128 == 0, else all kv heads
    block_kv: int  # positions per tile (paged: page_size)
    window: int | None
    softcap: float | None
    scale: float
    interpret: object  # False or a pltpu.InterpretParams
    pages_per_block: int = 1  # paged (pallas_tpu_paged_decode.py): pages DMA'd per grid step
    pages_per_row: int | None = None
    num_pages: int | None = None


def _visible_blocks(length, s: _Statics):
    """[lo, hi) of the cache tiles (paged: pages) row length ``length`` attends (scalars)."""
    hi = lax.div(length + (s.block_kv - 1), s.block_kv)
    lo = 0 if s.window is None else lax.div(jnp.maximum(length - s.window, 0), s.block_kv)
    return lo, hi


def _kv_block(b, j, lens_ref, s: _Statics):
    lo, hi = _visible_blocks(lens_ref[b], s)
    return jnp.minimum(jnp.maximum(j, lo), jnp.maximum(hi - 1, lo))


def _row_steps(o_ref, m_ref, l_ref, acc_ref, attend):
    """Grid axis 2 walks one row's cache tiles: reset the online-softmax state at the first
    step, ``attend()`` at every step, write o = acc / l at the last (l == 0: zeros)."""
    j = pl.program_id(2)

    @pl.when(j == 0)
    def _():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    attend()

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
        l = l_ref[...]
        o_ref[...] = (acc_ref[...] / jnp.where(l > 0, l, 1.0)).astype(o_ref.dtype)


def _attend_tile(q_ref, k_ref, v_ref, m_ref, l_ref, acc_ref, start, length, s: _Statics):
    """Online-softmax update of every head in the block with the K/V tile of positions
    [start, start + block_kv): k_ref, v_ref [bk, hb * D]; q_ref [hb, Gp, D]."""
    bk, d = s.block_kv, s.head_dim
    cols = start + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    ok = cols < length
    if s.window is not None:
        ok &= cols >= length - s.window
    # positions >= L (stale cache, the edge block past max_len, a page's tail) may hold anything
    live = (start + lax.broadcasted_iota(jnp.int32, (bk, 1), 0)) < length
    for hh in range(s.heads_per_block):  # static: per-head lane slice of the tile
        q = q_ref[hh]
        k, v = k_ref[:, hh * d:(hh + 1) * d], v_ref[:, hh * d:(hh + 1) * d]
        v = jnp.where(live, v, jnp.zeros_like(v))
        prec = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
        sc = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=prec,
                             preferred_element_type=jnp.float32) * s.scale  # [Gp, bk]
        if s.softcap is not None:
            sc = s.softcap * jnp.tanh(sc / s.softcap)
        sc = jnp.where(ok, sc, -jnp.inf)
        m_prev = m_ref[hh]
        m_new = jnp.maximum(m_prev, sc.max(axis=-1, keepdims=True))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(sc - m_safe)
        alpha = jnp.exp(m_prev - m_safe)
        l_ref[hh] = alpha * l_ref[hh] + p.sum(axis=-1, keepdims=True)
        acc_ref[hh] = alpha * acc_ref[hh] + lax.dot_general(
            p.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=prec,
            preferred_element_type=jnp.float32)
        m_ref[hh] = m_new


def _decode_kernel(lens_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, acc_ref, *, s: _Statics):
    # q_ref, o_ref [hb, Gp, D]; k_ref, v_ref [bk, hb * D]; scratch m, l [hb, Gp, 1], acc [hb, Gp, D]
    b, j = pl.program_id(0), pl.program_id(2)
    length = lens_ref[b]
    lo, hi = _visible_blocks(length, s)

    def attend():
        @pl.when((j >= lo) & (j < hi))
        def _():
            _attend_tile(q_ref, k_ref, v_ref, m_ref, l_ref, acc_ref, j * s.block_kv, length, s)

    _row_steps(o_ref, m_ref, l_ref, acc_ref, attend)


def fold_queries(q, kv_heads):
    """q [B, H, D] -> [B, KVH, Gp, D]: a group's heads as rows, padded to 8 sublanes."""
    b, h, d = q.shape
    g = h // kv_heads
    gp = -(-g // SUBLANES) * SUBLANES
    return jnp.pad(q.reshape(b, kv_heads, g, d), ((0, 0), (0, 0), (0, gp - g), (0, 0)))


def row_call(kernel, qf, q_spec, kv_specs, grid, num_scalar_prefetch, s: _Statics, name):
    """pallas_call over grid (B, KVH / hb, row steps): q and o blocks [hb, Gp, D], the online
    softmax's VMEM scratch m, l [hb, Gp, 1] and acc [hb, Gp, D] in fp32."""
    hb, gp, d = q_spec.block_shape[1:]
    f32 = jnp.float32
    return pl.pallas_call(
        functools.partial(kernel, s=s),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=num_scalar_prefetch, grid=grid,
            in_specs=[q_spec, *kv_specs], out_specs=q_spec,
            scratch_shapes=[pltpu.VMEM((hb, gp, 1), f32), pltpu.VMEM((hb, gp, 1), f32),
                            pltpu.VMEM((hb, gp, d), f32)]),
        out_shape=jax.ShapeDtypeStruct(qf.shape, qf.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=s.interpret, name=name)


def resolve_interpret(interpret):
    """None: compiled on a TPU, TPU interpret mode elsewhere; True -> default InterpretParams."""
    if interpret is None:
        return False if jax.default_backend() == "tpu" else pltpu.InterpretParams()
    return pltpu.InterpretParams() if interpret is True else interpret


@functools.partial(jax.jit, static_argnames=("s",))
def _decode(q, k_cache, v_cache, cache_seqlens, s: _Statics):
    b, h, d = q.shape
    max_len, kvh = k_cache.shape[1], k_cache.shape[2]
    hb, bk = s.heads_per_block, s.block_kv
    qf = fold_queries(q, kvh)  # [B, KVH, Gp, D]
    gp = qf.shape[2]
    kf, vf = (x.reshape(b, max_len, kvh * d) for x in (k_cache, v_cache))  # free reshapes
    lens = jnp.clip(cache_seqlens.astype(jnp.int32), 0, max_len)
    q_spec = pl.BlockSpec((None, hb, gp, d), lambda bi, hi, j, lens: (bi, hi, 0, 0))
    kv_spec = pl.BlockSpec((None, bk, hb * d),
                           lambda bi, hi, j, lens: (bi, _kv_block(bi, j, lens, s), hi))
    of = row_call(_decode_kernel, qf, q_spec, [kv_spec, kv_spec], (b, kvh // hb, pl.cdiv(max_len, bk)),
                  1, s, "tpu_decode_attention")(lens, qf, kf, vf)
    return of[:, :, :h // kvh].reshape(b, h, d)


def decode_attention_pallas_tpu(q, k_cache, v_cache, cache_seqlens, *, window, softcap, scale,
                                blocks: TpuDecodeBlocks | None = None, interpret=None):
    """Decode attention on validated arguments (``kernels/decode/spec.py`` semantics).

    blocks=None: ``decode_chip_blocks()`` on a TPU, DEFAULT_DECODE_BLOCKS elsewhere.
    interpret=None: compiled on a TPU, TPU interpret mode elsewhere; True or a
    ``pltpu.InterpretParams`` forces interpret mode. Not differentiable (inference op).
    """
    interpret = resolve_interpret(interpret)
    if blocks is None:
        blocks = DEFAULT_DECODE_BLOCKS if interpret else decode_chip_blocks()
    max_len, d = k_cache.shape[1], k_cache.shape[3]
    # one tile covers a short cache whole (a full dim is always a legal block); else block_kv
    bk = max_len if max_len <= blocks.block_kv else blocks.block_kv
    s = _Statics(max_len=max_len, head_dim=d, heads_per_block=1 if d % LANES == 0 else k_cache.shape[2],
                 block_kv=bk, window=window, softcap=None if softcap is None else float(softcap),
                 scale=float(scale), interpret=interpret)
    return _decode(q, k_cache, v_cache, cache_seqlens, s)
