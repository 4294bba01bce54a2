"""Plain PyTorch attention: the reference every PyTorch kernel is checked against.

Same semantics as ``kernels.torch_ops.attention`` (see ``spec.py``). Math in fp32 by
default (``upcast=True``); ``upcast=False`` does the matmuls in the input dtype, the
"framework in the same precision" baseline that kernel errors are compared with.
MQA/GQA by reshaping q into [batch, len, kv_heads, group, head_dim]: K/V are never
repeated. Memory is O(q_len * kv_len) per head: for tests and small shapes only.
"""
from __future__ import annotations

import torch


def attention_mask(q_len, kv_len, *, causal, window, q_segment_ids=None, kv_segment_ids=None,
                   device=None):
    """Boolean mask [batch or 1, q_len, kv_len]: True where query i may see key j."""
    q_pos = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    k_pos = torch.arange(kv_len, device=device)[None, :]
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if causal or window is not None:
        mask &= k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    mask = mask[None]
    if q_segment_ids is not None:
        mask = mask & (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])
    return mask


def attention_reference(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
                        segment_ids=None, upcast=True):
    """Reference attention; validates like the public API."""
    from .spec import check_attention_args

    problem, q_ids, kv_ids = check_attention_args(
        q, k, v, causal=causal, window=window, softcap=softcap, scale=scale,
        segment_ids=segment_ids, dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
        device_of=lambda t: t.device,
    )
    return _attention(q, k, v, causal=causal, window=window, softcap=problem.softcap,
                      scale=problem.scale, q_segment_ids=q_ids, kv_segment_ids=kv_ids,
                      upcast=upcast)


def _attention(q, k, v, *, causal, window, softcap, scale, q_segment_ids, kv_segment_ids,
               upcast=True):
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    cdt = torch.promote_types(q.dtype, torch.float32) if upcast else q.dtype
    qg = q.to(cdt).reshape(b, sq, kvh, g, d)
    sdt = torch.promote_types(cdt, torch.float32)  # fp32 scores, fp64 for a float64 reference
    s = torch.einsum("bskgd,btkd->bkgst", qg, k.to(cdt)).to(sdt) * scale  # (B, KVH, G, Sq, Skv)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    mask = attention_mask(sq, skv, causal=causal, window=window, q_segment_ids=q_segment_ids,
                          kv_segment_ids=kv_segment_ids, device=q.device)[:, None, None]
    s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows that see no key
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)
    p = p / torch.where(l > 0, l, torch.ones_like(l))
    o = torch.einsum("bkgst,btkd->bskgd", p.to(cdt), v.to(cdt))
    return o.reshape(b, sq, h, d).to(q.dtype)
