"""Plain PyTorch rms_norm / layer_norm: the reference every PyTorch norm kernel is checked against.

Same semantics as ``kernels.torch_ops.rms_norm`` / ``layer_norm`` (see ``spec.py``). Math in
fp32 by default (``upcast=True``); ``upcast=False`` computes in the input dtype, the
"framework in the same precision" baseline for kernel errors. float64 inputs give the
ground truth. ``torch.compile`` of ``_norm`` is the "compiled" peer.
"""
from __future__ import annotations

import torch

from .spec import check_norm_args, resolve_offset

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _norm(x, weight, bias, residual, *, rms: bool, eps: float, offset: float, upcast: bool = True):
    """y, or (y, h) when ``residual`` is given; normalized over the last dim."""
    h = x if residual is None else x + residual  # the residual add rounds to x's dtype
    cdt = torch.promote_types(x.dtype, torch.float32) if upcast else x.dtype
    hf = h.to(cdt)
    if rms:
        n = hf * torch.rsqrt(hf.square().mean(-1, keepdim=True) + eps)
        y = n * (weight.to(cdt) + offset)
    else:
        d = hf - hf.mean(-1, keepdim=True)
        n = d * torch.rsqrt(d.square().mean(-1, keepdim=True) + eps)
        y = n * weight.to(cdt) + bias.to(cdt)
    y = y.to(x.dtype)
    return y if residual is None else (y, h)


def rms_norm_reference(x, weight, *, eps=1e-6, offset=0.0, gemma=False, residual=None, upcast=True):
    off = resolve_offset(offset, gemma)
    p = check_norm_args(x, weight, None, residual, rms=True, eps=eps, offset=off, dtypes=_DTYPES,
                        device_of=lambda t: t.device)
    return _norm(x, weight, None, residual, rms=True, eps=p.eps, offset=off, upcast=upcast)


def layer_norm_reference(x, weight, bias, *, eps=1e-5, residual=None, upcast=True):
    p = check_norm_args(x, weight, bias, residual, rms=False, eps=eps, offset=0.0, dtypes=_DTYPES,
                        device_of=lambda t: t.device)
    return _norm(x, weight, bias, residual, rms=False, eps=p.eps, offset=0.0, upcast=upcast)
