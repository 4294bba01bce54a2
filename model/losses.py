"""Training losses, the same math in PyTorch (``torch_*``) and JAX (``jax_*``).

    masked_cross_entropy = sum_{mask} -log softmax(logits)[target] / normalizer
    distill_kl           = T^2 * sum_{mask} KL(softmax(teacher / T) || softmax(student / T)) / normalizer
    mix                  = (1 - weight) * ce + weight * kl

``normalizer`` defaults to the number of masked positions; the training loop passes the
count over the whole (accumulated) batch so that micro-batch losses add up to the
big-batch loss exactly. The T^2 factor (Hinton et al. 2015) keeps the soft-target
gradients on the same scale as the hard-target ones when T changes. Math in fp32.
"""
from __future__ import annotations


def _check(temperature: float, weight: float | None = None):
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if weight is not None and not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must lie in [0, 1], got {weight}")


def _check_shapes(logits, targets, mask):
    if tuple(logits.shape[:-1]) != tuple(targets.shape) or tuple(mask.shape) != tuple(targets.shape):
        raise ValueError(f"logits [B, S, V], targets [B, S], mask [B, S] expected, got logits "
                         f"{tuple(logits.shape)}, targets {tuple(targets.shape)}, mask {tuple(mask.shape)}")


def mix(ce, kl, weight: float):
    """(1 - weight) * ce + weight * kl."""
    _check(1.0, weight)
    return (1.0 - weight) * ce + weight * kl


# ---------------------------------------------------------------- PyTorch
def torch_masked_cross_entropy(logits, targets, mask, *, normalizer=None):
    import torch

    _check_shapes(logits, targets, mask)
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -torch.gather(logp, -1, targets.long().unsqueeze(-1)).squeeze(-1)  # (B, S)
    m = mask.to(nll.dtype)
    denom = m.sum().clamp_min(1.0) if normalizer is None else normalizer
    return (nll * m).sum() / denom


def torch_distill_kl(student_logits, teacher_logits, mask, *, temperature=1.0, normalizer=None):
    import torch

    _check(temperature)
    _check_shapes(student_logits, mask, mask)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} must match student logits "
                         f"{tuple(student_logits.shape)}")
    t = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (B, S)
    m = mask.to(kl.dtype)
    denom = m.sum().clamp_min(1.0) if normalizer is None else normalizer
    return temperature ** 2 * (kl * m).sum() / denom


# ---------------------------------------------------------------- JAX
def jax_masked_cross_entropy(logits, targets, mask, *, normalizer=None):
    import jax
    import jax.numpy as jnp

    _check_shapes(logits, targets, mask)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    m = mask.astype(nll.dtype)
    denom = jnp.maximum(m.sum(), 1.0) if normalizer is None else normalizer
    return (nll * m).sum() / denom


def jax_distill_kl(student_logits, teacher_logits, mask, *, temperature=1.0, normalizer=None):
    import jax
    import jax.numpy as jnp

    _check(temperature)
    _check_shapes(student_logits, mask, mask)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} must match student logits "
                         f"{tuple(student_logits.shape)}")
    t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, -1)
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, -1)
    kl = (jnp.exp(t) * (t - s)).sum(-1)
    m = mask.astype(kl.dtype)
    denom = jnp.maximum(m.sum(), 1.0) if normalizer is None else normalizer
    return temperature ** 2 * (kl * m).sum() / denom
