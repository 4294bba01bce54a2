"""Property-based: random shapes and flag combinations, Triton and Pallas against the
float64 reference, forward and backward (fp32, small hypothesis budget)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_close, torch_attention_vjp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import jax_ops, torch_ops
from kernels.attention.reference import _attention as ref_torch


@st.composite
def problems(draw):
    kvh = draw(st.sampled_from([1, 2]))
    h = kvh * draw(st.sampled_from([1, 2, 3]))
    sq = draw(st.integers(1, 40))
    skv = draw(st.integers(1, 40))
    flags = dict(
        causal=draw(st.booleans()),
        window=draw(st.one_of(st.none(), st.integers(1, 12))),
        softcap=draw(st.one_of(st.none(), st.sampled_from([2.0, 20.0]))),
    )
    seg = None
    if draw(st.booleans()):
        seg = (np.sort(draw(st.lists(st.integers(0, 2), min_size=sq, max_size=sq)))[None],
               np.sort(draw(st.lists(st.integers(0, 2), min_size=skv, max_size=skv)))[None])
    d = draw(st.sampled_from([16, 24, 64]))
    seed = draw(st.integers(0, 2**31 - 1))
    return (1, sq, skv, h, kvh, d), flags, seg, seed


def _check(shape, flags, seg, seed, run_kernel):
    rng = np.random.default_rng(seed)
    q, k, v, do = (rng.standard_normal(s) for s in (shape[:2] + shape[3:4] + shape[5:],
                                                    (shape[0], shape[2], shape[4], shape[5]),
                                                    (shape[0], shape[2], shape[4], shape[5]),
                                                    shape[:2] + shape[3:4] + shape[5:]))
    ids = None if seg is None else tuple(torch.tensor(x) for x in seg)
    ref = lambda a, b, c: ref_torch(a, b, c, scale=shape[-1] ** -0.5, q_segment_ids=None if ids is None else ids[0],  # noqa: E731
                                    kv_segment_ids=None if ids is None else ids[1], **flags)
    truth = torch_attention_vjp(ref, q, k, v, do, torch.float64)
    base = torch_attention_vjp(ref, q, k, v, do, torch.float32)
    got = run_kernel(q, k, v, do)
    for name, g, t, b in zip(("out", "dq", "dk", "dv"), got, truth, base):
        assert_close(g, t, b, torch.float32, name)


SETTINGS = settings(max_examples=8, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems())
def test_triton_matches_reference(p):
    shape, flags, seg, seed = p
    ids = None if seg is None else tuple(torch.tensor(x) for x in seg)
    _check(shape, flags, seg, seed, lambda q, k, v, do: torch_attention_vjp(
        torch_ops.attention, q, k, v, do, torch.float32, impl="triton", segment_ids=ids, **flags))


@SETTINGS
@given(problems())
def test_pallas_matches_reference(p):
    shape, flags, seg, seed = p
    ids = None if seg is None else tuple(jnp.asarray(x) for x in seg)

    def run(q, k, v, do):
        f = lambda a, b, c: jax_ops.attention(a, b, c, impl="pallas", segment_ids=ids, **flags)  # noqa: E731
        o, vjp = jax.vjp(f, *(jnp.asarray(x, jnp.float32) for x in (q, k, v)))
        return (o, *vjp(jnp.asarray(do, jnp.float32)))

    _check(shape, flags, seg, seed, run)


def test_interpret_mode_is_automatic_without_gpu():
    from kernels import _platform

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: kernels compile instead of interpreting")
    assert _platform.triton_interpreting()
    assert _platform.pallas_interpret_default()
