"""Plain PyTorch attention: the reference every PyTorch kernel is checked against.

Same semantics as ``kernels.torch_ops.attention`` (see ``spec.py``). Math in fp32 by
default (``upcast=True``); ``upcast=False`` does the matmuls in the input dtype, the
"framework in the same precision" baseline that kernel errors are compared with.
MQA/GQA by reshaping q into [batch, len, kv_heads, group, head_dim]: K/V are never
repeated. Memory is O(q_len * kv_len) per head: for tests and small shapes only.
``bidirectional_q_end`` turns bidirectional_ids into q_end, the last key position each query
sees (computed once by the front end and passed to every impl as ``q_end``).
"""
from __future__ import annotations

import torch


def bidirectional_q_end(ids, kv_len):
    """int32 [batch, q_len]: the last key position query i sees, (kv_len - q_len) + (the last
    index of i's run of equal ids if ids[i] >= 0, else i). Vectorized: a run ends at j where
    ids[j] != ids[j + 1] (or j = q_len - 1); the run end of i is the smallest such j >= i, a
    reverse cumulative min over [j if j ends a run else q_len].

    q_end is non-decreasing in i: for i < i' in one run, both are text (q_end = i + shift <
    i' + shift) or both share the run's end; in different runs, q_end[i] <= shift + (the end of
    i's run) < shift + (the start of i''s run) <= shift + i' <= q_end[i']. And q_end[i] >=
    i + shift, the plain causal position. The kernels' loop bounds rely on both.
    """
    b, n = ids.shape
    idx = torch.arange(n, device=ids.device)
    ends = torch.cat([ids[:, 1:] != ids[:, :-1], torch.ones_like(ids[:, :1], dtype=torch.bool)], 1)
    cand = torch.where(ends, idx, n)  # [B, Sq] int64
    run_end = cand.flip(1).cummin(1).values.flip(1)
    return (torch.where(ids >= 0, run_end, idx) + (kv_len - n)).to(torch.int32)


def attention_mask(q_len, kv_len, *, causal, window, q_segment_ids=None, kv_segment_ids=None,
                   device=None, q_end=None):
    """Boolean mask [batch or 1, q_len, kv_len]: True where query i may see key j.
    q_end (int [batch, q_len], with causal): query i's last visible key position (spec.py)."""
    if q_end is None:
        q_pos = (torch.arange(q_len, device=device) + (kv_len - q_len))[None, :, None]
    else:
        q_pos = q_end[:, :, None].to(torch.int64)
    k_pos = torch.arange(kv_len, device=device)[None, None, :]
    mask = torch.ones(1, q_len, kv_len, dtype=torch.bool, device=device)
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
        segment_ids=segment_ids, dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
        device_of=lambda t: t.device,
    )
    check_bidirectional_ids(bidirectional_ids, problem, lambda t: t.device, q)
    q_end = None if bidirectional_ids is None else bidirectional_q_end(bidirectional_ids, problem.kv_len)
    return _attention(q, k, v, causal=causal, window=problem.window, softcap=problem.softcap,
                      scale=problem.scale, q_segment_ids=q_ids, kv_segment_ids=kv_ids,
                      upcast=upcast, q_end=q_end)


def _attention(q, k, v, *, causal, window, softcap, scale, q_segment_ids, kv_segment_ids,
               upcast=True, q_end=None):
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
                          kv_segment_ids=kv_segment_ids, device=q.device, q_end=q_end)[:, None, None]
    s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows that see no key
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)
    p = p / torch.where(l > 0, l, torch.ones_like(l))
    o = torch.einsum("bkgst,btkd->bskgd", p.to(cdt), v.to(cdt))
    return o.reshape(b, sq, h, d).to(q.dtype)
