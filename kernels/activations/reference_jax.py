"""Plain jax.numpy gelu / gated_gelu: the reference every JAX activation kernel is checked against.

Same semantics as ``kernels.jax_ops.gelu`` / ``gated_gelu`` (``spec.py``); fp32 math by
default, ``upcast=False`` in the input dtype. Jitted, it is the "xla" peer.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .spec import check_gelu_args

_DTYPES = tuple(jnp.dtype(t) for t in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))


def _gelu(x, up, *, approximate: str, upcast: bool = True):
    cdt = jnp.promote_types(x.dtype, jnp.float32) if upcast else x.dtype
    y = jax.nn.gelu(x.astype(cdt), approximate=approximate == "tanh")
    if up is not None:
        y = y * up.astype(cdt)
    return y.astype(x.dtype)


_gelu_jit = jax.jit(_gelu, static_argnames=("approximate", "upcast"))


def gelu_reference(x, *, approximate="tanh", upcast=True):
    check_gelu_args(x, None, approximate=approximate, dtypes=_DTYPES)
    return _gelu(x, None, approximate=approximate, upcast=upcast)


def gated_gelu_reference(gate, up, *, approximate="tanh", upcast=True):
    check_gelu_args(gate, up, approximate=approximate, dtypes=_DTYPES)
    return _gelu(gate, up, approximate=approximate, upcast=upcast)
