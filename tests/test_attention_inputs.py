"""Bad input: every public attention entry point raises before any kernel launches,
with a message naming the argument, what was expected and what came."""
from __future__ import annotations

import jax.numpy as jnp
import pytest
import torch

from kernels import jax_ops, torch_ops


def _torch(b=1, sq=4, skv=4, h=4, kvh=2, d=16, dtype=torch.float32):
    return (torch.zeros(b, sq, h, d, dtype=dtype), torch.zeros(b, skv, kvh, d, dtype=dtype),
            torch.zeros(b, skv, kvh, d, dtype=dtype))


def _jax(b=1, sq=4, skv=4, h=4, kvh=2, d=16, dtype=jnp.float32):
    return (jnp.zeros((b, sq, h, d), dtype), jnp.zeros((b, skv, kvh, d), dtype),
            jnp.zeros((b, skv, kvh, d), dtype))


FRAMEWORKS = {
    "torch": (torch_ops.attention, _torch, torch.float16, torch.int32,
              lambda shape, dt: torch.zeros(shape, dtype=dt), torch_ops.ATTENTION_IMPLS),
    "jax": (jax_ops.attention, _jax, jnp.float16, jnp.int32,
            lambda shape, dt: jnp.zeros(shape, dt), jax_ops.ATTENTION_IMPLS),
}

CASES = [
    # (id, builder(kwargs for make), call kwargs, exception, message fragment)
    ("3d_q", dict(), "q3d", ValueError, "q must be 4-D"),
    ("kv_shape_mismatch", dict(), "v_short", ValueError, "k and v must have the same shape"),
    ("batch_mismatch", dict(), "k_batch", ValueError, "k batch must equal q batch 1, got 2"),
    ("head_dim_mismatch", dict(), "k_dim", ValueError, "k head_dim must equal q head_dim 16, got 8"),
    ("heads_not_divisible", dict(h=6, kvh=4), None, ValueError, "heads % kv_heads must be 0 (q heads 6, k/v kv_heads 4)"),
    ("head_dim_too_big", dict(d=512), None, ValueError, "head_dim must be <= 256, got 512"),
    ("mixed_dtypes", dict(), "k_half", TypeError, "k dtype must equal q dtype"),
    ("window_zero", dict(), {"window": 0}, ValueError, "window must be >= 1, got 0"),
    ("window_float", dict(), {"window": 2.5}, TypeError, "window must be an int >= 1 or None, got 2.5"),
    ("softcap_negative", dict(), {"softcap": -1.0}, ValueError, "softcap must be a float > 0 or None, got -1.0"),
    ("scale_zero", dict(), {"scale": 0.0}, ValueError, "scale must be a float > 0 or None, got 0.0"),
    ("causal_not_bool", dict(), {"causal": 1}, TypeError, "causal must be a bool, got 1"),
    ("unknown_impl", dict(), {"impl": "cuda_magic"}, ValueError, "impl must be one of"),
    ("segments_wrong_shape", dict(), "seg_shape", ValueError, "q segment_ids must have shape (1, 4), got (1, 3)"),
    ("segments_float", dict(), "seg_float", TypeError, "q segment_ids must be an integer array"),
    ("segments_single_needs_equal_len", dict(skv=6), "seg_single", ValueError, "segment_ids as one array needs q_len == kv_len"),
    ("int_inputs", dict(), "int_q", TypeError, "q dtype must be one of"),
]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_with_message(framework, case):
    attention, make, half, int_dt, zeros, impls = FRAMEWORKS[framework]
    _, shape_kw, mod, exc, fragment = case
    q, k, v = make(**shape_kw)
    kwargs = {}
    if isinstance(mod, dict):
        kwargs = dict(mod)
    elif mod == "q3d":
        q = q[0]
    elif mod == "v_short":
        v = v[:, :2]
    elif mod == "k_batch":
        k = make(b=2)[1]
        v = make(b=2)[2]
    elif mod == "k_dim":
        k, v = make(d=8)[1], make(d=8)[2]
    elif mod == "k_half":
        k = k.astype(half) if framework == "jax" else k.to(half)
    elif mod == "seg_shape":
        kwargs["segment_ids"] = (zeros((1, 3), int_dt), zeros((1, 4), int_dt))
    elif mod == "seg_float":
        kwargs["segment_ids"] = (zeros((1, 4), q.dtype), zeros((1, 4), int_dt))
    elif mod == "seg_single":
        kwargs["segment_ids"] = zeros((1, 4), int_dt)
    elif mod == "int_q":
        q = q.astype(int_dt) if framework == "jax" else q.to(int_dt)
    for impl in impls if "impl" not in kwargs else [kwargs.pop("impl")]:
        with pytest.raises(exc, match=_escape(fragment)):
            attention(q, k, v, impl=impl, **kwargs)


def _escape(s):
    import re

    return re.escape(s)


def test_torch_device_mismatch_named():
    q, k, v = _torch()
    k = k.to("meta")
    with pytest.raises(ValueError, match="k must be on q's device cpu, got meta"):
        torch_ops.attention(q, k, v, impl="reference")


@pytest.mark.parametrize("impl,attention,make", [("sdpa", torch_ops.attention, _torch),
                                                  ("xla", jax_ops.attention, _jax)])
def test_peer_without_softcap_refuses(impl, attention, make):
    q, k, v = make()
    with pytest.raises(ValueError, match=f"impl='{impl}' does not support softcap"):
        attention(q, k, v, softcap=30.0, impl=impl)


def test_packages_resolve_to_this_repository():
    """The top-level names clash with unrelated PyPI packages: make sure ours are imported."""
    import pathlib

    import benchmarks
    import kernels
    import model
    import sharding

    root = pathlib.Path(__file__).resolve().parents[1]
    for mod in (kernels, model, sharding, benchmarks):
        assert pathlib.Path(mod.__file__).resolve().parent.parent == root, mod.__file__
