"""PyTorch reference for int4 weight-only quantization: quantize (round-to-nearest), pack,
unpack, dequantize and the plain matmul ``int4_matmul_reference`` (layout in ``spec.py``).
``group_params`` / ``quantize_codes`` are the per-group scale / zero and code formulas, shared
with GPTQ (``model/gptq.py``), which applies them to error-compensated weights.

The reference materializes the dequantized weight (that is its job: the float64-capable
ground truth and the "reference" impl); the Triton kernel never does.
"""
from __future__ import annotations

from typing import Optional

import torch

SYMMETRIC_ZERO = 8.0  # symmetric codes are stored offset by 8: q in [0, 15] <-> [-8, 7]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """codes q [out, in] (integers in [0, 15]) -> uint8 [out, in // 2]; low nibble = even k."""
    if q.shape[-1] % 2:
        raise ValueError(f"q's last dim must be even to pack two codes per byte, got {tuple(q.shape)}")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in // 2] -> codes uint8 [out, in] in [0, 15]."""
    lo, hi = packed & 0xF, packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def group_params(wg: torch.Tensor, *, asymmetric: bool, scale_dtype: torch.dtype = torch.float16):
    """Round-to-nearest (scale, zero) of groups wg [..., g] (float32) -> scale [...] float32
    holding ``scale_dtype`` values, zero [...] integer-valued float32 or None (symmetric)."""
    if asymmetric:
        lo = wg.amin(-1).clamp(max=0.0)  # the range always holds 0, so z is a valid code
        hi = wg.amax(-1).clamp(min=0.0)
        scale = (hi - lo) / 15.0
    else:
        scale = wg.abs().amax(-1) / 7.0
    # Scale 1 where the group is all zero or its scale underflows scale_dtype (a range under
    # about 4.5e-7 in fp16): its codes then map to 0, never to 0 / 0 = NaN zero points.
    scale = scale.to(scale_dtype).float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # NaN / inf stay, refused below
    if not bool(torch.isfinite(scale).all()):
        raise ValueError(f"w: a group's scale is not finite in {scale_dtype} (the weight holds "
                         f"NaN/inf or magnitudes above {torch.finfo(scale_dtype).max:g} * 7)")
    zero = torch.clamp(torch.round(-lo / scale), 0, 15) if asymmetric else None
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor]) -> torch.Tensor:
    """Nearest codes in [0, 15] (float) of w for broadcastable scale / zero (None: symmetric)."""
    if zero is None:
        return torch.clamp(torch.round(w / scale), -8, 7) + SYMMETRIC_ZERO
    return torch.clamp(torch.round(w / scale) + zero, 0, 15)


def quantize_int4(w: torch.Tensor, group_size: int = 128, *, asymmetric: bool = False,
                  scale_dtype: torch.dtype = torch.float16):
    """Round-to-nearest group-wise int4 of a Linear weight w [out, in].

    Returns (packed_w uint8 [out, in // 2], scales [in // g, out], zeros [in // g, out] or None).
    Scales are rounded to ``scale_dtype`` before the codes are computed, so the codes are
    the nearest for the scales actually stored. All-zero groups, and groups whose scale
    underflows ``scale_dtype``, get scale 1 (codes map to 0). Non-finite weights are refused.
    """
    from .spec import check_group_size

    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [out, in], got shape {tuple(w.shape)}")
    out, k = w.shape
    g = check_group_size(group_size, k)
    wg = w.detach().to(torch.float32).reshape(out, k // g, g)  # [out, groups, g]
    scale, zero = group_params(wg, asymmetric=asymmetric, scale_dtype=scale_dtype)
    q = quantize_codes(wg, scale[..., None], None if zero is None else zero[..., None])
    packed = pack_int4(q.reshape(out, k))
    scales = scale.t().contiguous().to(scale_dtype)
    zeros = None if zero is None else zero.t().contiguous().to(scale_dtype)
    return packed.contiguous(), scales, zeros


def dequantize_int4(packed_w: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                    group_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W [out, in] = (q - z) * s, computed in float32 (float64 if ``dtype`` is) then cast."""
    math = torch.float64 if dtype == torch.float64 else torch.float32
    q = unpack_int4(packed_w).to(math)  # [out, in]
    s = scales.to(math).t().repeat_interleave(group_size, dim=1)  # [out, in]
    z = SYMMETRIC_ZERO if zeros is None else zeros.to(math).t().repeat_interleave(group_size, dim=1)
    return ((q - z) * s).to(dtype)


def int4_matmul_reference(x: torch.Tensor, packed_w: torch.Tensor, scales: torch.Tensor,
                          zeros: Optional[torch.Tensor], group_size: int) -> torch.Tensor:
    """x [..., in] @ dequant(W).T -> [..., out] in x's dtype: dequantize to x's dtype, then
    torch.matmul (the same math in the same precision as the kernel)."""
    w = dequantize_int4(packed_w, scales, zeros, group_size, dtype=x.dtype)
    return torch.matmul(x, w.t())
