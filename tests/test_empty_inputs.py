"""Empty inputs, every impl in both frameworks, forward and backward.

gelu / gated_gelu take any shape: an empty one gives an empty result and empty gradients
without a launch. linear_cross_entropy with zero rows gives loss 0 and zero gradients (the
Triton path's chunk loop once had a zero range() step). Norms, rope and patch_embed refuse
empty dims in their specs, in both frameworks alike.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
import torch

from kernels import jax_ops, torch_ops
from kernels.activations import triton_activations
from kernels.cross_entropy import triton_cross_entropy

EMPTY = [(0,), (4, 0), (0, 3, 5)]


@pytest.mark.parametrize("shape", EMPTY, ids=str)
@pytest.mark.parametrize("gated", [False, True], ids=["gelu", "gated"])
@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_torch_gelu_empty(impl, gated, shape):
    xs = [torch.zeros(shape, requires_grad=True) for _ in range(1 + gated)]
    triton_activations.LAUNCHES.clear()
    y = torch_ops.gated_gelu(*xs, impl=impl) if gated else torch_ops.gelu(xs[0], impl=impl)
    assert y.shape == shape and y.dtype == torch.float32
    y.sum().backward()
    assert all(x.grad.shape == shape for x in xs)
    assert not triton_activations.LAUNCHES


@pytest.mark.parametrize("shape", EMPTY, ids=str)
@pytest.mark.parametrize("gated", [False, True], ids=["gelu", "gated"])
@pytest.mark.parametrize("impl", jax_ops.ACTIVATION_IMPLS)
def test_jax_gelu_empty(impl, gated, shape):
    xs = [jnp.zeros(shape, jnp.float16) for _ in range(1 + gated)]
    fn = (lambda *a: jax_ops.gated_gelu(*a, impl=impl)) if gated else (lambda a: jax_ops.gelu(a, impl=impl))
    y = fn(*xs)
    assert y.shape == shape and y.dtype == jnp.float16
    grads = jax.grad(lambda *a: fn(*a).astype(jnp.float32).sum(), argnums=tuple(range(len(xs))))(*xs)
    assert all(g.shape == shape and g.dtype == jnp.float16 for g in grads)


@pytest.mark.parametrize("lead", [(0,), (2, 0)], ids=str)
@pytest.mark.parametrize("check_targets", [True, False])
def test_torch_cross_entropy_zero_rows(lead, check_targets):
    """Triton == reference: loss 0, dx empty, dweight zeros; nothing launched."""
    w0 = torch.randn(11, 8)
    out = {}
    for impl in ("triton", "reference"):
        x = torch.randn(*lead, 8, requires_grad=True)
        w = w0.clone().requires_grad_()
        triton_cross_entropy.LAUNCHES.clear()
        loss = torch_ops.linear_cross_entropy(x, w, torch.zeros(lead, dtype=torch.long), impl=impl,
                                              check_targets=check_targets)
        (2.0 * loss).backward()
        assert not triton_cross_entropy.LAUNCHES
        assert loss.shape == () and loss.dtype == torch.float32
        assert x.grad.shape == x.shape and w.grad.shape == w.shape and w.grad.dtype == w.dtype
        out[impl] = (loss.detach(), w.grad)
    for got, ref in zip(out["triton"], out["reference"]):
        assert torch.equal(got, ref) and not got.any()


@pytest.mark.parametrize("impl", jax_ops.LOSS_IMPLS)
def test_jax_cross_entropy_zero_rows(impl):
    x, w, t = jnp.zeros((2, 0, 8)), jnp.ones((11, 8)), jnp.zeros((2, 0), jnp.int32)
    loss, (dx, dw) = jax.value_and_grad(
        lambda a, b: jax_ops.linear_cross_entropy(a, b, t, impl=impl), argnums=(0, 1))(x, w)
    assert float(loss) == 0.0 and dx.shape == x.shape and dw.shape == w.shape and not dw.any()


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_empty_norm_rope_patch_refused(framework):
    ops, zeros = (torch_ops, lambda s, dt=None: torch.zeros(s, dtype=dt or torch.float32)) if framework == "torch" \
        else (jax_ops, lambda s, dt=None: jnp.zeros(s, dt or jnp.float32))
    ints = torch.long if framework == "torch" else jnp.int32
    impl = dict(impl="reference")
    with pytest.raises(ValueError, match="x must have >= 1 dims, all >= 1"):
        ops.rms_norm(zeros((0, 8)), zeros((8,)), **impl)
    with pytest.raises(ValueError, match="x must have >= 1 dims, all >= 1"):
        ops.layer_norm(zeros((0, 8)), zeros((8,)), zeros((8,)), **impl)
    with pytest.raises(ValueError, match="x must be 4-D .* with dims >= 1"):
        ops.rope(zeros((1, 0, 2, 8)), zeros((1, 0), ints), **impl)
    with pytest.raises(ValueError, match="images dimensions must all be >= 1"):
        ops.patch_embed(zeros((0, 14, 14, 3)), zeros((588, 8)), zeros((8,)), zeros((1, 8)), patch=14, **impl)
