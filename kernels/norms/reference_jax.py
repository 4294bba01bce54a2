"""Plain jax.numpy rms_norm / layer_norm: the reference every JAX norm kernel is checked against.

Same semantics as ``kernels.jax_ops.rms_norm`` / ``layer_norm`` (see ``spec.py``); fp32 math
by default, ``upcast=False`` computes in the input dtype. Jitted, it is the "xla" peer.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .spec import check_norm_args, resolve_offset

_DTYPES = tuple(jnp.dtype(t) for t in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))


def _norm(x, weight, bias, residual, *, rms: bool, eps: float, offset: float, upcast: bool = True):
    """y, or (y, h) when ``residual`` is given; normalized over the last dim."""
    h = x if residual is None else x + residual
    cdt = jnp.promote_types(x.dtype, jnp.float32) if upcast else x.dtype
    hf = h.astype(cdt)
    if rms:
        n = hf * jax.lax.rsqrt(jnp.mean(hf * hf, -1, keepdims=True) + eps)
        y = n * (weight.astype(cdt) + offset)
    else:
        d = hf - jnp.mean(hf, -1, keepdims=True)
        n = d * jax.lax.rsqrt(jnp.mean(d * d, -1, keepdims=True) + eps)
        y = n * weight.astype(cdt) + bias.astype(cdt)
    y = y.astype(x.dtype)
    return y if residual is None else (y, h)


_norm_jit = jax.jit(_norm, static_argnames=("rms", "eps", "offset", "upcast"))


def rms_norm_reference(x, weight, *, eps=1e-6, offset=0.0, gemma=False, residual=None, upcast=True):
    off = resolve_offset(offset, gemma)
    p = check_norm_args(x, weight, None, residual, rms=True, eps=eps, offset=off, dtypes=_DTYPES)
    return _norm(x, weight, None, residual, rms=True, eps=p.eps, offset=off, upcast=upcast)


def layer_norm_reference(x, weight, bias, *, eps=1e-5, residual=None, upcast=True):
    p = check_norm_args(x, weight, bias, residual, rms=False, eps=eps, offset=0.0, dtypes=_DTYPES)
    return _norm(x, weight, bias, residual, rms=False, eps=p.eps, offset=0.0, upcast=upcast)


norm_xla = functools.partial(_norm_jit, upcast=True)  # the "xla" peer: the jitted reference
