"""The attention references (torch and JAX) against an independent brute-force float64 oracle.

Every other attention test takes its ground truth from ``kernels.attention.reference`` (or
compares with ``reference_jax``), so a semantic slip there would move the truth with it. Here
both references run at float64 (JAX under ``jax.enable_x64``) and must match
``tests/attention_oracle.py`` (explicit loops over absolute positions, hand-derived
gradients, nothing from ``kernels.attention``) to ``FLOAT64_RTOL``, forward and backward, on
small odd shapes: q_len < kv_len and q_len > kv_len (leading rows see no key -> zeros),
length 1, MQA/GQA/MHA, windows, softcap, a non-default scale, segment ids in both forms
(unsorted, and a query segment no key has). The independent same-precision baselines used
by tests/test_attention_peers.py are held to the same oracle here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from attention_oracle import naive_jax, naive_torch, oracle_attention
from conftest import attention_inputs

from kernels.attention import reference, reference_jax
from kernels.tolerances import FLOAT64_RTOL

CASES = [  # id, (b, sq, skv, h, kvh, d), flags; segments: "single" or "pair"
    ("mqa-1x1-causal", (1, 1, 1, 3, 1, 8), dict(causal=True)),
    ("gqa-5x11-causal-window3", (2, 5, 11, 4, 2, 8), dict(causal=True, window=3)),
    ("mqa-11x5-causal", (1, 11, 5, 3, 1, 8), dict(causal=True)),  # rows 0..5 see no key
    ("mha-7x7-softcap-seg-single", (2, 7, 7, 2, 2, 8), dict(softcap=1.5, segments="single")),
    ("gqa-6x9-window-cap-seg-pair-scale", (2, 6, 9, 4, 2, 8),
     dict(window=4, softcap=3.0, segments="pair", scale=0.3)),
    ("mqa-9x4-seg-pair", (1, 9, 4, 2, 1, 8), dict(segments="pair")),
    ("gqa-1x13-window-scale", (1, 1, 13, 6, 3, 16), dict(window=5, scale=0.7)),
    ("mha-4x6-full-d5", (1, 4, 6, 2, 2, 5), dict()),
]


def _draw(rng, shape, flags):
    """Inputs (scaled x2 so softcap and the softmax are far from linear) and call flags."""
    q, k, v, do = (2 * x for x in attention_inputs(rng, *shape))
    flags = dict(flags)
    kind = flags.pop("segments", None)
    b, sq, skv = shape[:3]
    if kind == "single":
        flags["segment_ids"] = rng.integers(0, 3, (b, sq))
    elif kind == "pair":  # unsorted; q id 3 has no key
        flags["segment_ids"] = (rng.integers(0, 4, (b, sq)), rng.integers(0, 3, (b, skv)))
    return (q, k, v, do), flags


def _assert_matches_oracle(got, truth, what):
    for name, g, t in zip(("out", "dq", "dk", "dv"), got, truth):
        g = np.asarray(g, np.float64)
        assert g.shape == t.shape, f"{what} {name}: shape {g.shape} != oracle {t.shape}"
        err = float(np.max(np.abs(g - t)))
        bound = FLOAT64_RTOL * max(1.0, float(np.max(np.abs(t))))
        assert err <= bound, f"{what} {name}: max error {err:.3e} > {bound:.3e} vs the float64 oracle"


def _torch_run(fn, xs, do, flags):
    ts = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in xs]
    kw = dict(flags)
    ids = kw.pop("segment_ids", None)
    if ids is not None:
        kw["segment_ids"] = (tuple(torch.tensor(x) for x in ids) if isinstance(ids, tuple)
                             else torch.tensor(ids))
    o = fn(*ts, **kw)
    o.backward(torch.tensor(do))
    return [o.detach().numpy(), *(t.grad.numpy() for t in ts)]


def _jax_run(fn, xs, do, flags):
    with jax.enable_x64(True):
        kw = dict(flags)
        ids = kw.pop("segment_ids", None)
        if ids is not None:
            kw["segment_ids"] = (tuple(jnp.asarray(x) for x in ids) if isinstance(ids, tuple)
                                 else jnp.asarray(ids))
        js = [jnp.asarray(x, jnp.float64) for x in (*xs, do)]

        @jax.jit  # one compiled program: eager float64 dispatch op by op is slower
        def fwd_bwd(q, k, v, g):
            o, vjp = jax.vjp(lambda a, b_, c: fn(a, b_, c, **kw), q, k, v)
            return (o, *vjp(g))

        out = fwd_bwd(*js)
        assert out[0].dtype == jnp.float64
        return [np.asarray(x) for x in out]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_oracle_rows_that_see_no_key_are_zero(case, rng):
    """The oracle's own contract on empty rows (the references are checked against it)."""
    _, shape, flags = case
    (q, k, v, do), flags = _draw(rng, shape, flags)
    o, dq, _, _ = oracle_attention(q, k, v, do, **flags)
    b, sq, skv = shape[:3]
    ids = flags.get("segment_ids")
    q_ids, kv_ids = (ids if isinstance(ids, tuple) else (ids, ids)) if ids is not None else (None, None)
    for bi in range(b):
        for i in range(sq):
            p = i + skv - sq
            lo = p - flags["window"] + 1 if flags.get("window") else 0
            hi = p if flags.get("causal") or flags.get("window") else skv - 1
            keys = range(max(lo, 0), min(hi, skv - 1) + 1)
            if q_ids is not None:
                keys = [j for j in keys if q_ids[bi, i] == kv_ids[bi, j]]
            if not len(keys):
                assert np.all(o[bi, i] == 0) and np.all(dq[bi, i] == 0)
            else:
                assert np.any(o[bi, i] != 0)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_torch_reference_matches_oracle(case, rng):
    _, shape, flags = case
    (q, k, v, do), flags = _draw(rng, shape, flags)
    truth = oracle_attention(q, k, v, do, **flags)
    _assert_matches_oracle(_torch_run(reference.attention_reference, (q, k, v), do, flags), truth,
                           "torch reference")
    _assert_matches_oracle(_torch_run(naive_torch, (q, k, v), do, flags), truth, "naive_torch")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_jax_reference_matches_oracle(case, rng):
    _, shape, flags = case
    (q, k, v, do), flags = _draw(rng, shape, flags)
    truth = oracle_attention(q, k, v, do, **flags)
    _assert_matches_oracle(_jax_run(reference_jax.attention_reference, (q, k, v), do, flags), truth,
                           "jax reference")
    _assert_matches_oracle(_jax_run(naive_jax, (q, k, v), do, flags), truth, "naive_jax")
