"""Plain jax.numpy rope / rope_2d: the reference every JAX rope kernel is checked against.

Same semantics as ``kernels.jax_ops.rope`` / ``rope_2d`` (``spec.py``); ``upcast`` as in the
PyTorch reference (``reference.py``). Jitted, it is the "xla" peer.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .spec import check_rope_args, inv_freq64

_DTYPES = tuple(jnp.dtype(t) for t in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))


def _rope(x, positions, *, theta: float, sections: int, upcast: bool = True):
    b, s, h, d = x.shape
    half = d // (2 * sections)
    adt = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
    cdt = jnp.promote_types(x.dtype, jnp.float32) if upcast else x.dtype
    inv = jnp.asarray(inv_freq64(half, theta).astype(adt))
    pos = positions.reshape(b, s, sections).astype(adt)
    parts = []
    for j in range(sections):
        ang = pos[:, :, j, None] * inv  # (B, S, half)
        cos, sin = jnp.cos(ang)[:, :, None].astype(cdt), jnp.sin(ang)[:, :, None].astype(cdt)
        xj = x[..., 2 * half * j: 2 * half * (j + 1)].astype(cdt)
        x1, x2 = xj[..., :half], xj[..., half:]
        parts += [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    return jnp.concatenate(parts, -1).astype(x.dtype)


_rope_jit = jax.jit(_rope, static_argnames=("theta", "sections", "upcast"))


def rope_reference(x, positions, *, theta=10000.0, upcast=True):
    p = check_rope_args(x, positions, theta=theta, sections=1, dtypes=_DTYPES)
    return _rope(x, positions, theta=p.theta, sections=1, upcast=upcast)


def rope_2d_reference(x, positions_hw, *, theta=10000.0, upcast=True):
    p = check_rope_args(x, positions_hw, theta=theta, sections=2, dtypes=_DTYPES)
    return _rope(x, positions_hw, theta=p.theta, sections=2, upcast=upcast)
