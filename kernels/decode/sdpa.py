"""torch.nn.functional.scaled_dot_product_attention as the decode peer behind the same API.

The per-row lengths (and window) become a boolean key mask [batch, 1, 1, max_len]; the
query is one token per row. SDPA has no softcap: asking for one raises, never falls back.
Rows of length 0 are zeroed (SDPA would return NaN for a fully masked row).
"""
from __future__ import annotations

import torch.nn.functional as F

from .reference import decode_mask


def decode_sdpa(q, k_cache, v_cache, cache_seqlens, *, window, softcap, scale):
    if softcap is not None:
        raise ValueError(f"impl='sdpa' does not support softcap (got softcap={softcap}); "
                         "use impl='triton' or 'reference'")
    mask = decode_mask(cache_seqlens, k_cache.shape[1], window)[:, None, None, :]  # (B, 1, 1, T)
    empty = ~mask.any(-1, keepdim=True)
    qt = q[:, :, None, :]  # (B, H, 1, D)
    kt, vt = k_cache.transpose(1, 2), v_cache.transpose(1, 2)  # (B, KVH, T, D)
    o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask | empty, scale=scale,
                                       enable_gqa=q.shape[1] != k_cache.shape[2])
    return o.masked_fill(empty, 0.0)[:, :, 0, :]
