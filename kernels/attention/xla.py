"""jax.nn.dot_product_attention as a peer behind the same API.

JAX's ``is_causal`` is top-left aligned, so with q_len != kv_len (or segments, or
bidirectional blocks: ``q_end``, the last key position each query sees) the mask is
passed explicitly; with q_len == kv_len, causal and windows use its own
``is_causal`` / ``local_window_size`` (which the cuDNN backend accepts too).
No softcap in jax.nn: asking for one raises, never falls back. Rows that see no key
are zeroed (JAX would average over all keys there).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import nn

from .reference_jax import attention_mask


def attention_xla(q, k, v, *, causal, window, softcap, scale, q_segment_ids, kv_segment_ids,
                  implementation="xla", q_end=None):
    if softcap is not None:
        raise ValueError(f"impl='xla' does not support softcap (got softcap={softcap}); "
                         "use impl='pallas' or 'reference'")
    sq, skv = q.shape[1], k.shape[1]
    if sq == skv and q_segment_ids is None and q_end is None:
        return nn.dot_product_attention(
            q, k, v, scale=scale, is_causal=causal or window is not None,
            local_window_size=None if window is None else (window - 1, 0),
            implementation=implementation)
    mask = attention_mask(sq, skv, causal=causal, window=window, q_segment_ids=q_segment_ids,
                          kv_segment_ids=kv_segment_ids, q_end=q_end)[:, None]  # (B|1, 1, Sq, Skv)
    o = nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=implementation)
    seen = mask.any(-1)[:, 0, :, None, None]  # (B|1, Sq, 1, 1)
    return jnp.where(seen, o, 0).astype(q.dtype)
