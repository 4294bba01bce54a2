"""JAX back end: a Plan (sharding/rules.py) on a device mesh, and the sharded train step.

Parameters get ``NamedSharding``s from the plan's parameter rules (so gradients and Adam
state, created with the same shardings, are sharded the same way: ZeRO-3 under "fsdp");
the batch gets the activation rules' ("batch", "seq") split. The step is one ``jax.jit``
with explicit in/out shardings; XLA's SPMD partitioner inserts the collectives (all-gather
of FSDP shards, reduce-scatter / all-reduce of gradients, Megatron all-reduces). Inside
the model, activations are pinned by its hook ``model.jax_layers.with_logical_constraint``
(logical names): ``activate(plan, cfg, mesh)`` maps them with the plan's activation rules.

FSDP gathers are explicit: the loss constrains every parameter to its compute sharding
(``compute_shardings``: its own minus the fsdp axis) before the forward, so each shard is
gathered ONCE and the forward and the backward matmuls use that one value (its transpose
reduces the gradient back to the shard). Left implicit, XLA partitions the forward and the
backward use of a 2-D (fsdp x tensor) sharded weight separately and emits two gathers
that CSE does not merge (their replica groups are spelled differently: ``mesh[...]`` vs
iota), which doubled the fsdp+tp all-gather bytes against the profile. Cost: a gathered
weight may stay live from its forward use to its backward use (XLA's scheduler decides;
with ``remat`` the gathers sit inside the checkpointed forward and are redone in the
backward, a second gather per parameter, as the profile's remat=true models it).

Context parallelism ("sp"): with the model's attention impl "ring"
(``KernelConfig(..., attention="ring")``) attention runs ``sharding/ring_attention_jax.py``
inside a shard_map over the seq axis (K/V blocks passed with collective-permutes, Pallas
kernel per block) on a zigzag-ordered sequence (``zigzag_order``); with "xla" / "reference"
XLA all-gathers K and V over the seq axis instead.

Limits: other Pallas kernels are opaque custom calls to the SPMD partitioner (XLA would
gather their inputs): run the other ops with the model's "xla" or "reference" kernels.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from model.config import ModelConfig, param_specs
from model.jax_layers import logical_axis_rules
from sharding.ring_attention_jax import zigzag_indices
from sharding.rules import MESH_AXES, Plan, activation_axes, param_axes, validate

def make_mesh(plan: Plan, devices=None) -> jax.sharding.Mesh:
    """A mesh with axes MESH_AXES sized by the plan (Auto axes: jit in/out shardings rule)."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != plan.devices:
        raise ValueError(f"mesh product {plan.devices} ({plan.mesh}) differs from the device "
                         f"count {len(devices)}")
    return jax.make_mesh(plan.mesh_shape(), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def _spec(dim_axes) -> P:
    return P(*[None if not a else (a[0] if len(a) == 1 else a) for a in dim_axes])


def param_shardings(plan: Plan, cfg: ModelConfig, mesh) -> dict[str, NamedSharding]:
    return {name: NamedSharding(mesh, _spec(axes)) for name, axes in param_axes(plan, cfg).items()}


def compute_shardings(plan: Plan, cfg: ModelConfig, mesh) -> dict[str, NamedSharding]:
    """Each parameter's sharding where it is used: its own minus the FSDP axis (gathered)."""
    return {name: NamedSharding(mesh, _spec(tuple(tuple(a for a in d if a != "fsdp") for d in axes)))
            for name, axes in param_axes(plan, cfg).items()}


def batch_sharding(plan: Plan, cfg: ModelConfig, mesh) -> NamedSharding:
    """tokens / targets [B, S]."""
    return NamedSharding(mesh, _spec(activation_axes(plan, cfg, ("batch", "seq"))))


def logical_rules(plan: Plan, cfg: ModelConfig) -> dict:
    """Activation rules for ``model.jax_layers.logical_axis_rules``: logical name -> mesh axes.

    Names whose model dimension the mesh does not divide (MQA's one kv head under "tp") map
    to None (replicated).
    """
    out = {}
    for name in ("batch", "seq", "embed", "heads", "kv_heads", "mlp", "vocab"):
        (axes,) = activation_axes(plan, cfg, (name,))
        out[name] = None if not axes else (axes[0] if len(axes) == 1 else axes)
    return out


def activate(plan: Plan, cfg: ModelConfig, mesh):
    """Context manager: the model's ``with_logical_constraint`` hook maps names with ``plan``."""
    return logical_axis_rules(logical_rules(plan, cfg), mesh)


# --- training step ------------------------------------------------------------------------

def cross_entropy(logits, targets):
    """Mean next-token cross-entropy in fp32; logits [B, S, V], targets [B, S]."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(lse - picked)


def adam_init(params):
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    return {"m": zeros, "v": jax.tree.map(jnp.copy, zeros), "step": jnp.zeros((), jnp.int32)}


def adam_update(params, grads, opt, *, lr=1e-3, b1=0.9, b2=0.95, eps=1e-8):
    step = opt["step"] + 1
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g.astype(jnp.float32), opt["m"], grads)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g.astype(jnp.float32)), opt["v"], grads)
    c1, c2 = 1 - b1 ** step.astype(jnp.float32), 1 - b2 ** step.astype(jnp.float32)
    new = jax.tree.map(lambda p, m, v: (p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps)).astype(p.dtype),
                       params, m, v)
    return new, {"m": m, "v": v, "step": step}


def loss_fn(params, tokens, targets, *, forward, cfg, kernels=None, gather=None, positions=None, remat=False):
    def logits(params):
        if gather is not None:
            params = {k: jax.lax.with_sharding_constraint(v, gather[k]) for k, v in params.items()}
        return forward(params, tokens, cfg=cfg, kernels=kernels, positions=positions)

    if remat:  # model/train_jax.py's policy; the gathers are inside, so the backward redoes them
        logits = jax.checkpoint(logits, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    return cross_entropy(logits(params), targets)


def uses_ring(kernels) -> bool:
    """Whether the step runs context-parallel ring attention (kernels attention impl "ring")."""
    return kernels is not None and kernels.impl("attention") == "ring"


def zigzag_order(plan: Plan, seq_len: int) -> np.ndarray:
    """The sequence order a ring-attention step expects its tokens and targets in.

    ``tokens[:, zigzag_order(plan, S)]``: natural positions in zigzag order over the plan's
    seq axis (device i's contiguous slice holds chunks i and 2n-1-i of 2n), so causal work is
    balanced. The mean loss does not depend on the order; the step gives rope these positions.
    """
    return zigzag_indices(seq_len, plan.axis_product(plan.act_rules.get("seq", ())))


def make_train_step(forward, cfg: ModelConfig, plan: Plan, mesh, *, kernels=None, batch: int,
                    seq_len: int, optimizer: bool = True, remat: bool = False):
    """jit(step) with the plan's shardings. Validates the plan first (no compilation on error).

    With ``kernels.attention == "ring"`` (context parallelism over the plan's seq axis) the
    step takes tokens and targets in ``zigzag_order(plan, seq_len)`` and gives rope the
    matching positions. ``remat``: the forward (parameter gathers included) under
    ``jax.checkpoint`` with model/train_jax.py's policy, recomputed in the backward.

    step(params, opt, tokens, targets) -> (loss, grads, new_params, new_opt) when ``optimizer``
    else step(params, tokens, targets) -> (loss, grads). Gradients, parameters and Adam
    moments leave the step sharded like the parameters.
    """
    validate(plan, cfg, batch=batch, seq_len=seq_len)
    positions = None
    if uses_ring(kernels):
        if not plan.act_rules.get("seq"):
            raise ValueError(f'attention impl "ring" needs a strategy with a sequence axis larger than 1 '
                             f"(e.g. 'sp' with mesh.seq > 1), got {plan.strategy!r} on {plan.mesh}")
        positions = np.broadcast_to(zigzag_order(plan, seq_len)[None], (batch, seq_len)).astype(np.int32)
    ps = param_shardings(plan, cfg, mesh)
    bs = batch_sharding(plan, cfg, mesh)
    scalar = NamedSharding(mesh, P())
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, forward=forward, cfg=cfg, kernels=kernels,
                                                   gather=compute_shardings(plan, cfg, mesh),
                                                   positions=positions, remat=remat))

    def grads_only(params, tokens, targets):
        with activate(plan, cfg, mesh):
            return grad_fn(params, tokens, targets)

    if not optimizer:
        return jax.jit(grads_only, in_shardings=(ps, bs, bs), out_shardings=(scalar, ps))

    def step(params, opt, tokens, targets):
        loss, grads = grads_only(params, tokens, targets)
        new, opt = adam_update(params, grads, opt)
        return loss, grads, new, opt

    os_ = {"m": ps, "v": ps, "step": scalar}
    return jax.jit(step, in_shardings=(ps, os_, bs, bs), out_shardings=(scalar, ps, ps, os_),
                   donate_argnums=())


def shard_params(params: dict, plan: Plan, cfg: ModelConfig, mesh) -> dict:
    """device_put every parameter with its sharding (names must match param_specs)."""
    specs = param_specs(cfg)
    if set(params) != set(specs):
        missing, extra = sorted(set(specs) - set(params)), sorted(set(params) - set(specs))
        raise ValueError(f"parameter names differ from param_specs: missing {missing[:3]}, extra {extra[:3]}")
    ps = param_shardings(plan, cfg, mesh)
    return {k: jax.device_put(v, ps[k]) for k, v in params.items()}
