"""Plain jax.numpy attention: the reference every JAX kernel is checked against.

Same semantics as ``kernels.jax_ops.attention`` (see ``spec.py``); fp32 math by default,
``upcast=False`` computes in the input dtype. GQA by reshaping q, never repeating K/V.
``bidirectional_q_end`` turns bidirectional_ids into q_end, the last key position each query
sees (computed once by the front end and passed to every impl as ``q_end``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

FLOAT_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def bidirectional_q_end(ids, kv_len):
    """int32 [batch, q_len]: the last key position query i sees, (kv_len - q_len) + (the last
    index of i's run of equal ids if ids[i] >= 0, else i); a reverse cumulative min over
    [j if j ends a run else q_len]. Non-decreasing in i and >= i + (kv_len - q_len): the proof
    is in ``reference.bidirectional_q_end``."""
    n = ids.shape[1]
    idx = jnp.arange(n, dtype=jnp.int32)
    ends = jnp.concatenate([ids[:, 1:] != ids[:, :-1], jnp.ones_like(ids[:, :1], dtype=bool)], 1)
    run_end = lax.cummin(jnp.where(ends, idx, n), axis=1, reverse=True)
    return (jnp.where(ids >= 0, run_end, idx) + (kv_len - n)).astype(jnp.int32)


def attention_mask(q_len, kv_len, *, causal, window, q_segment_ids=None, kv_segment_ids=None,
                   q_end=None):
    """Boolean mask [batch or 1, q_len, kv_len]: True where query i may see key j.
    q_end (int [batch, q_len], with causal): query i's last visible key position (spec.py)."""
    if q_end is None:
        q_pos = (jnp.arange(q_len) + (kv_len - q_len))[None, :, None]
    else:
        q_pos = q_end[:, :, None].astype(jnp.int32)
    k_pos = jnp.arange(kv_len)[None, None, :]
    mask = jnp.ones((1, q_len, kv_len), dtype=bool)
    if causal or window is not None:
        mask = mask & (k_pos <= q_pos)
    if window is not None:
        mask = mask & (k_pos > q_pos - window)
    if q_segment_ids is not None:
        mask = mask & (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])
    return mask


def attention_reference(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
                        segment_ids=None, bidirectional_ids=None, upcast=True):
    """Reference attention; validates like the public API."""
    from .spec import check_attention_args, check_bidirectional_ids

    problem, q_ids, kv_ids = check_attention_args(
        q, k, v, causal=causal, window=window, softcap=softcap, scale=scale,
        segment_ids=segment_ids, dtypes=tuple(jnp.dtype(t) for t in FLOAT_DTYPES),
    )
    check_bidirectional_ids(bidirectional_ids, problem)
    q_end = None if bidirectional_ids is None else bidirectional_q_end(bidirectional_ids, problem.kv_len)
    return _attention(q, k, v, causal=causal, window=problem.window, softcap=problem.softcap,
                      scale=problem.scale, q_segment_ids=q_ids, kv_segment_ids=kv_ids,
                      upcast=upcast, q_end=q_end)


def _attention(q, k, v, *, causal, window, softcap, scale, q_segment_ids, kv_segment_ids,
               upcast=True, q_end=None):
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    cdt = jnp.promote_types(q.dtype, jnp.float32) if upcast else q.dtype
    qg = q.astype(cdt).reshape(b, sq, kvh, g, d)
    s = jnp.einsum("bskgd,btkd->bkgst", qg, k.astype(cdt),
                   preferred_element_type=jnp.promote_types(cdt, jnp.float32)) * scale
    if softcap is not None:
        s = softcap * jnp.tanh(s / softcap)
    mask = attention_mask(sq, skv, causal=causal, window=window, q_segment_ids=q_segment_ids,
                          kv_segment_ids=kv_segment_ids, q_end=q_end)[:, None, None]
    s = jnp.where(mask, s, -jnp.inf)
    m = s.max(-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    l = p.sum(-1, keepdims=True)
    p = p / jnp.where(l > 0, l, 1.0)
    o = jnp.einsum("bkgst,btkd->bskgd", p.astype(cdt), v.astype(cdt),
                   preferred_element_type=jnp.promote_types(cdt, jnp.float32))
    return o.reshape(b, sq, h, d).astype(q.dtype)


attention_reference_jit = jax.jit(
    attention_reference, static_argnames=("causal", "window", "softcap", "scale", "upcast"))
