"""Plain PyTorch decode attention: the reference every PyTorch decode kernel is checked against.

Same semantics as ``kernels.torch_ops.decode_attention`` (see ``spec.py``). fp32 math by
default; ``upcast=False`` computes in the input dtype (the same-precision baseline of the
tests). GQA by reshaping q into [batch, kv_heads, group, head_dim]; K/V are never repeated.
Memory O(batch * heads * max_len). A paged cache (``block_table``) is gathered into a
contiguous one (``gather_pages``) first: a reference, not a kernel.

Also ``attention_reference_chunked``: prefill attention (``torch_ops.attention`` semantics
without segment ids) in float64 with keys streamed in chunks, O(q_len * chunk) memory per
head, for long-context checks where the dense reference's O(q_len * kv_len) does not fit.
"""
from __future__ import annotations

import torch


def decode_mask(cache_seqlens, max_len, window=None):
    """Boolean [batch, max_len]: True where the row's new token may see cache position t."""
    pos = torch.arange(max_len, device=cache_seqlens.device)[None, :]
    length = cache_seqlens.to(torch.int64)[:, None]
    mask = pos < length
    if window is not None:
        mask &= pos > length - 1 - window
    return mask


def gather_pages(pool, block_table):
    """Page pool [num_pages, page_size, KVH, D] + block_table [B, P] -> contiguous cache
    [B, P * page_size, KVH, D]. Entries past a row's used pages may be anything (-1): they
    are clamped into the pool and land beyond the row's length, where the mask hides them."""
    idx = block_table.long().clamp(0, pool.shape[0] - 1)
    return pool[idx].flatten(1, 2)  # (B, P, page_size, KVH, D) -> (B, T, KVH, D)


def decode_reference(q, k_cache, v_cache, cache_seqlens, *, block_table=None, window=None,
                     softcap=None, scale=None, upcast=True):
    """Reference decode attention; validates like the public API (float64 accepted)."""
    from .spec import check_decode_args

    p = check_decode_args(
        q, k_cache, v_cache, cache_seqlens, window=window, softcap=softcap, scale=scale,
        dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
        device_of=lambda t: t.device, host_lengths=lambda t: t.cpu().numpy(),
        block_table=block_table)
    if block_table is not None:
        k_cache, v_cache = gather_pages(k_cache, block_table), gather_pages(v_cache, block_table)
    return _decode(q, k_cache, v_cache, cache_seqlens, window=p.window, softcap=p.softcap,
                   scale=p.scale, upcast=upcast)


def _decode(q, k_cache, v_cache, cache_seqlens, *, window, softcap, scale, upcast=True):
    b, h, d = q.shape
    t, kvh = k_cache.shape[1], k_cache.shape[2]
    cdt = torch.promote_types(q.dtype, torch.float32) if upcast else q.dtype
    qg = q.to(cdt).reshape(b, kvh, h // kvh, d)
    s = torch.einsum("bkgd,btkd->bkgt", qg, k_cache.to(cdt)).to(torch.promote_types(cdt, torch.float32))
    s = s * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    mask = decode_mask(cache_seqlens, t, window)[:, None, None, :]  # (B, 1, 1, T)
    s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows with length 0
    p = torch.exp(s - m)
    den = p.sum(-1, keepdim=True)
    p = p / torch.where(den > 0, den, torch.ones_like(den))
    v = v_cache.to(cdt).masked_fill(~mask[:, 0, 0, :, None, None], 0)  # unseen positions may be NaN
    o = torch.einsum("bkgt,btkd->bkgd", p.to(cdt), v)
    return o.reshape(b, h, d).to(q.dtype)


def attention_reference_chunked(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
                                chunk=4096):
    """Prefill attention in float64, keys in chunks of ``chunk`` (online softmax, exact in fp64).

    q [B, Sq, H, D], k/v [B, Skv, KVH, D]; bottom-right causal alignment and windows as in
    ``kernels/attention/spec.py``. Returns float64 [B, Sq, H, D]; rows that see no key are 0.
    """
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    scale = d**-0.5 if scale is None else scale
    qg = q.double().reshape(b, sq, kvh, g, d)
    q_pos = torch.arange(sq, device=q.device)[:, None] + (skv - sq)  # (Sq, 1)
    m = torch.full((b, kvh, g, sq, 1), float("-inf"), dtype=torch.float64, device=q.device)
    den = torch.zeros_like(m)
    acc = torch.zeros((b, kvh, g, sq, d), dtype=torch.float64, device=q.device)
    for start in range(0, skv, chunk):
        kc, vc = k[:, start:start + chunk].double(), v[:, start:start + chunk].double()
        s = torch.einsum("bskgd,btkd->bkgst", qg, kc) * scale  # (B, KVH, G, Sq, C)
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        k_pos = torch.arange(start, start + kc.shape[1], device=q.device)[None, :]
        ok = torch.ones(sq, kc.shape[1], dtype=torch.bool, device=q.device)
        if causal or window is not None:
            ok &= k_pos <= q_pos
        if window is not None:
            ok &= k_pos > q_pos - window
        s = s.masked_fill(~ok, float("-inf"))
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        alpha = torch.exp(m - m_safe)
        p = torch.exp(s - m_safe)
        den = den * alpha + p.sum(-1, keepdim=True)
        acc = acc * alpha + torch.einsum("bkgst,btkd->bkgsd", p, vc)
        m = m_new
    o = acc / torch.where(den > 0, den, torch.ones_like(den))
    return o.permute(0, 3, 1, 2, 4).reshape(b, sq, h, d)
