"""JAX reference for int4 weight-only quantization: quantize (round-to-nearest), unpack,
dequantize, and ``int4_matmul_reference`` (dequantize, then jnp.matmul). Layout in ``spec.py``;
same codes, scales and zero points as the PyTorch ``reference.quantize_int4``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

SYMMETRIC_ZERO = 8.0


def quantize_int4(w, group_size: int = 128, *, asymmetric: bool = False, scale_dtype=jnp.float16):
    """w [out, in] -> (packed_w uint8 [out, in // 2], scales [in // g, out], zeros or None)."""
    from .spec import check_group_size

    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [out, in], got shape {w.shape}")
    g = check_group_size(group_size, w.shape[1])
    packed, scales, zeros = _quantize(jnp.asarray(w), g, bool(asymmetric), jnp.dtype(scale_dtype))
    if not bool(jnp.isfinite(scales).all()):
        raise ValueError(f"w: a group's scale is not finite in {jnp.dtype(scale_dtype)} (the weight "
                         f"holds NaN/inf or magnitudes above {float(jnp.finfo(scale_dtype).max):g} * 7)")
    return packed, scales, zeros


def _nonzero(scale):
    """Scale 1 where a group is all zero or its scale underflowed the scale dtype (codes map to
    0; never a 0 / 0 = NaN zero point), as the PyTorch ``group_params``."""
    return jnp.where(scale == 0, 1.0, scale)  # NaN / inf stay: quantize_int4 refuses them


def _div_exact(x, c: float):
    """x / c correctly rounded, as torch divides: XLA rewrites division by a constant into a
    multiply by its (inexact) reciprocal, whose 1-ulp differences flip fp16 scales; a divisor
    hidden behind an optimization barrier stays a true division."""
    return x / jax.lax.optimization_barrier(jnp.full(x.shape, c, x.dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _quantize(w, g: int, asymmetric: bool, scale_dtype):
    out, k = w.shape
    wg = w.astype(jnp.float32).reshape(out, k // g, g)
    if asymmetric:
        lo, hi = jnp.minimum(wg.min(-1), 0.0), jnp.maximum(wg.max(-1), 0.0)
        scale = _div_exact(hi - lo, 15.0)
        scale = _nonzero(scale.astype(scale_dtype).astype(jnp.float32))
        zero = jnp.clip(jnp.round(-lo / scale), 0, 15)
        q = jnp.clip(jnp.round(wg / scale[..., None]) + zero[..., None], 0, 15)
    else:
        scale = _div_exact(jnp.abs(wg).max(-1), 7.0)
        scale = _nonzero(scale.astype(scale_dtype).astype(jnp.float32))
        zero = None
        q = jnp.clip(jnp.round(wg / scale[..., None]), -8, 7) + SYMMETRIC_ZERO
    q = q.reshape(out, k).astype(jnp.uint8)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed, scale.T.astype(scale_dtype), None if zero is None else zero.T.astype(scale_dtype)


def unpack_int4(packed):
    """uint8 [out, in // 2] -> codes uint8 [out, in]."""
    return jnp.stack([packed & 0xF, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)


def dequantize_int4(packed_w, scales, zeros, group_size: int, dtype=jnp.float32):
    """W [out, in] = (q - z) * s in float32 (float64 when ``dtype`` is) then cast to ``dtype``."""
    math = jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
    q = unpack_int4(packed_w).astype(math)
    s = jnp.repeat(scales.astype(math).T, group_size, axis=1)
    z = SYMMETRIC_ZERO if zeros is None else jnp.repeat(zeros.astype(math).T, group_size, axis=1)
    return ((q - z) * s).astype(dtype)


def int4_matmul_reference(x, packed_w, scales, zeros, group_size: int):
    """x [..., in] @ dequant(W).T -> [..., out] in x's dtype (fp32 math at HIGHEST for fp32)."""
    w = dequantize_int4(packed_w, scales, zeros, group_size, dtype=x.dtype)
    return jnp.matmul(x, w.T, precision="highest", preferred_element_type=jnp.float32).astype(x.dtype) \
        if x.dtype != jnp.float64 else jnp.matmul(x, w.T, precision="highest")
