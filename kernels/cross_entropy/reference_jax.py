"""jnp linear cross-entropy (the semantics of ``spec.py``), with full [N, V] logits.

The head matmul in x's dtype with fp32 accumulation (float64 stays float64), then the softcap
and the log-softmax in that precision: what ``model.jax_model.forward`` + ``model.losses``
compute, and the float64 truth of the tests when given float64 inputs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def linear_cross_entropy_reference(x, weight, targets, mask=None, *, softcap=None, normalizer=None):
    w = weight.shape[1]
    x2, t = x.reshape(-1, w), targets.reshape(-1).astype(jnp.int32)
    m = jnp.ones(t.shape, bool) if mask is None else mask.reshape(-1)
    acc = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
    z = jnp.einsum("nw,vw->nv", x2, weight, preferred_element_type=acc)
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    z_t = jnp.take_along_axis(z, jnp.where(m, t, 0)[:, None], axis=-1)[:, 0]
    nll = jax.nn.logsumexp(z, axis=-1) - z_t
    denom = jnp.maximum(m.sum(), 1).astype(acc) if normalizer is None else normalizer
    return jnp.where(m, nll, 0.0).sum() / denom
