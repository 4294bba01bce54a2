"""JAX building blocks of the Gemini reference model; every op goes through ``kernels.jax_ops``.

``linear`` is THE projection entry point (x @ w.T for a torch.nn.Linear-layout weight
[out, in], the layout of ``model.config.param_specs``): a quantized weight type is dispatched
here, nowhere else. ``with_logical_constraint`` is the sharding hook: the model names logical
axes ("batch", "seq", "embed", "heads", "kv_heads", "mlp", "vocab"); it is a no-op unless
``logical_axis_rules(rules, mesh)`` is active, which maps them to mesh axes.
"""
from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from kernels import jax_ops

_ACTIVE = {"rules": None, "mesh": None}


@contextlib.contextmanager
def logical_axis_rules(rules: dict, mesh):
    """Within the block, ``with_logical_constraint`` maps logical axis names to mesh axes
    (``rules[name]``: a mesh axis name, a tuple of them, or None = replicated)."""
    saved = dict(_ACTIVE)
    _ACTIVE.update(rules=dict(rules), mesh=mesh)
    try:
        yield
    finally:
        _ACTIVE.update(saved)


def with_logical_constraint(x: jax.Array, axes: tuple) -> jax.Array:
    """Annotate x's dims with logical axis names (None: unconstrained); no-op without rules."""
    rules = _ACTIVE["rules"]
    if rules is None:
        return x
    if len(axes) != x.ndim:
        raise ValueError(f"axes {axes} must name each of x's {x.ndim} dims (shape {x.shape})")
    spec = PartitionSpec(*(rules.get(a) if a is not None else None for a in axes))
    return jax.lax.with_sharding_constraint(x, NamedSharding(_ACTIVE["mesh"], spec))


def attention(q, k, v, *, impl: str, **opts):
    """The model's attention dispatch: ``jax_ops.attention(q, k, v, impl=impl, **opts)``.

    impl "ring": context parallelism over the active rules' "seq" mesh axis with
    ``sharding.ring_attention_jax`` (ppermute ring over the Pallas kernel); the sequence, and
    the positions given to rope, must then be in zigzag order (``zigzag_indices``); it refuses
    ``bidirectional_ids`` (ModelConfig.bidirectional_media)."""
    if impl != "ring":
        return jax_ops.attention(q, k, v, impl=impl, **opts)
    if opts.get("bidirectional_ids") is not None:
        raise ValueError('attention impl "ring" (context parallel) does not support bidirectional_ids '
                         "(ModelConfig.bidirectional_media=True with media_ids); use a non-ring attention impl")
    rules = _ACTIVE["rules"]
    if rules is None or not isinstance(rules.get("seq"), str):
        raise ValueError('attention impl "ring" needs active sharding rules that split "seq" over one '
                         f"mesh axis (sharding.jax_sharding.activate), got rules {rules}")
    from sharding.ring_attention_jax import ring_attention_zigzag  # only the "ring" impl needs it

    def spec(axes):
        return PartitionSpec(*(rules.get(a) if a is not None else None for a in axes))

    return ring_attention_zigzag(q, k, v, mesh=_ACTIVE["mesh"], axis_name=rules["seq"],
                                 q_spec=spec(("batch", "seq", "heads", None)),
                                 kv_spec=spec(("batch", "seq", "kv_heads", None)), **opts)


def linear(x: jax.Array, w) -> jax.Array:
    """x [..., in] @ w.T -> [..., out]; w [out, in]. The one dispatch point for projections."""
    if isinstance(w, (jax.Array, jax.core.Tracer)):
        return jnp.einsum("...i,oi->...o", x, w)
    if hasattr(w, "linear"):  # int4: model.quantize.QuantizedWeightJax
        return w.linear(x)
    raise TypeError(f"linear: w must be a jax.Array, got {type(w).__name__}")


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """cap * tanh(x / cap) (Gemma 2's logit soft-capping); identity for cap=None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def embed(table, tokens: jax.Array) -> jax.Array:
    """table[tokens] * sqrt(width), the scale rounded to the table's dtype (as HF Gemma).

    table [vocab, width]: an array, or a packed one (``model.quantize.QuantizedEmbeddingJax``)
    whose ``embed(tokens)`` dequantizes only the tokens' rows, in its compute dtype."""
    x = table.embed(tokens) if hasattr(table, "embed") else jnp.take(table, tokens, axis=0)  # (B, S, W)
    return x * jnp.asarray(math.sqrt(table.shape[1]), dtype=x.dtype)


def rms_norm(x, w, *, eps: float, impl: str, residual=None):
    """Gemma RMSNorm x / rms(x) * (1 + w), fp32 math; with residual: (norm(x + r), x + r)."""
    return jax_ops.rms_norm(x, w, eps=eps, gemma=True, residual=residual, impl=impl)


def mlp(x, gate_w, up_w, down_w, *, impl: str):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x)); x (B, S, W)."""
    h = jax_ops.gated_gelu(linear(x, gate_w), linear(x, up_w), approximate="tanh", impl=impl)
    h = with_logical_constraint(h, ("batch", "seq", "mlp"))  # (B, S, M)
    return linear(h, down_w)  # (B, S, W)
