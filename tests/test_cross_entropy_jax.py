"""JAX linear_cross_entropy (kernels/cross_entropy/jax_cross_entropy.py) vs a float64 reference.

The "pallas" (row kernel in interpret mode, its gradient written over the logits' buffer) and
"xla" chunked paths in fp32 / fp16 / bf16, loss and gradients under a non-unit cotangent;
truth: the torch float64 reference of the shared spec; baseline: the jnp full-logits
reference in the same dtype (conftest.assert_close). Odd sizes: vocab 301 with 64-column
steps (the last partial), rows 1 and 21, a partial last chunk, rows not a multiple of the
kernel's row block, masked rows holding -100, softcap.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops
from kernels.cross_entropy import reference
from kernels.cross_entropy.jax_cross_entropy import JaxCrossEntropyBlocks, linear_cross_entropy_jax
from kernels.cross_entropy.reference_jax import linear_cross_entropy_reference

from conftest import assert_close

WIDTH, VOCAB = 32, 301
DTYPES = {"fp32": jnp.float32, "fp16": jnp.float16, "bf16": jnp.bfloat16}


def _data(rng, lead):
    x = rng.standard_normal((*lead, WIDTH))
    w = rng.standard_normal((VOCAB, WIDTH)) / (WIDTH / 10) ** 0.5
    t = rng.integers(0, VOCAB, lead)
    m = rng.random(lead) > 0.3
    return x, w, np.where(m, t, -100), m


def _jax_run(fn, x, w, dtype):
    loss, (dx, dw) = jax.value_and_grad(lambda a, b: 1.5 * fn(a, b), argnums=(0, 1))(
        jnp.asarray(x, dtype), jnp.asarray(w, dtype))
    return [np.asarray(a.astype(jnp.float32), np.float64) for a in (loss / 1.5, dx, dw)], (dx.dtype, dw.dtype)


def _truth(x, w, t, m, softcap):
    xx, ww = (torch.tensor(a, requires_grad=True) for a in (x, w))
    loss = reference._linear_cross_entropy(xx, ww, torch.tensor(t), torch.tensor(m), softcap=softcap)
    (1.5 * loss).backward()
    return [a.detach().numpy() for a in (loss, xx.grad, ww.grad)]


# (impl, dtype, lead shape, chunk rows (0: one chunk), softcap)
CASES = [("pallas", dt, (3, 7), 5, 4.0) for dt in DTYPES] + [("xla", dt, (3, 7), 5, 4.0) for dt in ("fp32", "bf16")]
CASES += [("pallas", "fp32", (3, 7), 5, None), ("pallas", "fp32", (1, 1), 0, None), ("pallas", "bf16", (21,), 0, None),
          ("xla", "fp16", (21,), 0, None)]


@pytest.mark.parametrize("impl,dt,lead,chunk,softcap", CASES,
                         ids=[f"{i}-{d}-{'x'.join(map(str, l))}-chunk{c}-{'cap' if s else 'plain'}"
                              for i, d, l, c, s in CASES])
def test_chunked_matches_float64(rng, impl, dt, lead, chunk, softcap):
    x, w, t, m = _data(rng, lead)
    dtype = DTYPES[dt]
    blocks = JaxCrossEntropyBlocks(block_r=4, block_v=64, num_warps=4, chunk_rows=chunk)
    row_w = (m / max(m.sum(), 1)).reshape(-1)
    got, dtypes = _jax_run(lambda a, b: linear_cross_entropy_jax(
        a.reshape(-1, WIDTH), b, jnp.asarray(np.where(m, t, 0).reshape(-1)), jnp.asarray(row_w),
        softcap=softcap, impl=impl, blocks=blocks), x, w, dtype)
    assert dtypes == (dtype, dtype)
    base, _ = _jax_run(lambda a, b: linear_cross_entropy_reference(
        a, b, jnp.asarray(t), jnp.asarray(m), softcap=softcap), x, w, dtype)
    for name, g, r, b in zip(["loss", "dx", "dweight"], got, _truth(x, w, t, m, softcap), base):
        assert_close(g, r, b, jnp.dtype(dtype).name, f"{impl} {name}")


def test_public_api_matches_the_models_loss_without_full_logits(rng):
    """pallas == xla == reference == model.losses on full logits; under jit and grad the chunked
    impls hold no [N, V] array (the largest intermediate is one chunk's logits)."""
    from model.losses import jax_masked_cross_entropy

    x, w, t, m = (jnp.asarray(a) for a in _data(rng, (2, 9)))
    x, w = x.astype(jnp.float32), w.astype(jnp.float32)
    want = jax_masked_cross_entropy(x @ w.T, jnp.maximum(t, 0), m)
    for impl in ("pallas", "xla", "reference"):
        got = jax_ops.linear_cross_entropy(x, w, t, mask=m, impl=impl)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
        got = jax.jit(lambda a: jax_ops.linear_cross_entropy(a, w, jnp.maximum(t, 0), normalizer=7.0, impl=impl))(x)
        full = jax_masked_cross_entropy(x @ w.T, jnp.maximum(t, 0), jnp.ones_like(m), normalizer=7.0)
        np.testing.assert_allclose(float(got), float(full), rtol=1e-5)

    def shapes(impl):  # every array shape of the traced loss-and-grad, sub-jaxprs included
        blocks = JaxCrossEntropyBlocks(block_r=4, block_v=64, chunk_rows=3)
        f = lambda a, b: linear_cross_entropy_jax(a, b, jnp.maximum(t, 0).reshape(-1), jnp.ones(18) / 18,
                                                  impl=impl, blocks=blocks)
        return set(re.findall(r"\[([\d,]+)\]", str(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(
            x.reshape(18, WIDTH), w))))
    for impl in ("pallas", "xla"):
        found = shapes(impl)
        assert f"3,{VOCAB}" in found and f"18,{VOCAB}" not in found, (impl, sorted(found))


@pytest.mark.parametrize("bad,err,match", [
    (dict(weight=np.zeros((VOCAB, WIDTH + 1), np.float32)), ValueError, r"weight must be \[vocab, width=32\]"),
    (dict(targets=np.zeros((2, 9), np.float32)), TypeError, r"targets must be an integer array"),
    (dict(targets=np.full((2, 9), VOCAB)), ValueError, r"targets must lie in \[0, vocab=301\)"),
    (dict(mask=np.ones((2, 9), np.int32)), TypeError, r"mask must be a bool array"),
    (dict(normalizer=0.0), ValueError, r"normalizer"),
    (dict(normalizer=np.ones(3, np.float32)), ValueError, r"normalizer must be a number or a 0-d array, got shape"),
    (dict(impl="triton"), ValueError, r"impl"),
])
def test_bad_input_is_refused(rng, bad, err, match):
    x, w, t, m = _data(rng, (2, 9))
    args = dict(x=jnp.asarray(x, jnp.float32), weight=jnp.asarray(w, jnp.float32), targets=jnp.asarray(t),
                mask=jnp.asarray(m))
    args.update({k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in bad.items()})
    with pytest.raises(err, match=match):
        jax_ops.linear_cross_entropy(**args)


def test_normalizer_array_is_checked_like_a_number(rng):
    """A 0-d array normalizer equals the same Python number; a concrete one must be finite and
    > 0 (as torch's tensors); a traced one (under jit) is not read; torch tensors are refused."""
    x, w, t, m = (jnp.asarray(a) for a in _data(rng, (2, 9)))
    x, w = x.astype(jnp.float32), w.astype(jnp.float32)
    for impl in jax_ops.LOSS_IMPLS:
        loss = lambda n: jax_ops.linear_cross_entropy(x, w, t, mask=m, normalizer=n, impl=impl)  # noqa: E731
        want = float(loss(3.0))
        for n in (jnp.array(3.0), jnp.array(3), np.float32(3.0)):
            np.testing.assert_allclose(float(loss(n)), want, rtol=1e-6)
        np.testing.assert_allclose(float(jax.jit(loss)(jnp.array(3.0))), want, rtol=1e-6)
        for bad, match in ((jnp.array(0.0), "normalizer must be > 0, got 0.0"),
                           (jnp.array(-2.0), "normalizer must be > 0, got -2.0"),
                           (jnp.array(jnp.inf), "normalizer must be finite")):
            with pytest.raises(ValueError, match=match):
                loss(bad)
    with pytest.raises(TypeError, match="normalizer must have an integer or floating dtype"):
        jax_ops.linear_cross_entropy(x, w, t, mask=m, normalizer=jnp.array(True))
    with pytest.raises(TypeError, match="normalizer must be a number or a 0-d array of x's framework"):
        jax_ops.linear_cross_entropy(x, w, t, mask=m, normalizer=torch.tensor(3.0))


@pytest.mark.parametrize("bad", [dict(block_r=3), dict(block_v=0), dict(num_warps=3), dict(chunk_rows=-1),
                                 dict(chunk_bytes=0)], ids=lambda b: next(iter(b)))
def test_blocks_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        JaxCrossEntropyBlocks(**bad)
