"""torch.nn.functional.scaled_dot_product_attention as a peer behind the same API.

Bottom-right causal alignment, windows, segments and bidirectional blocks (``q_end``, the
last key position each query sees) become an explicit boolean mask
(which pushes SDPA off its flash backend; plain causal with q_len == kv_len keeps
``is_causal=True``). SDPA has no softcap: asking for one raises, never falls back.
Query rows that see no key are zeroed (SDPA would return NaN there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import attention_mask


def attention_sdpa(q, k, v, *, causal, window, softcap, scale, q_segment_ids, kv_segment_ids,
                   backend=None, q_end=None):
    if softcap is not None:
        raise ValueError(f"impl='sdpa' does not support softcap (got softcap={softcap}); "
                         "use impl='triton' or 'reference'")
    sq, skv = q.shape[1], k.shape[1]
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, S, D)
    gqa = q.shape[2] != k.shape[2]
    simple_causal = causal and window is None and q_segment_ids is None and q_end is None and sq == skv
    if simple_causal or (not causal and window is None and q_segment_ids is None):
        mask, empty = None, None
    else:
        mask = attention_mask(sq, skv, causal=causal, window=window, q_segment_ids=q_segment_ids,
                              kv_segment_ids=kv_segment_ids, device=q.device, q_end=q_end)[:, None]
        empty = ~mask.any(-1, keepdim=True)  # (B|1, 1, Sq, 1)
        mask = mask | empty  # keep SDPA finite; those rows are zeroed below
    ctx = torch.nn.attention.sdpa_kernel(backend) if backend is not None else _nullcontext()
    with ctx:
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=simple_causal,
                                           scale=scale, enable_gqa=gqa)
    if empty is not None:
        o = o.masked_fill(empty, 0.0)
    return o.transpose(1, 2)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
