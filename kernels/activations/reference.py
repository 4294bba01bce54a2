"""Plain PyTorch gelu / gated_gelu: the reference every PyTorch activation kernel is checked against.

Same semantics as ``kernels.torch_ops.gelu`` / ``gated_gelu`` (``spec.py``). fp32 math by
default; ``upcast=False`` computes in the input dtype (the same-precision baseline); float64
inputs give the ground truth. ``torch.compile`` of ``_gelu`` is the "compiled" peer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import check_gelu_args

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _gelu(x, up, *, approximate: str, upcast: bool = True):
    cdt = torch.promote_types(x.dtype, torch.float32) if upcast else x.dtype
    y = F.gelu(x.to(cdt), approximate=approximate)
    if up is not None:
        y = y * up.to(cdt)
    return y.to(x.dtype)


def gelu_reference(x, *, approximate="tanh", upcast=True):
    check_gelu_args(x, None, approximate=approximate, dtypes=_DTYPES, device_of=lambda t: t.device)
    return _gelu(x, None, approximate=approximate, upcast=upcast)


def gated_gelu_reference(gate, up, *, approximate="tanh", upcast=True):
    check_gelu_args(gate, up, approximate=approximate, dtypes=_DTYPES, device_of=lambda t: t.device)
    return _gelu(gate, up, approximate=approximate, upcast=upcast)
