"""Test helper (not a test file): an independent float64 attention oracle and independent
same-precision baselines, for checking the references themselves.

``oracle_attention`` is brute force in numpy float64: explicit loops over batch, query and
key at absolute positions (query i sits at p = i + kv_len - q_len, bottom-right aligned),
the mask written out rule by rule from ``kernels/attention/spec.py`` (causal: j <= p;
window W: p - W < j <= p; segments: q_ids[i] == kv_ids[j]), softcap c * tanh(s / c), a
softmax over the visible keys only, zeros for a query that sees no key, and the gradients
derived by hand (no autograd). It calls nothing in ``kernels.attention``, so a semantic slip
in a reference (a wrong scale, a mask edge, softcap) cannot hide in its own ground truth.

``naive_torch`` / ``naive_jax``: plain attention written independently of the references
(K/V repeated per head, mask by broadcasting absolute positions), matmuls in the input
dtype and the softmax in fp32: the "framework doing the same math in the same precision"
baseline whose error sets the bound in ``conftest.assert_close``.
"""
from __future__ import annotations

import numpy as np


def _pair(segment_ids):
    """(q_ids, kv_ids) numpy int64, or (None, None); one array means both (q_len == kv_len)."""
    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, (tuple, list)):
        return tuple(np.asarray(x, np.int64) for x in segment_ids)
    ids = np.asarray(segment_ids, np.int64)
    return ids, ids


def oracle_attention(q, k, v, do, *, causal=False, window=None, softcap=None, scale=None,
                     segment_ids=None):
    """(o, dq, dk, dv) float64 for q [B, Sq, H, D], k/v [B, Skv, KVH, D], dO [B, Sq, H, D].

    Per visible key j of query (b, i) and head h (kv head h // (H / KVH)):
      s_j = scale * q . k_j, t_j = c tanh(s_j / c) (or s_j), P = softmax_j(t), o = sum P_j v_j.
    Backward: dv_j += P_j dO; dP_j = dO . v_j; dt_j = P_j (dP_j - sum_l P_l dP_l);
      ds_j = dt_j (1 - tanh(s_j / c)^2) (or dt_j); dq = scale sum_j ds_j k_j; dk_j += scale ds_j q.
    """
    q, k, v, do = (np.asarray(x, np.float64) for x in (q, k, v, do))
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    group = h // kvh
    scale = d**-0.5 if scale is None else float(scale)
    q_ids, kv_ids = _pair(segment_ids)
    o, dq = np.zeros_like(q), np.zeros_like(q)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    for bi in range(b):
        for i in range(sq):
            p = i + skv - sq
            visible = []
            for j in range(skv):
                if (causal or window is not None) and j > p:
                    continue
                if window is not None and j <= p - window:
                    continue
                if q_ids is not None and q_ids[bi, i] != kv_ids[bi, j]:
                    continue
                visible.append(j)
            if not visible:
                continue  # sees no key: o and every gradient through it stay 0
            js = np.asarray(visible)
            for hi in range(h):
                kh = hi // group
                kj, vj, qi, doi = k[bi, js, kh], v[bi, js, kh], q[bi, i, hi], do[bi, i, hi]
                s = scale * (kj @ qi)
                t = softcap * np.tanh(s / softcap) if softcap is not None else s
                e = np.exp(t - t.max())
                prob = e / e.sum()
                o[bi, i, hi] = prob @ vj
                dv[bi, js, kh] += prob[:, None] * doi[None, :]
                dp = vj @ doi
                dt = prob * (dp - prob @ dp)
                ds = dt * (1.0 - np.tanh(s / softcap) ** 2) if softcap is not None else dt
                dq[bi, i, hi] = scale * (ds @ kj)
                dk[bi, js, kh] += scale * ds[:, None] * qi[None, :]
    return o, dq, dk, dv


def _visible(xp, sq, skv, causal, window, q_ids, kv_ids):
    """Boolean [B or 1, 1, Sq, Skv] by broadcasting absolute positions (xp: torch or jnp)."""
    qpos = xp.arange(sq)[:, None] + (skv - sq)
    kpos = xp.arange(skv)[None, :]
    ok = kpos >= 0  # all True, [1, Skv]
    if causal or window is not None:
        ok = ok & (kpos <= qpos)
    if window is not None:
        ok = ok & (kpos > qpos - window)
    ok = ok[None, None]
    if q_ids is not None:
        ok = ok & (q_ids[:, None, :, None] == kv_ids[:, None, None, :])
    return ok


def naive_torch(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
                segment_ids=None):
    """Differentiable torch attention in q's dtype (fp32 softmax; float64 stays float64)."""
    import torch

    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else scale
    kr, vr = (x.repeat_interleave(h // kvh, dim=2) for x in (k, v))
    sdt = torch.promote_types(q.dtype, torch.float32)
    s = torch.einsum("bihd,bjhd->bhij", q, kr).to(sdt) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    q_ids, kv_ids = _torch_pair(segment_ids)
    ok = _visible(torch, sq, skv, causal, window, q_ids, kv_ids)
    s = torch.where(ok, s, torch.full_like(s, float("-inf")))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    den = e.sum(-1, keepdim=True)
    prob = e / torch.where(den > 0, den, torch.ones_like(den))
    return torch.einsum("bhij,bjhd->bihd", prob.to(q.dtype), vr).to(q.dtype)


def _torch_pair(segment_ids):
    import torch

    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, (tuple, list)):
        return tuple(torch.as_tensor(np.asarray(x)) for x in segment_ids)
    ids = torch.as_tensor(np.asarray(segment_ids))
    return ids, ids


def naive_jax(q, k, v, *, causal=False, window=None, softcap=None, scale=None, segment_ids=None):
    """Differentiable jnp attention in q's dtype (fp32 softmax)."""
    import jax.numpy as jnp

    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else scale
    kr, vr = (jnp.repeat(x, h // kvh, axis=2) for x in (k, v))
    sdt = jnp.promote_types(q.dtype, jnp.float32)
    s = jnp.einsum("bihd,bjhd->bhij", q, kr).astype(sdt) * scale
    if softcap is not None:
        s = softcap * jnp.tanh(s / softcap)
    q_ids, kv_ids = (None, None) if segment_ids is None else (
        tuple(jnp.asarray(x) for x in segment_ids) if isinstance(segment_ids, (tuple, list))
        else (jnp.asarray(segment_ids),) * 2)
    ok = _visible(jnp, sq, skv, causal, window, q_ids, kv_ids)
    s = jnp.where(ok, s, -jnp.inf)
    m = s.max(-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(s - m)
    den = e.sum(-1, keepdims=True)
    prob = e / jnp.where(den > 0, den, 1.0)
    return jnp.einsum("bhij,bjhd->bihd", prob.astype(q.dtype), vr).astype(q.dtype)
