"""Plain jax.numpy decode attention: the reference every JAX decode kernel is checked against.

Same semantics as ``kernels.jax_ops.decode_attention`` (see ``spec.py``); fp32 math by
default, ``upcast=False`` computes in the input dtype. GQA by reshaping q, never repeating K/V.
A paged cache (``block_table``) is gathered into a contiguous one (``gather_pages``) first.
"""
from __future__ import annotations

import jax.numpy as jnp


def decode_mask(cache_seqlens, max_len, window=None):
    """Boolean [batch, max_len]: True where the row's new token may see cache position t."""
    pos = jnp.arange(max_len)[None, :]
    length = jnp.clip(cache_seqlens.astype(jnp.int32), 0, max_len)[:, None]
    mask = pos < length
    if window is not None:
        mask &= pos > length - 1 - window
    return mask


def _decode(q, k_cache, v_cache, cache_seqlens, *, window, softcap, scale, upcast=True):
    b, h, d = q.shape
    t, kvh = k_cache.shape[1], k_cache.shape[2]
    cdt = jnp.promote_types(q.dtype, jnp.float32) if upcast else q.dtype
    acc_t = jnp.promote_types(cdt, jnp.float32)
    qg = q.astype(cdt).reshape(b, kvh, h // kvh, d)
    s = jnp.einsum("bkgd,btkd->bkgt", qg, k_cache.astype(cdt), preferred_element_type=acc_t) * scale
    if softcap is not None:
        s = softcap * jnp.tanh(s / softcap)
    mask = decode_mask(cache_seqlens, t, window)[:, None, None, :]
    s = jnp.where(mask, s, -jnp.inf)
    m = s.max(-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    den = p.sum(-1, keepdims=True)
    p = p / jnp.where(den > 0, den, 1.0)
    v = jnp.where(mask[:, 0, 0, :, None, None], v_cache.astype(cdt), 0)  # unseen positions may be NaN
    o = jnp.einsum("bkgt,btkd->bkgd", p.astype(cdt), v, preferred_element_type=acc_t)
    return o.reshape(b, h, d).astype(q.dtype)


def gather_pages(pool, block_table):
    """Page pool [num_pages, page_size, KVH, D] + block_table [B, P] -> contiguous cache
    [B, P * page_size, KVH, D]; unused entries (past a row's pages) are clamped, then masked."""
    g = pool[jnp.clip(block_table.astype(jnp.int32), 0, pool.shape[0] - 1)]  # (B, P, page_size, KVH, D)
    return g.reshape(g.shape[0], -1, *g.shape[3:])


def decode_reference(q, k_cache, v_cache, cache_seqlens, *, block_table=None, window=None,
                     softcap=None, scale=None, upcast=True):
    """Reference decode attention; validates like the public API (float64 accepted)."""
    from .spec import check_decode_args
    from .xla import host_lengths

    p = check_decode_args(
        q, k_cache, v_cache, cache_seqlens, window=window, softcap=softcap, scale=scale,
        dtypes=tuple(jnp.dtype(t) for t in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)),
        host_lengths=host_lengths, block_table=block_table)
    if block_table is not None:
        k_cache, v_cache = gather_pages(k_cache, block_table), gather_pages(v_cache, block_table)
    return _decode(q, k_cache, v_cache, cache_seqlens, window=p.window, softcap=p.softcap,
                   scale=p.scale, upcast=upcast)
