"""Paged decode attention in Pallas for TPU (Mosaic): the KV cache as pages behind a block table.

q [B, H, D]; k_pool / v_pool [num_pages, page_size, KVH, D]; block_table int32 [B, P]:
position t of row b lives in page block_table[b, t // page_size], slot t % page_size
(semantics in ``spec.py``; the math is the contiguous kernel's, ``pallas_tpu_decode.py``).
cache_seqlens and the flattened block table are scalar-prefetched into SMEM. Grid
(B, KVH / hb, cdiv(P, n)): step j DMAs n = pages_per_block pages of K and V from HBM into
VMEM, one BlockSpec operand per page slot whose index_map reads the page index from the
table. The pool is read in place ([num_pages, page_size, KVH * D] is a free reshape); a
block is (page_size, D) of one kv head when D % 128 == 0, else (page_size, KVH * D) of all
heads. Slot i's logical page j * n + i is clamped into the row's visible pages [lo, hi)
(the window's first page to the length's last), so steps past a row's end repeat the last
block index and issue no DMA, and ``pl.when`` skips their compute; page indices are clamped
into the pool (the -1 padding after a row's pages is never used). L == 0 gives zeros.

Limits: page_size a multiple of the sublane tile, 8 for fp32 and 16 for bf16/fp16 (a page is
then whole (8|16, 128) tiles, matmul-legal); head_dim <= 256; no split-K across the cache.
Fast where: TPU, batch x kv_heads >= cores, pages of >= 64 positions or n * page_size >= 128.
Elsewhere it runs in TPU interpret mode (a CPU simulator; tests only).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from .pallas_tpu_decode import (LANES, _attend_tile, _row_steps, _Statics, _visible_blocks,
                                fold_queries, resolve_interpret, row_call)


@dataclasses.dataclass(frozen=True)
class TpuPagedBlocks:
    """pages_per_block: pages DMA'd per grid step (one BlockSpec operand each for K and V)."""

    pages_per_block: int = 1

    def __post_init__(self):
        n = self.pages_per_block
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 16:
            raise ValueError(f"pages_per_block must be an int in [1, 16], got {n!r}")


def default_paged_blocks(page_size: int, pages_per_row: int) -> TpuPagedBlocks:
    """About 256 positions per step (amortizes the ~0.35 us step cost), at most 8 pages."""
    return TpuPagedBlocks(max(1, min(8, 256 // page_size, pages_per_row)))


def check_tpu_page_size(page_size: int, dtype) -> None:
    sub = 8 if jnp.dtype(dtype).itemsize == 4 else 16
    if page_size % sub:
        raise ValueError(f"impl='pallas_tpu' needs page_size (k_cache dim 1 of a paged cache) a "
                         f"multiple of {sub} for {jnp.dtype(dtype).name} (the TPU sublane tile), got "
                         f"{page_size}; impl='reference' takes any page size")


def _page(b, j, i, lens_ref, table_ref, s: _Statics):
    """Pool page of slot i at step j: logical page j * n + i clamped to the slot's visible ones."""
    n = s.pages_per_block
    lo, hi = _visible_blocks(lens_ref[b], s)
    j_lo = lax.div(lo - i + (n - 1), n)  # first step whose slot i is visible (args >= 0)
    j_hi = lax.div(hi - 1 - i + n, n) - 1  # last one
    jc = jnp.minimum(jnp.maximum(j, j_lo), jnp.maximum(j_hi, j_lo))
    p = jnp.minimum(jc * n + i, s.pages_per_row - 1)
    return jnp.clip(table_ref[b * s.pages_per_row + p], 0, s.num_pages - 1)


def _paged_kernel(lens_ref, table_ref, q_ref, *refs, s: _Statics):
    # q_ref, o_ref [hb, Gp, D]; refs: n K pages, n V pages [page_size, hb * D], o_ref, m, l, acc
    n = s.pages_per_block
    k_refs, v_refs, (o_ref, m_ref, l_ref, acc_ref) = refs[:n], refs[n:2 * n], refs[2 * n:]
    b, j = pl.program_id(0), pl.program_id(2)
    length = lens_ref[b]
    lo, hi = _visible_blocks(length, s)

    def attend():
        for i in range(n):  # static: one page slot at a time
            @pl.when((j * n + i >= lo) & (j * n + i < hi))
            def _(i=i):
                _attend_tile(q_ref, k_refs[i], v_refs[i], m_ref, l_ref, acc_ref,
                             (j * n + i) * s.block_kv, length, s)

    _row_steps(o_ref, m_ref, l_ref, acc_ref, attend)


@functools.partial(jax.jit, static_argnames=("s",))
def _paged_decode(q, k_pool, v_pool, cache_seqlens, block_table, s: _Statics):
    b, h, d = q.shape
    n_pages, page, kvh = k_pool.shape[:3]
    hb, n = s.heads_per_block, s.pages_per_block
    qf = fold_queries(q, kvh)  # [B, KVH, Gp, D]
    gp = qf.shape[2]
    kf, vf = (x.reshape(n_pages, page, kvh * d) for x in (k_pool, v_pool))  # free reshapes
    lens = jnp.clip(cache_seqlens.astype(jnp.int32), 0, s.max_len)
    table = block_table.astype(jnp.int32).reshape(-1)  # 1-D: SMEM pads a 2-D table's rows
    q_spec = pl.BlockSpec((None, hb, gp, d), lambda bi, hi, j, lens, tab: (bi, hi, 0, 0))
    def page_spec(i):  # slot i's block: one page of kv head block hi
        return pl.BlockSpec((None, page, hb * d),
                            lambda bi, hi, j, lens, tab: (_page(bi, j, i, lens, tab, s), 0, hi))

    page_specs = [page_spec(i) for i in range(n)]
    of = row_call(_paged_kernel, qf, q_spec, page_specs + page_specs,
                  (b, kvh // hb, pl.cdiv(s.pages_per_row, n)), 2, s,
                  "tpu_paged_decode_attention")(lens, table, qf, *[kf] * n, *[vf] * n)
    return of[:, :, :h // kvh].reshape(b, h, d)


def paged_decode_attention_pallas_tpu(q, k_pool, v_pool, cache_seqlens, block_table, *, window,
                                      softcap, scale, blocks: TpuPagedBlocks | None = None,
                                      interpret=None):
    """Paged decode attention on validated arguments (``kernels/decode/spec.py`` semantics).

    page_size must be a multiple of 8 (fp32) or 16 (bf16/fp16), else ValueError.
    blocks=None: ``default_paged_blocks``; pages_per_block is capped to pages_per_row.
    interpret: as ``decode_attention_pallas_tpu``. Not differentiable (inference op).
    """
    n_pages, page, kvh, d = k_pool.shape
    check_tpu_page_size(page, q.dtype)
    pages_per_row = block_table.shape[1]
    blocks = default_paged_blocks(page, pages_per_row) if blocks is None else blocks
    s = _Statics(max_len=pages_per_row * page, head_dim=d,
                 heads_per_block=1 if d % LANES == 0 else kvh, block_kv=page, window=window,
                 softcap=None if softcap is None else float(softcap), scale=float(scale),
                 interpret=resolve_interpret(interpret),
                 pages_per_block=min(blocks.pages_per_block, pages_per_row),
                 pages_per_row=pages_per_row, num_pages=n_pages)
    return _paged_decode(q, k_pool, v_pool, cache_seqlens, block_table, s)
