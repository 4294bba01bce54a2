"""Plain PyTorch rope / rope_2d: the reference every PyTorch rope kernel is checked against.

Same semantics as ``kernels.torch_ops.rope`` / ``rope_2d`` (``spec.py``). ``upcast=True``:
fp32 angles, cos, sin and products (float64 throughout for float64 input, the ground truth);
``upcast=False``: as HF does in low precision -- fp32 cos/sin rounded to x's dtype, products
in x's dtype (the same-precision baseline). ``torch.compile`` of ``_rope`` is the peer.
"""
from __future__ import annotations

import functools

import torch

from .spec import check_rope_args, inv_freq64

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _table(half: int, theta: float, device, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(inv_freq64(half, theta), device=device).to(dtype)


@functools.lru_cache(maxsize=64)
def _inv_freq_on(half: int, theta: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # usable in any later autograd / mode
        return _table(half, theta, device, dtype)


def inv_freq(half: int, theta: float, device, dtype: torch.dtype) -> torch.Tensor:
    """``inv_freq64`` on ``device`` in ``dtype``, copied there once per (half, theta, device,
    dtype) and kept: a host-to-device copy on every call would stop the step it sits in from
    being captured as a CUDA graph (and costs a synchronizing copy per layer). Traced by
    torch.compile, the table is built in the graph (a constant)."""
    if torch.compiler.is_compiling():
        return _table(half, theta, device, dtype)
    return _inv_freq_on(int(half), float(theta), torch.device(device), dtype)


def _rope(x, positions, *, theta: float, sections: int, upcast: bool = True):
    b, s, h, d = x.shape
    half = d // (2 * sections)
    adt = torch.float64 if x.dtype == torch.float64 else torch.float32  # angle precision
    cdt = torch.promote_types(x.dtype, torch.float32) if upcast else x.dtype
    inv = inv_freq(half, theta, x.device, adt)
    pos = positions.reshape(b, s, sections).to(adt)
    parts = []
    for j in range(sections):
        ang = pos[:, :, j, None] * inv  # (B, S, half)
        cos, sin = ang.cos()[:, :, None].to(cdt), ang.sin()[:, :, None].to(cdt)  # (B, S, 1, half)
        xj = x[..., 2 * half * j: 2 * half * (j + 1)].to(cdt)
        x1, x2 = xj[..., :half], xj[..., half:]
        parts += [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    return torch.cat(parts, -1).to(x.dtype)


def rope_reference(x, positions, *, theta=10000.0, upcast=True):
    p = check_rope_args(x, positions, theta=theta, sections=1, dtypes=_DTYPES,
                        device_of=lambda t: t.device)
    return _rope(x, positions, theta=p.theta, sections=1, upcast=upcast)


def rope_2d_reference(x, positions_hw, *, theta=10000.0, upcast=True):
    p = check_rope_args(x, positions_hw, theta=theta, sections=2, dtypes=_DTYPES,
                        device_of=lambda t: t.device)
    return _rope(x, positions_hw, theta=p.theta, sections=2, upcast=upcast)
