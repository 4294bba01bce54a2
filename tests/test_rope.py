"""rope / rope_2d (kernels/rope) vs a float64 reference, forward and backward.

Triton in the interpreter (fp32, fp16, bf16), Pallas in interpret mode (fp32, bf16); bound
from conftest.assert_close. Positions are random in [0, 5000) (not 0..seq-1), so angle
range reduction is exercised; head_dims 64 and 72 (half 36: masked pairs); 2 x 9 x 3 rows.
Also: positions up to 2e5 at theta 1e6 and 500, positions past int32 refused, NaN / inf
confined to their rotation pair (the policy in spec.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops, torch_ops
from kernels.rope import reference, reference_jax, triton_rope
from kernels.rope.pallas_rope import PallasRopeBlocks, rope_pallas
from kernels.rope.triton_rope import RopeBlocks

from conftest import assert_close, rounded


def _data(rng, dtype, sections, head_dim, shape=(2, 9, 3)):
    x = rounded(rng.standard_normal((*shape, head_dim)), dtype)
    pos = rng.integers(0, 5000, shape[:2] if sections == 1 else (*shape[:2], 2))
    return x, pos, rng.standard_normal(x.shape)


def _torch_run(fn, x, pos, dy, dtype, device="cpu"):
    t = torch.tensor(x).to(device, dtype).requires_grad_()
    y = fn(t, torch.tensor(pos, device=device))
    y.backward(torch.tensor(dy).to(device, y.dtype))
    return y.detach(), t.grad


@pytest.mark.parametrize("sections,head_dim", [(1, 64), (1, 72), (2, 72)], ids=["1d-d64", "1d-d72", "2d-d72"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_triton_matches_float64(rng, dtype, sections, head_dim):
    x, pos, dy = _data(rng, dtype, sections, head_dim)
    kw = dict(theta=10000.0, sections=sections)
    triton_rope.LAUNCHES.clear()
    got = _torch_run(lambda t, p: triton_rope.rope_triton(t, p, **kw, blocks=RopeBlocks(block_r=8)), x, pos, dy, dtype)
    assert triton_rope.LAUNCHES == {"_rope_kernel": 2}
    ref = _torch_run(lambda t, p: reference._rope(t, p, **kw), x, pos, dy, torch.float64)
    base = _torch_run(lambda t, p: reference._rope(t, p, **kw, upcast=False), x, pos, dy, dtype)
    for name, g, r, b in zip(["y", "dx"], got, ref, base):
        assert g.dtype == dtype
        assert_close(g, r, b, dtype, name)


@pytest.mark.parametrize("dtype,sections", [(jnp.float32, 2), (jnp.bfloat16, 1)], ids=["fp32-2d", "bf16-1d"])
def test_pallas_matches_float64(rng, dtype, sections):
    tdt = torch.float32 if dtype == jnp.float32 else torch.bfloat16
    x, pos, dy = _data(rng, tdt, sections, 72)
    kw = dict(theta=10000.0, sections=sections)
    xj, pj = jnp.asarray(x).astype(dtype), jnp.asarray(pos)

    def run(fn):
        y, vjp = jax.vjp(lambda a: fn(a, pj), xj)
        return [y, *vjp(jnp.asarray(dy).astype(dtype))]

    got = run(lambda a, p: rope_pallas(a, p, **kw, blocks=PallasRopeBlocks(block_r=8)))
    base = run(lambda a, p: reference_jax._rope(a, p, **kw, upcast=False))
    ref = _torch_run(lambda t, p: reference._rope(t, p, **kw), x, pos, dy, torch.float64)
    for name, a, r, b in zip(["y", "dx"], got, ref, base):
        assert a.dtype == dtype
        assert_close(np.asarray(a.astype(jnp.float32)), r, np.asarray(b.astype(jnp.float32)), tdt, name)


def test_rotate_half_convention():
    """Pair (i, i + D/2) rotates by pos * theta^(-i / (D/2)): position 1, D = 4, theta = 100."""
    x = torch.tensor([[[[1.0, 0.0, 0.0, 1.0]]]])
    y = torch_ops.rope(x, torch.tensor([[1]]), theta=100.0)
    a0, a1 = 1.0, 100.0 ** -0.5
    want = torch.tensor([np.cos(a0), -np.sin(a1), np.sin(a0), np.cos(a1)], dtype=torch.float32)
    assert torch.allclose(y.flatten(), want, atol=1e-6)
    yj = jax_ops.rope(jnp.asarray(x.numpy()), jnp.asarray([[1]]), theta=100.0, impl="xla")
    np.testing.assert_allclose(np.asarray(yj).flatten(), want.numpy(), atol=1e-6)


def test_bad_inputs():
    x = torch.zeros(2, 3, 4, 8)
    triton_rope.LAUNCHES.clear()
    with pytest.raises(ValueError, match=r"x must be 4-D \[batch, seq, heads, head_dim\].*got shape \(3, 4, 8\)"):
        torch_ops.rope(x[0], torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"head_dim must be even, got 7"):
        torch_ops.rope(x[..., :7], torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"head_dim must be a multiple of 4 for rope_2d, got 6"):
        torch_ops.rope_2d(x[..., :6], torch.zeros(2, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"positions must have shape \(2, 3\).*got \(2, 4\)"):
        torch_ops.rope(x, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"positions must be an integer array, got torch.float32"):
        torch_ops.rope(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"positions_hw must have shape \(2, 3, 2\)"):
        torch_ops.rope_2d(x, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"theta must be > 0, got -1.0"):
        jax_ops.rope(jnp.zeros((2, 3, 4, 8)), jnp.zeros((2, 3), jnp.int32), theta=-1.0)
    assert not triton_rope.LAUNCHES


# ---- long contexts: other thetas, positions up to 2e5 --------------------------------------------

@pytest.mark.parametrize("theta", [1e6, 500.0], ids=["theta1e6", "theta500"])
@pytest.mark.parametrize("framework,dtype", [("triton", torch.float32), ("triton", torch.float16),
                                             ("pallas", torch.float32)],
                         ids=["triton-fp32", "triton-fp16", "pallas-fp32"])
def test_large_positions_and_thetas_match_float64(rng, framework, dtype, theta):
    """Positions in [0, 2e5] (angles up to 2e5 rad: the range reduction's regime), head_dim 72."""
    x = rounded(rng.standard_normal((2, 7, 3, 72)), dtype)
    pos = rng.integers(0, 200_001, (2, 7))
    pos[0, 0], pos[1, -1] = 200_000, 0
    dy = rng.standard_normal(x.shape)
    kw = dict(theta=theta, sections=1)
    ref = _torch_run(lambda t, p: reference._rope(t, p, **kw), x, pos, dy, torch.float64)
    base = _torch_run(lambda t, p: reference._rope(t, p, **kw, upcast=False), x, pos, dy, dtype)
    if framework == "triton":
        got = _torch_run(lambda t, p: triton_rope.rope_triton(t, p, **kw, blocks=RopeBlocks(block_r=8)),
                         x, pos, dy, dtype)
    else:
        xj, pj = jnp.asarray(x, jnp.float32), jnp.asarray(pos, jnp.int32)
        y, vjp = jax.vjp(lambda a: rope_pallas(a, pj, **kw, blocks=PallasRopeBlocks(block_r=8)), xj)
        got = [np.asarray(y), np.asarray(vjp(jnp.asarray(dy, jnp.float32))[0])]
    for name, g, r, b in zip(["y", "dx"], got, ref, base):
        assert_close(g, r, b, dtype, name)


# ---- position range and non-finite values ----------------------------------------------------------

@pytest.mark.parametrize("bad", [2 ** 31, -(2 ** 31), 2 ** 40])
def test_positions_past_int32_refused_naming_positions(bad):
    x = torch.zeros(1, 3, 2, 8)
    pos = torch.tensor([[0, bad, 5]])
    triton_rope.LAUNCHES.clear()
    with pytest.raises(ValueError, match=r"positions must satisfy \|positions\| < 2\^31 .*got values in"):
        torch_ops.rope(x, pos, impl="triton")
    with pytest.raises(ValueError, match=r"positions_hw must satisfy \|positions_hw\| < 2\^31"):
        torch_ops.rope_2d(x, torch.stack([pos, pos], -1), impl="triton")
    assert not triton_rope.LAUNCHES
    with pytest.raises(ValueError, match=r"positions must satisfy \|positions\| < 2\^31"):
        jax_ops.rope(jnp.zeros((1, 3, 2, 8)), pos.numpy(), impl="pallas")  # numpy int64: on the host
    # the largest int32 positions are accepted (and the references take int64 beyond them)
    ok = torch.tensor([[0, 2 ** 31 - 1, -(2 ** 31) + 1]])
    assert torch.isfinite(torch_ops.rope(torch.ones(1, 3, 2, 8), ok, impl="triton")).all()
    assert torch.isfinite(torch_ops.rope(torch.ones(1, 3, 2, 8), pos, impl="reference")).all()


def test_nan_inf_confined_to_their_rotation_pair(rng):
    """spec.py: NaN / inf in x stays in its pair (i, i + half) of its (token, head) row, forward
    and backward, in both kernels; every other element equals the all-finite run."""
    x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
    pos = rng.integers(0, 1000, (2, 5))
    bad = x.copy()
    bad[0, 1, 2, 1], bad[1, 4, 0, 6] = np.nan, np.inf  # pairs (1, 5) and (2, 6)
    hit = np.zeros(x.shape, bool)
    hit[0, 1, 2, [1, 5]] = hit[1, 4, 0, [2, 6]] = True
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dy_bad = dy.copy()
    dy_bad[0, 1, 2, 1], dy_bad[1, 4, 0, 6] = np.nan, -np.inf

    def triton(a, g):
        t = torch.tensor(a, requires_grad=True)
        y = triton_rope.rope_triton(t, torch.tensor(pos), theta=1e4, blocks=RopeBlocks(block_r=4))
        y.backward(torch.tensor(g))
        return y.detach().numpy(), t.grad.numpy()

    def pallas(a, g):
        y, vjp = jax.vjp(lambda v: rope_pallas(v, jnp.asarray(pos), theta=1e4,
                                               blocks=PallasRopeBlocks(block_r=4)), jnp.asarray(a))
        return np.asarray(y), np.asarray(vjp(jnp.asarray(g))[0])

    for name, run in (("triton", triton), ("pallas", pallas)):
        y_ok, _ = run(x, dy)
        y, _ = run(bad, dy)
        _, dx_ok = run(x, dy)
        _, dx = run(x, dy_bad)
        for what, got, want in (("y", y, y_ok), ("dx", dx, dx_ok)):
            assert not np.isfinite(got[hit]).any(), f"{name} {what}: the non-finite pair came out finite"
            np.testing.assert_array_equal(got[~hit], want[~hit], err_msg=f"{name} {what} outside the pair")
