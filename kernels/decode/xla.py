"""jax.nn.dot_product_attention as the decode peer behind the same API.

Without a window the per-row lengths go in as ``key_value_seq_lengths`` (which the cuDNN
backend also accepts); with a window an explicit boolean mask [batch, 1, 1, max_len] is
passed. No softcap in jax.nn: asking for one raises. Rows of length 0 are zeroed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import nn

from .reference_jax import decode_mask


def host_lengths(cache_seqlens):
    """cache_seqlens as numpy (a device->host copy), or None while traced under jit."""
    if isinstance(cache_seqlens, jax.core.Tracer):
        return None
    return np.asarray(cache_seqlens)


def decode_xla(q, k_cache, v_cache, cache_seqlens, *, window, softcap, scale, implementation="xla"):
    if softcap is not None:
        raise ValueError(f"impl='xla' does not support softcap (got softcap={softcap}); "
                         "use impl='pallas' or 'reference'")
    max_len = k_cache.shape[1]
    lengths = jnp.clip(cache_seqlens.astype(jnp.int32), 0, max_len)
    qt = q[:, None]  # (B, 1, H, D)
    if window is None:
        o = nn.dot_product_attention(qt, k_cache, v_cache, scale=scale,
                                     key_value_seq_lengths=lengths, implementation=implementation)
    else:
        mask = decode_mask(lengths, max_len, window)[:, None, None, :]  # (B, 1, 1, T)
        o = nn.dot_product_attention(qt, k_cache, v_cache, mask=mask, scale=scale,
                                     implementation=implementation)
    return jnp.where((lengths > 0)[:, None, None], o[:, 0], 0).astype(q.dtype)
