"""gelu / gated_gelu (kernels/activations) vs a float64 reference, forward and backward.

Triton in the interpreter (fp32, fp16, bf16), Pallas in interpret mode (fp32, bf16); bound
from conftest.assert_close (2x the same-precision framework error + dtype floor).
Odd sizes: 7 x 301 elements (not a block multiple), values up to |x| ~ 10 (tanh saturation).
NaN / inf: elementwise in both kernels (the policy in spec.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops, torch_ops
from kernels.activations import reference, reference_jax, triton_activations
from kernels.activations.pallas_activations import PallasActivationBlocks, gelu_pallas
from kernels.activations.triton_activations import ActivationBlocks

from conftest import assert_close, rounded

SHAPE = (7, 301)


def _data(rng, dtype, gated, shape=SHAPE):
    xs = [rounded(rng.standard_normal(shape) * 3, dtype)] + ([rounded(rng.standard_normal(shape), dtype)] if gated else [])
    return xs, rng.standard_normal(shape)


def _torch_run(fn, xs, dy, dtype, device="cpu"):
    ts = [torch.tensor(x).to(device, dtype).requires_grad_() for x in xs]
    y = fn(*ts) if len(ts) == 2 else fn(ts[0], None)
    y.backward(torch.tensor(dy).to(device, y.dtype))
    return [y.detach()] + [t.grad for t in ts]


@pytest.mark.parametrize("gated", [True, False], ids=["geglu", "gelu"])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_triton_matches_float64(rng, dtype, approximate, gated):
    xs, dy = _data(rng, dtype, gated)
    blocks = ActivationBlocks(block=512)  # several programs, a partial last block
    triton_activations.LAUNCHES.clear()
    got = _torch_run(lambda x, u: triton_activations.gelu_triton(x, u, approximate=approximate, blocks=blocks),
                     xs, dy, dtype)
    assert triton_activations.LAUNCHES == {"_gelu_fwd_kernel": 1, "_gelu_bwd_kernel": 1}
    ref = _torch_run(lambda x, u: reference._gelu(x, u, approximate=approximate), xs, dy, torch.float64)
    base = _torch_run(lambda x, u: reference._gelu(x, u, approximate=approximate, upcast=False), xs, dy, dtype)
    for name, g, r, b in zip(["y", "dgate", "dup"], got, ref, base):
        assert g.dtype == dtype
        assert_close(g, r, b, dtype, name)


@pytest.mark.parametrize("dtype,approximate", [(jnp.float32, "none"), (jnp.bfloat16, "tanh")], ids=["fp32-erf", "bf16-tanh"])
def test_pallas_gated_matches_float64(rng, dtype, approximate):
    tdt = torch.float32 if dtype == jnp.float32 else torch.bfloat16
    xs, dy = _data(rng, tdt, True)
    blocks = PallasActivationBlocks(block=512)
    g, u = (jnp.asarray(x).astype(dtype) for x in xs)

    def run(fn):
        y, vjp = jax.vjp(fn, g, u)
        return [y, *vjp(jnp.asarray(dy).astype(dtype))]

    got = run(lambda a, b: gelu_pallas(a, b, approximate=approximate, blocks=blocks))
    base = run(lambda a, b: reference_jax._gelu(a, b, approximate=approximate, upcast=False))
    ref = _torch_run(lambda x, u: reference._gelu(x, u, approximate=approximate), xs, dy, torch.float64)
    for name, a, r, b in zip(["y", "dgate", "dup"], got, ref, base):
        assert a.dtype == dtype
        assert_close(np.asarray(a.astype(jnp.float32)), r, np.asarray(b.astype(jnp.float32)), tdt, name)


@pytest.mark.parametrize("dtype,approximate", [(jnp.float32, "tanh"), (jnp.bfloat16, "none")],
                         ids=["fp32-tanh", "bf16-erf"])
def test_pallas_plain_matches_float64(rng, dtype, approximate):
    """Plain (non-gated) GELU, forward and backward."""
    tdt = torch.float32 if dtype == jnp.float32 else torch.bfloat16
    xs, dy = _data(rng, tdt, False)
    blocks = PallasActivationBlocks(block=512)
    x = jnp.asarray(xs[0]).astype(dtype)

    def run(fn):
        y, vjp = jax.vjp(fn, x)
        return [y, *vjp(jnp.asarray(dy).astype(dtype))]

    got = run(lambda a: gelu_pallas(a, None, approximate=approximate, blocks=blocks))
    base = run(lambda a: reference_jax._gelu(a, None, approximate=approximate, upcast=False))
    ref = _torch_run(lambda x, u: reference._gelu(x, u, approximate=approximate), xs, dy, torch.float64)
    assert len(got) == len(ref) == 2
    for name, a, r, b in zip(["y", "dx"], got, ref, base):
        assert a.dtype == dtype
        assert_close(np.asarray(a.astype(jnp.float32)), r, np.asarray(b.astype(jnp.float32)), tdt, name)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_nan_inf_propagate_elementwise(rng, approximate):
    """spec.py: gelu(NaN) = NaN, gelu(+inf) = +inf, gelu(-inf) = NaN (x * 0), their gradients
    NaN; every other element equals the all-finite run, in both kernels, gelu and gated_gelu."""
    x = rng.standard_normal((3, 301)).astype(np.float32) * 3
    up = rng.standard_normal(x.shape).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    bad = x.copy()
    at = [(0, 5), (1, 300), (2, 17)]
    for (i, j), v in zip(at, (np.nan, np.inf, -np.inf)):
        bad[i, j] = v
    hit = np.zeros(x.shape, bool)
    hit[tuple(zip(*at))] = True
    y_want = np.array([np.nan, np.inf, np.nan])

    def triton(a, u):
        ts = [torch.tensor(v, requires_grad=True) for v in ((a,) if u is None else (a, u))]
        y = triton_activations.gelu_triton(*ts, approximate=approximate, blocks=ActivationBlocks(block=128))
        y.backward(torch.tensor(dy))
        return [y.detach().numpy()] + [t.grad.numpy() for t in ts]

    def pallas(a, u):
        args = [jnp.asarray(v) for v in ((a,) if u is None else (a, u))]
        y, vjp = jax.vjp(lambda *v: gelu_pallas(*v, approximate=approximate,
                                                blocks=PallasActivationBlocks(block=128)), *args)
        return [np.asarray(y)] + [np.asarray(g) for g in vjp(jnp.asarray(dy))]

    for name, run in (("triton", triton), ("pallas", pallas)):
        for u in (None, up):
            ok, got = run(x, u), run(bad, u)
            if u is None:  # the values themselves (gated: times up)
                np.testing.assert_array_equal(got[0][hit], y_want, err_msg=f"{name} gelu at NaN, +inf, -inf")
            for what, g, want in zip(["y", "dgate", "dup"], got, ok):
                assert not np.isfinite(g[hit]).any(), f"{name} {what}: a non-finite input came out finite"
                np.testing.assert_array_equal(g[~hit], want[~hit], err_msg=f"{name} {what} elsewhere")


def test_public_api_matches_torch_gelu(rng):
    x = torch.tensor(rng.standard_normal((3, 5)), dtype=torch.float32)
    for ap in ("tanh", "none"):
        want = torch.nn.functional.gelu(x, approximate=ap)
        assert torch.allclose(torch_ops.gelu(x, approximate=ap), want, atol=1e-6)
        assert torch.allclose(torch_ops.gated_gelu(x, x, approximate=ap, impl="reference"), want * x, atol=1e-6)
        np.testing.assert_allclose(np.asarray(jax_ops.gelu(jnp.asarray(x.numpy()), approximate=ap, impl="xla")),
                                   want.numpy(), atol=1e-6)


def test_bad_inputs():
    x = torch.zeros(4, 8)
    triton_activations.LAUNCHES.clear()
    with pytest.raises(ValueError, match=r"up must have gate's shape \(4, 8\), got \(4, 7\)"):
        torch_ops.gated_gelu(x, x[:, :7])
    with pytest.raises(TypeError, match=r"up dtype must equal gate dtype torch.float32, got torch.float16"):
        torch_ops.gated_gelu(x, x.half())
    with pytest.raises(ValueError, match=r"approximate must be one of \['tanh', 'none'\], got 'erf'"):
        torch_ops.gelu(x, approximate="erf")
    with pytest.raises(TypeError, match=r"x dtype must be one of .*got torch.int64"):
        torch_ops.gelu(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"impl must be one of .*got 'triton'"):
        jax_ops.gelu(jnp.zeros(3), impl="triton")
    with pytest.raises(ValueError, match=r"block=100 must be a power of two >= 128"):
        ActivationBlocks(block=100)
    assert not triton_activations.LAUNCHES


@pytest.mark.parametrize("gated", [True, False], ids=["geglu", "gelu"])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_pallas_lowers_to_triton_for_cuda(approximate, gated):
    """The compiled kernels, forward and backward, lower to Triton for CUDA (export, no GPU).
    The exact form once did not: Pallas's Triton lowering has no erf (H200, jax 0.11.2)."""
    import re

    from jax import export

    from kernels.activations.pallas_activations import default_blocks

    def loss(x, up):
        y = gelu_pallas(x, up if gated else None, approximate=approximate, interpret=False,
                        blocks=default_blocks(interpret=False))
        return y.astype(jnp.float32).sum()

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1) if gated else 0))
    call = "__gpu$xla.gpu.triton"
    x = jax.ShapeDtypeStruct((7, 301), jnp.bfloat16)
    exported = export.export(f, platforms=("cuda",), disabled_checks=[export.DisabledSafetyCheck.custom_call(call)])(x, x)
    assert re.findall(r"custom_call @(\S+)\(", exported.mlir_module()).count(call) == 2  # forward, backward


def test_pallas_normal_cdf_tails():
    """The Pallas kernels' fp32 Phi(x) (erf-free: exp and polynomials) against float64 erfc,
    relative, over [-12, 12] (both tails: erfc's form on the left, no cancellation)."""
    import math

    from kernels.activations.pallas_activations import _normal_cdf

    x = np.concatenate([np.linspace(-12.0, 12.0, 24001), np.linspace(-1.2, 1.2, 2401)]).astype(np.float32)
    got = np.asarray(jax.jit(_normal_cdf)(jnp.asarray(x)), np.float64)
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x.astype(np.float64)])
    assert np.all(np.abs(got - want) <= 2e-5 * want), np.max(np.abs(got - want) / want)
