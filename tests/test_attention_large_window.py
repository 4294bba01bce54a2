"""Very large windows (2**31 - 1 and 10**12) through every attention and decode impl.

A window at least as long as the sequence masks nothing beyond the causal bound, so the
result must equal plain causal attention (decode: no window) bit for bit, forward and
backward. Before the spec clamped the window (to q_len + kv_len; decode: max_len) the JAX
impls broke on such windows: the Pallas dK/dV key range overflowed int32 (wrong dk/dv,
silently) and window >= 2**31 raised a bare OverflowError inside jit.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from attention_cases import jax_vjp

from kernels import jax_ops, torch_ops
from kernels.attention.spec import check_attention_args
from kernels.decode.spec import check_decode_args

HUGE = (2**31 - 1, 10**12)
SHAPES = [(1, 5, 9, 2, 1, 64), (1, 9, 5, 4, 2, 64)]  # (b, sq, skv, h, kvh, d): q_len < and > kv_len


def _inputs(shape, seed=0):
    b, sq, skv, h, kvh, d = shape
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in ((b, sq, h, d), (b, skv, kvh, d), (b, skv, kvh, d), (b, sq, h, d))]


def test_spec_clamps_the_window():
    q, k = np.zeros((1, 5, 2, 8), np.float32), np.zeros((1, 9, 1, 8), np.float32)
    dt = (np.dtype(np.float32),)
    check = lambda w: check_attention_args(q, k, k, causal=False, window=w, softcap=None, scale=None,  # noqa: E731
                                           segment_ids=None, dtypes=dt)[0].window
    assert [check(w) for w in (1, 13, 14, 15, 2**31 - 1, 10**12)] == [1, 13, 14, 14, 14, 14]
    dq, cache, lens = np.zeros((2, 2, 8), np.float32), np.zeros((2, 32, 1, 8), np.float32), np.array([3, 32])
    check = lambda w: check_decode_args(dq, cache, cache, lens, window=w, softcap=None, scale=None,  # noqa: E731
                                        dtypes=dt).window
    assert [check(w) for w in (1, 31, 32, 33, np.int64(2**40), 10**12)] == [1, 31, 32, 32, 32, 32]


def _torch_run(impl, xs, **kw):
    ts = [torch.tensor(x, dtype=torch.float32, requires_grad=True) for x in xs[:3]]
    o = torch_ops.attention(*ts, impl=impl, **kw)
    o.backward(torch.tensor(xs[3], dtype=torch.float32))
    return [o.detach().numpy(), *(t.grad.numpy() for t in ts)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"s{s[1]}x{s[2]}")
@pytest.mark.parametrize("impl", torch_ops.ATTENTION_IMPLS)
def test_torch_huge_window_is_causal(impl, shape):
    if impl != "triton" and shape != SHAPES[0]:
        pytest.skip("one shape for the impls without block index math (the spec's clamp is shared)")
    xs = _inputs(shape)
    want = _torch_run(impl, xs, causal=True)
    for w in HUGE:
        for name, g, t in zip(("out", "dq", "dk", "dv"), _torch_run(impl, xs, causal=True, window=w), want):
            np.testing.assert_array_equal(g, t, err_msg=f"{impl} window={w} {name}")


JAX_IMPLS = [(i, jnp.float16 if i == "pallas_mgpu" else jnp.float32)  # mgpu: 16-bit only
             for i in jax_ops.ATTENTION_IMPLS]


def _jax_run(impl, dtype, xs, **kw):
    got = jax_vjp(lambda a, b_, c: jax_ops.attention(a, b_, c, impl=impl, **kw), *(jnp.asarray(x, dtype) for x in xs))
    return [np.asarray(x, np.float32) for x in got]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"s{s[1]}x{s[2]}")
@pytest.mark.parametrize("impl,dtype", JAX_IMPLS, ids=[i for i, _ in JAX_IMPLS])
def test_jax_huge_window_is_causal(impl, dtype, shape):
    if impl != "pallas" and shape != SHAPES[0]:
        pytest.skip("one shape for the impls other than the Pallas GPU kernel, whose dK/dV range overflowed "
                    "(the spec's clamp is shared; the Mosaic impls are slow in interpret mode)")
    xs = _inputs(shape)
    want = _jax_run(impl, dtype, xs, causal=True)
    for w in HUGE if impl not in ("pallas_mgpu", "pallas_tpu") else HUGE[1:]:  # interpret mode: slow
        for name, g, t in zip(("out", "dq", "dk", "dv"), _jax_run(impl, dtype, xs, causal=True, window=w), want):
            np.testing.assert_array_equal(g, t, err_msg=f"{impl} window={w} {name}")


def _decode_inputs():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((3, 4, 64)), rng.standard_normal((3, 40, 2, 64)), rng.standard_normal((3, 40, 2, 64))
    return q, k, v, np.array([40, 7, 0])


@pytest.mark.parametrize("impl", torch_ops.DECODE_IMPLS)
def test_torch_decode_huge_window_is_no_window(impl):
    q, k, v, lens = _decode_inputs()
    args = [torch.tensor(x, dtype=torch.float32) for x in (q, k, v)] + [torch.tensor(lens)]
    want = torch_ops.decode_attention(*args, impl=impl).numpy()
    for w in HUGE:
        np.testing.assert_array_equal(torch_ops.decode_attention(*args, window=w, impl=impl).numpy(), want,
                                      err_msg=f"{impl} window={w}")


@pytest.mark.parametrize("impl", jax_ops.DECODE_IMPLS)
def test_jax_decode_huge_window_is_no_window(impl):
    q, k, v, lens = _decode_inputs()
    args = [jnp.asarray(x, jnp.float32) for x in (q, k, v)] + [jnp.asarray(lens, jnp.int32)]
    want = np.asarray(jax_ops.decode_attention(*args, impl=impl))
    for w in HUGE:
        np.testing.assert_array_equal(np.asarray(jax_ops.decode_attention(*args, window=w, impl=impl)), want,
                                      err_msg=f"{impl} window={w}")
