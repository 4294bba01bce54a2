"""Split-KV decode attention in JAX Pallas (GPU/Triton lowering): split pass + combine pass.

Computes, per row b and query head h, softmax(mask(softcap(scale * q k^T))) v over cache
positions [lo, L), L = cache_seqlens[b], lo = max(L - window, 0) (semantics in ``spec.py``).
Split pass, grid (B, KVH, S): program (b, kvh, s) takes the s-th share of the K/V blocks
of row b that hold attended positions, for the G query heads of kv head kvh folded into
the rows of one [BLOCK_H, D] tile (G padded to >= 16), so K/V are read once per group and
both products are matrix products. Blocks past L and before the window are not visited
(dynamic fori_loop bounds). It writes normalized partials and base-2 logsumexps; the
combine pass, grid (B, KVH), merges the S shares (zeros for L == 0).
Paged cache (block_table [B, P]; K/V page pools [num_pages, page_size, KVH, D]): the program
sees the whole pool of its kv head in place and the block-table row; block_k =
min(block_k, page_size) divides the page, so each K/V tile is a slice of one page whose index
is one scalar load from the table (clamped into the pool). Nothing is gathered or copied
(except the head_dim padding below, as for the contiguous cache).

Limits: head_dim <= 256. The cache is read in place when max_len is a multiple of 16 and
head_dim a power of two >= 16; otherwise the launcher pads a copy (allocate caches that
way to avoid it). Paged: page_size a power of two >= 16. S (``num_splits``) is a power of two. fp16/bf16/fp32, fp32 accumulation.
Fast where: long caches at small batch on GPU (splits fill the SMs), large G (MQA/GQA).
Without a GPU it runs in Pallas interpret mode (slow; tests).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .._platform import pallas_interpret_default
from .spec import check_kernel_page_size

LOG2E = math.log2(math.e)
LANES = 16  # cache_seqlens is broadcast to [B, LANES] so each program loads a legal tile


@dataclasses.dataclass(frozen=True)
class PallasDecodeBlocks:
    """block_k cache positions per inner step (the largest power of two <= it that divides
    max_len is used), plus Triton launch knobs."""

    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        if not isinstance(self.block_k, int) or self.block_k < 16 or self.block_k & (self.block_k - 1):
            raise ValueError(f"block_k must be a power of two >= 16, got {self.block_k!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be one of 1, 2, 4, 8, 16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"num_stages must be an int >= 1, got {self.num_stages!r}")


def default_blocks(head_dim: int, span: int, *, interpret: bool) -> PallasDecodeBlocks:
    """GPU-sized tiles compiled; in interpret mode block_k ~ span / 8 (fewer, larger steps)."""
    if interpret:
        return PallasDecodeBlocks(min(512, max(16, pl.next_power_of_2(span // 8))), 4, 1)
    return PallasDecodeBlocks(64 if head_dim <= 128 else 32, 4, 2)


def num_kv_splits(batch: int, kv_heads: int, span: int, block_k: int, sm_count: int | None) -> int:
    """Power-of-two splits per (row, kv head): enough for about 2 * sm_count programs (two a
    SM) on a GPU with >= 2 blocks each, rounded UP to a power of two; 4 programs with >= 1
    block each in interpret mode. NOT the Triton launcher's rule
    (``triton_decode.num_kv_splits`` minimizes waves x blocks per program over any split
    count, i.e. quantizes to waves; this one does not, and can overshoot a wave by up to 2x).
    Kept as is: S must be a power of two here (the combine pass walks the shares min(S, 4)
    at a time), and no GPU run has timed the two rules against each other."""
    blocks = pl.cdiv(max(span, 1), block_k)
    target, min_blocks = (4, 1) if sm_count is None else (2 * sm_count, 2)
    splits = max(1, min(pl.cdiv(target, batch * kv_heads), pl.cdiv(blocks, min_blocks), 256))
    return 1 << (splits - 1).bit_length() if splits & (splits - 1) else splits


@dataclasses.dataclass(frozen=True)
class _Statics:
    """Everything static about one call (hashable: a jit static argument)."""

    max_len: int  # true cache capacity T (lengths are clamped to it)
    group: int
    block_k: int
    num_splits: int
    window: int | None
    softcap: float | None
    scale: float
    blocks: PallasDecodeBlocks
    interpret: bool
    page_size: int | None = None  # paged cache (block_k divides it)
    num_pages: int | None = None


def _dot(a, b, *, tb=False):
    dims = (((1,), (1 if tb else 0,)), ((), ()))
    prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, dims, precision=prec, preferred_element_type=jnp.float32)


def _split_kernel(lens_ref, q_ref, k_ref, v_ref, *refs, st: _Statics):
    # lens_ref [LANES] (this row's L, broadcast); q_ref [BH, Dp]; k_ref, v_ref [T_p, Dp], or
    # paged [num_pages, page_size, Dp] with refs[0] the block-table row [P];
    # o_ref [BH, Dp] fp32 normalized partial; lse_ref [BH] fp32, base 2
    *bt_ref, o_ref, lse_ref = refs
    s_idx = pl.program_id(2)
    bk = st.block_k
    length = jnp.clip(jnp.max(lens_ref[...]), 0, st.max_len)
    lo = 0 if st.window is None else jnp.maximum(length - st.window, 0)
    first = lax.div(lo, bk)
    last = lax.div(length + bk - 1, bk)
    per = lax.div(jnp.maximum(last - first, 0) + st.num_splits - 1, st.num_splits)
    start = first + s_idx * per
    stop = jnp.minimum(start + per, last)
    q = q_ref[...]
    qk_scale = st.scale if st.softcap is None else st.scale / st.softcap

    def load_kv(j):  # the K/V tile of positions [j * bk, (j + 1) * bk)
        if st.page_size is None:
            sl = pl.ds(j * bk, bk)
            return k_ref[sl, :], v_ref[sl, :]
        page = jnp.clip(bt_ref[0][lax.div(j * bk, st.page_size)], 0, st.num_pages - 1)
        sl = pl.ds(lax.rem(j * bk, st.page_size), bk)
        return k_ref[page, sl, :], v_ref[page, sl, :]

    def body(j, carry):
        acc, m, l = carry
        k, v = load_kv(j)
        cols = j * bk + lax.broadcasted_iota(jnp.int32, (bk,), 0)
        s = _dot(q, k, tb=True) * qk_scale  # [BH, bk]
        if st.softcap is not None:
            s = st.softcap * jnp.tanh(s)
        live = (cols >= lo) & (cols < length)
        s = jnp.where(live[None, :], s * LOG2E, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp2(s - m_safe[:, None])
        alpha = jnp.exp2(m - m_safe)
        v = jnp.where(live[:, None], v, 0)  # positions past L may hold NaN/inf (0 * NaN = NaN)
        return alpha[:, None] * acc + _dot(p.astype(v.dtype), v), m_new, alpha * l + p.sum(axis=-1)

    bh, dp = q.shape
    init = (jnp.zeros((bh, dp), jnp.float32), jnp.full((bh,), -jnp.inf, jnp.float32),
            jnp.zeros((bh,), jnp.float32))
    acc, m, l = lax.fori_loop(start, stop, body, init)
    seen = l > 0
    l_safe = jnp.where(seen, l, 1.0)
    o_ref[...] = acc / l_safe[:, None]
    lse_ref[...] = jnp.where(seen, m + jnp.log2(l_safe), -jnp.inf)


def _combine_kernel(o_part_ref, lse_ref, o_ref, *, chunk: int):
    # o_part_ref [S, BH, Dp] fp32; lse_ref [S, BH]; o_ref [BH, Dp] (q's dtype)
    n_s = lse_ref.shape[0]
    m = lse_ref[...].max(axis=0)
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)  # L == 0: every share empty

    def body(c, carry):  # ``chunk`` shares at a time: a small register tile on the GPU
        acc, den = carry
        sl = pl.ds(c * chunk, chunk)
        w = jnp.exp2(lse_ref[sl, :] - m_safe[None, :])  # [chunk, BH]; 0 for empty shares
        return acc + (o_part_ref[sl, :, :] * w[:, :, None]).sum(axis=0), den + w.sum(axis=0)

    bh, dp = o_ref.shape
    acc, den = lax.fori_loop(0, n_s // chunk, body,
                             (jnp.zeros((bh, dp), jnp.float32), jnp.zeros((bh,), jnp.float32)))
    o_ref[...] = (acc / jnp.where(den > 0, den, 1.0)[:, None]).astype(o_ref.dtype)


def _pad_to(x, axis: int, size: int):
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


def _params(st: _Statics):
    return plgpu.CompilerParams(num_warps=st.blocks.num_warps, num_stages=st.blocks.num_stages)


def _kv_specs(k_cache, v_cache, block_table, st: _Statics, dp: int):
    """(K, V[, table]) operands and their BlockSpecs over the (b, kvh, s) grid: the row's
    cache of one kv head (contiguous), or that head's whole page pool plus the table row."""
    if block_table is None:
        t_p = pl.cdiv(st.max_len, st.block_k) * st.block_k
        spec = pl.BlockSpec((None, t_p, None, dp), lambda i, j, s: (i, 0, j, 0))
        ops = [_pad_to(_pad_to(x, 1, t_p), 3, dp) for x in (k_cache, v_cache)]  # copies only to pad
        return ops, [spec, spec]
    n_pages, page = k_cache.shape[:2]
    spec = pl.BlockSpec((n_pages, page, None, dp), lambda i, j, s: (0, 0, j, 0))
    table = pl.BlockSpec((None, block_table.shape[1]), lambda i, j, s: (i, 0))
    ops = [_pad_to(x, 3, dp) for x in (k_cache, v_cache)] + [block_table.astype(jnp.int32)]
    return ops, [spec, spec, table]


@functools.partial(jax.jit, static_argnums=(5,))
def _decode(q, k_cache, v_cache, cache_seqlens, block_table, st: _Statics):
    b, h, d = q.shape
    kvh = k_cache.shape[2]
    bh = max(16, pl.next_power_of_2(st.group))
    dp = max(16, pl.next_power_of_2(d))
    qf = _pad_to(_pad_to(q.reshape(b, kvh, st.group, d), 2, bh), 3, dp)  # [B, KVH, BH, Dp]
    kv_ops, kv_specs = _kv_specs(k_cache, v_cache, block_table, st, dp)
    lens = jnp.broadcast_to(cache_seqlens.astype(jnp.int32)[:, None], (b, LANES))
    n_s = st.num_splits
    o_part, lse = pl.pallas_call(
        functools.partial(_split_kernel, st=st),
        grid=(b, kvh, n_s),
        in_specs=[pl.BlockSpec((None, LANES), lambda i, j, s: (i, 0)),
                  pl.BlockSpec((None, None, bh, dp), lambda i, j, s: (i, j, 0, 0)), *kv_specs],
        out_specs=[pl.BlockSpec((None, None, None, bh, dp), lambda i, j, s: (i, j, s, 0, 0)),
                   pl.BlockSpec((None, None, None, bh), lambda i, j, s: (i, j, s, 0))],
        out_shape=[jax.ShapeDtypeStruct((b, kvh, n_s, bh, dp), jnp.float32),
                   jax.ShapeDtypeStruct((b, kvh, n_s, bh), jnp.float32)],
        compiler_params=_params(st), interpret=st.interpret, name="decode_split",
    )(lens, qf, *kv_ops)
    of = pl.pallas_call(
        functools.partial(_combine_kernel, chunk=min(n_s, 4)),
        grid=(b, kvh),
        in_specs=[pl.BlockSpec((None, None, n_s, bh, dp), lambda i, j: (i, j, 0, 0, 0)),
                  pl.BlockSpec((None, None, n_s, bh), lambda i, j: (i, j, 0, 0))],
        out_specs=pl.BlockSpec((None, None, bh, dp), lambda i, j: (i, j, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((b, kvh, bh, dp), q.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=st.interpret, name="decode_combine",
    )(o_part, lse)
    return of[:, :, :st.group, :d].reshape(b, h, d), o_part, lse


def _sm_count() -> int | None:
    dev = jax.devices()[0]
    return getattr(dev, "core_count", None) or 132


def decode_pallas(q, k_cache, v_cache, cache_seqlens, *, window, softcap, scale, block_table=None,
                  blocks: PallasDecodeBlocks | None = None, num_splits: int | None = None,
                  interpret: bool | None = None, return_partials: bool = False):
    """Split-KV decode on validated arguments (see ``kernels.jax_ops.decode_attention``).

    blocks=None picks ``default_blocks``; num_splits=None picks ``num_kv_splits`` (a power
    of two); interpret=None interprets unless JAX's default backend is a GPU. block_table:
    the caches are page pools; block_k becomes min(block_k, page_size) (page_size a power of
    two >= 16, else ValueError).
    return_partials=True also returns (o_part [B, KVH, S, BH, Dp], lse [B, KVH, S, BH]).
    """
    if interpret is None:
        interpret = pallas_interpret_default()
    b, h, d = q.shape
    kvh = k_cache.shape[2]
    page_size = None if block_table is None else k_cache.shape[1]
    if page_size is not None:
        check_kernel_page_size(page_size, "pallas")
    max_len = k_cache.shape[1] if page_size is None else block_table.shape[1] * page_size
    span = max_len if window is None else min(max_len, window)
    if blocks is None:
        blocks = default_blocks(d, span, interpret=interpret)
    bk = blocks.block_k if page_size is None else min(blocks.block_k, page_size)
    while bk > 16 and max_len % bk:  # a block that divides max_len: no padded cache copy
        bk //= 2
    if num_splits is None:
        num_splits = num_kv_splits(b, kvh, span, bk, None if interpret else _sm_count())
    if not isinstance(num_splits, int) or num_splits < 1 or num_splits & (num_splits - 1):
        raise ValueError(f"num_splits must be a power of two >= 1, got {num_splits!r}")
    st = _Statics(max_len=max_len, group=h // kvh, block_k=bk, num_splits=num_splits,
                  window=None if window is None else min(int(window), max_len),
                  softcap=None if softcap is None else float(softcap),
                  scale=d**-0.5 if scale is None else float(scale), blocks=blocks,
                  interpret=bool(interpret), page_size=page_size,
                  num_pages=None if page_size is None else k_cache.shape[0])
    o, o_part, lse = _decode(q, k_cache, v_cache, cache_seqlens, block_table, st)
    return (o, o_part, lse) if return_partials else o
