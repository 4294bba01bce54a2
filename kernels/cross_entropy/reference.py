"""Plain-torch linear cross-entropy (the semantics of ``spec.py``), with full logits.

``upcast=True``: logits and softmax in fp32 (float64 stays float64), the reference.
``upcast=False``: the head matmul in x's dtype, then fp32 softmax: what a model does when it
computes bf16 logits and hands them to a float loss (the framework baseline of the tests).
"""
from __future__ import annotations

import torch


def _linear_cross_entropy(x, weight, targets, mask=None, *, softcap=None, normalizer=None, upcast=True):
    w = weight.shape[1]
    x2, t = x.reshape(-1, w), targets.reshape(-1).long()
    m = torch.ones_like(t, dtype=torch.bool) if mask is None else mask.reshape(-1)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = (x2.to(acc) @ weight.to(acc).T) if upcast else (x2 @ weight.T).to(acc)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    nll = torch.logsumexp(z, -1) - z.gather(-1, torch.where(m, t, 0)[:, None])[:, 0]
    denom = m.sum().clamp_min(1).to(acc) if normalizer is None else normalizer
    return (nll * m).sum() / denom
