"""JAX front-end: validated, differentiable ops with an ``impl`` switch.

    attention(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
              segment_ids=None, impl="pallas")

impls: "pallas" (GPU-style Pallas flash attention; interpret mode when JAX has no GPU),
"reference" (jax.numpy, fp32 math), "xla" (jax.nn.dot_product_attention, the peer).
Arguments are checked before anything launches; there is no fallback between impls.
"""
from __future__ import annotations

import jax.numpy as jnp

from .attention.spec import check_attention_args, check_impl

ATTENTION_IMPLS = ("pallas", "reference", "xla", "pallas_mgpu", "pallas_tpu")
JAX_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))


def attention(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
              segment_ids=None, impl="pallas"):
    """Multi-query / grouped-query / multi-head attention. See ``kernels/attention/spec.py``."""
    check_impl(impl, ATTENTION_IMPLS)
    problem, q_ids, kv_ids = check_attention_args(
        q, k, v, causal=causal, window=window, softcap=softcap, scale=scale,
        segment_ids=segment_ids, dtypes=JAX_DTYPES,
    )
    kwargs = dict(causal=causal, window=window, softcap=problem.softcap, scale=problem.scale,
                  q_segment_ids=q_ids, kv_segment_ids=kv_ids)
    if impl == "pallas":
        from .attention.pallas_attention import attention_pallas

        return attention_pallas(q, k, v, **kwargs)
    if impl == "pallas_mgpu":  # Hopper Mosaic GPU forward; fp16/bf16, no segment_ids
        from .attention.pallas_mgpu import attention_pallas_mgpu

        return attention_pallas_mgpu(q, k, v, **kwargs)
    if impl == "pallas_tpu":  # TPU Mosaic kernels; TPU interpret mode off-TPU
        from .attention.pallas_tpu import attention_pallas_tpu

        return attention_pallas_tpu(q, k, v, **kwargs)
    if impl == "xla":
        from .attention.xla import attention_xla

        return attention_xla(q, k, v, **kwargs)
    from .attention.reference_jax import _attention

    return _attention(q, k, v, **kwargs)
