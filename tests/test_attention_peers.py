"""The plain references and the framework peers (SDPA, jax.nn) against float64.

These pin down the semantics every kernel is tested against (bottom-right causal,
windows, softcap, segments, empty rows) in both frameworks. Ground truth: the brute-force
float64 oracle of tests/attention_oracle.py (not the reference under test); baseline for
the error bound: the independent naive attention of the same file in the same dtype
(``naive_torch`` / ``naive_jax``), never the impl under test."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from attention_cases import jax_vjp
from attention_oracle import naive_jax, naive_torch, oracle_attention
from conftest import assert_close, attention_inputs, rounded, torch_attention_vjp

from kernels import jax_ops, torch_ops

CASES = [  # id, (b, sq, skv, h, kvh, d), flags
    ("mqa-17x17-causal", (2, 17, 17, 4, 1, 64), dict(causal=True)),
    ("gqa-5x33-causal", (1, 5, 33, 4, 2, 80), dict(causal=True)),
    ("mha-1x100-window", (1, 1, 100, 2, 2, 64), dict(window=7)),
    ("gqa-33x20", (1, 33, 20, 4, 2, 64), dict()),
    ("mqa-29-window-causal", (1, 29, 29, 2, 1, 128), dict(causal=True, window=5)),
    ("mqa-24-segments", (2, 24, 24, 2, 1, 64), dict(segments=True)),
    ("mqa-24-softcap", (1, 24, 24, 2, 1, 64), dict(softcap=5.0)),
]


def _segments(rng, b, sq, skv):
    kv = np.sort(rng.integers(0, 3, size=(b, skv)), axis=1)
    q = kv[:, skv - sq:] if sq <= skv else np.sort(rng.integers(0, 3, size=(b, sq)), axis=1)
    return q, kv


def _flags(rng, shape, flags):
    flags = dict(flags)
    if flags.pop("segments", False):
        b, sq, skv = shape[:3]
        flags["segment_ids"] = _segments(rng, b, sq, skv)
    return flags


def _ground_truth(q, k, v, do, dtype, flags):
    """(o, dq, dk, dv) of the float64 oracle on the dtype-rounded inputs."""
    r = [rounded(x, dtype) for x in (q, k, v)]
    return oracle_attention(*r, do, **flags)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_torch_peers_match_float64(case, impl, dtype, rng):
    _, shape, flags = case
    if impl == "sdpa" and "softcap" in flags:
        pytest.skip("sdpa has no softcap (refusal tested in test_attention_inputs)")
    flags = _flags(rng, shape, flags)
    q, k, v, do = attention_inputs(rng, *shape)
    truth = _ground_truth(q, k, v, do, dtype, flags)
    kw = dict(flags)
    if "segment_ids" in kw:
        kw["segment_ids"] = tuple(torch.tensor(x) for x in kw["segment_ids"])
    got = torch_attention_vjp(torch_ops.attention, q, k, v, do, dtype, impl=impl, **kw)
    base = torch_attention_vjp(naive_torch, q, k, v, do, dtype, **kw)
    for name, g, t, bl in zip(("out", "dq", "dk", "dv"), got, truth, base):
        assert_close(g, t, bl, dtype, f"{impl} {name}")


JAX_TO_TORCH = {jnp.float32: torch.float32, jnp.float16: torch.float16, jnp.bfloat16: torch.bfloat16}


# fp16 on the first three cases only (each JAX case costs ~2 s of eager vjp; the torch test
# runs fp16 on all of them, and the JAX fp16 path differs from bf16 only in the dtype)
JAX_GRID = [(c, d) for i, c in enumerate(CASES) for d in (jnp.float32, jnp.float16, jnp.bfloat16)
            if d != jnp.float16 or i < 3]


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("case,dtype", JAX_GRID, ids=[f"{c[0]}-{jnp.dtype(d).name}" for c, d in JAX_GRID])
def test_jax_peers_match_float64(case, impl, dtype, rng):
    _, shape, flags = case
    if impl == "xla" and "softcap" in flags:
        pytest.skip("jax.nn.dot_product_attention has no softcap (refusal tested in test_attention_inputs)")
    flags = _flags(rng, shape, flags)
    q, k, v, do = attention_inputs(rng, *shape)
    tdt = JAX_TO_TORCH[dtype]
    truth = _ground_truth(q, k, v, do, tdt, flags)
    kw = dict(flags)
    if "segment_ids" in kw:
        kw["segment_ids"] = tuple(jnp.asarray(x) for x in kw["segment_ids"])

    def run(fn, jit=True):
        return jax_vjp(fn, *(jnp.asarray(x, dtype) for x in (q, k, v, do)), jit=jit)

    # XLA:CPU has no fp16 dot with an f32 accumulator under jit, which jax.nn asks for
    # ("precision 'F16_F16_F32' is not supported"); eager dispatch takes another path.
    got = run(lambda a, b_, c: jax_ops.attention(a, b_, c, impl=impl, **kw),
              jit=not (impl == "xla" and dtype == jnp.float16))
    base = run(lambda a, b_, c: naive_jax(a, b_, c, **kw))
    for name, g, t, bl in zip(("out", "dq", "dk", "dv"), got, truth, base):
        assert_close(np.asarray(g, np.float64), t, np.asarray(bl, np.float64), tdt, f"{impl} {name}")


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_rows_that_see_no_key_return_zero(framework):
    """Segment 1 of the queries has no keys: those rows are zeros, never NaN."""
    q = np.ones((1, 4, 2, 8))
    k = np.ones((1, 4, 1, 8))
    ids = (np.array([[0, 0, 1, 1]]), np.array([[0, 0, 0, 0]]))
    if framework == "torch":
        outs = [torch_ops.attention(*(torch.tensor(x) .float() for x in (q, k, k)), impl=i,
                                    segment_ids=tuple(torch.tensor(x) for x in ids)).numpy()
                for i in ("reference", "sdpa")]
    else:
        outs = [np.asarray(jax_ops.attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, k)), impl=i,
                                             segment_ids=tuple(jnp.asarray(x) for x in ids)))
                for i in ("reference", "xla")]
    for o in outs:
        assert np.all(np.isfinite(o))
        np.testing.assert_array_equal(o[0, 2:], 0.0)
        np.testing.assert_allclose(o[0, :2], 1.0, rtol=1e-6)
