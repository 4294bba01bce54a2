"""Bad input: every public attention entry point raises before any kernel launches,
with a message naming the argument, what was expected and what came."""
from __future__ import annotations

import jax.numpy as jnp
import pytest
import torch

from kernels import jax_ops, torch_ops


@pytest.fixture(autouse=True)
def no_kernel_launches(monkeypatch):
    """Every call here is refused or runs a reference / peer impl: the Triton attention LAUNCHES
    counter is unchanged and no Pallas kernel is built (pallas_call, plgpu.kernel recorded).
    The JAX device checks run in a subprocess, outside this fixture."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    from kernels.attention import triton_attention

    built = []
    for mod, name in ((pl, "pallas_call"), (plgpu, "kernel")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _name=name, **kw: built.append(_name) or _real(*a, **kw))
    before = dict(triton_attention.LAUNCHES)
    yield
    assert dict(triton_attention.LAUNCHES) == before, f"Triton launches: {before} -> {dict(triton_attention.LAUNCHES)}"
    assert not built, f"Pallas kernels built: {built}"


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
    ("softcap_negative", dict(), {"softcap": -1.0}, ValueError, "softcap must be a finite float > 0 or None, got -1.0"),
    ("softcap_inf", dict(), {"softcap": float("inf")}, ValueError, "softcap must be a finite float > 0 or None, got inf"),
    ("softcap_nan", dict(), {"softcap": float("nan")}, ValueError, "softcap must be a finite float > 0 or None, got nan"),
    ("softcap_huge_int", dict(), {"softcap": 10**400}, ValueError, "softcap must be a finite float > 0 or None, got 1000"),
    ("scale_zero", dict(), {"scale": 0.0}, ValueError, "scale must be a finite float > 0 or None, got 0.0"),
    ("scale_inf", dict(), {"scale": float("inf")}, ValueError, "scale must be a finite float > 0 or None, got inf"),
    ("scale_str", dict(), {"scale": "0.1"}, ValueError, "scale must be a finite float > 0 or None, got '0.1'"),
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


_JAX_DEVICES_SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
import re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from kernels import jax_ops

d0, d1 = jax.devices()[:2]
on = jax.device_put
q, k = on(jnp.zeros((2, 4, 2, 8)), d0), on(jnp.zeros((2, 4, 1, 8)), d0)
ids = on(jnp.zeros((2, 4), jnp.int32), d0)

sys.path.insert(0, "tests")
from conftest import refused  # noqa: E402

for impl in jax_ops.ATTENTION_IMPLS:  # refused before any impl runs
    refused(lambda: jax_ops.attention(q, on(k, d1), k, impl=impl), "k must be on q's device cpu:0, got cpu:1")
refused(lambda: jax_ops.attention(q, k, on(k, d1), impl="reference"), "v must be on q's device cpu:0, got cpu:1")
refused(lambda: jax_ops.attention(q, k, k, segment_ids=(on(ids, d1), ids), impl="reference"),
        "q segment_ids must be on q's device cpu:0, got cpu:1")
refused(lambda: jax_ops.attention(q, k, k, segment_ids=(ids, on(ids, d1)), impl="reference"),
        "kv segment_ids must be on q's device cpu:0, got cpu:1")

dq, cache, lens = on(jnp.zeros((2, 2, 16)), d0), on(jnp.zeros((2, 32, 1, 16)), d0), on(jnp.array([3, 32]), d0)
for impl in jax_ops.DECODE_IMPLS:
    refused(lambda: jax_ops.decode_attention(dq, on(cache, d1), cache, lens, impl=impl),
            "k_cache must be on q's device cpu:0, got cpu:1")
refused(lambda: jax_ops.decode_attention(dq, cache, cache, on(lens, d1), impl="reference"),
        "cache_seqlens must be on q's device cpu:0, got cpu:1")
table = on(jnp.zeros((2, 2), jnp.int32), d1)
refused(lambda: jax_ops.decode_attention(dq, on(jnp.zeros((4, 16, 1, 16)), d0), on(jnp.zeros((4, 16, 1, 16)), d0),
                                         lens, block_table=table, impl="reference"),
        "block_table must be on q's device cpu:0, got cpu:1")

# Not refused: all on one device; uncommitted arrays; tracers beside a committed constant;
# the same two-device sharding everywhere. A q sharded over both with k on one is refused.
k1 = on(k, d1)
assert jax_ops.attention(on(q, d1), k1, k1, impl="reference").devices() == {d1}
jax_ops.attention(jnp.zeros((2, 4, 2, 8)), jnp.zeros((2, 4, 1, 8)), k1, impl="reference")
jax.jit(lambda x: jax_ops.attention(x, k1, k1, impl="reference"))(jnp.zeros((2, 4, 2, 8)))
jax_ops.decode_attention(on(dq, d1), on(cache, d1), on(cache, d1), on(lens, d1), impl="reference")
both = NamedSharding(Mesh(np.array([d0, d1]), ("b",)), P("b"))
qs, ks = on(q, both), on(k, both)
jax_ops.attention(qs, ks, ks, impl="reference")
refused(lambda: jax_ops.attention(qs, k, ks, impl="reference"), "k must be on q's device frozenset(")
print("DEVICE CHECKS OK")
"""


def test_jax_device_mismatch_named():
    """Committed jax.Arrays on different devices are refused by name before any kernel runs
    (attention and decode); a fresh process, because XLA_FLAGS must ask for 2 host devices
    before JAX initializes."""
    from conftest import run_two_device_script

    run_two_device_script(_JAX_DEVICES_SCRIPT)


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


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_numpy_integer_window_is_an_int_window(framework):
    """window=np.int64(2) is window=2 (as decode takes it); np.float64 / np.bool_ stay refused."""
    import numpy as np

    attention, make = FRAMEWORKS[framework][:2]
    g = np.random.default_rng(0)
    q, k, v = (np.asarray(g.standard_normal(x.shape), np.float32) for x in make(sq=6, skv=6))
    q, k, v = ((torch.from_numpy(x) if framework == "torch" else jnp.asarray(x)) for x in (q, k, v))
    want = np.asarray(attention(q, k, v, causal=True, window=2, impl="reference"))
    for w in (np.int64(2), np.int32(2)):
        got = np.asarray(attention(q, k, v, causal=True, window=w, impl="reference"))
        np.testing.assert_array_equal(got, want)
    for w in (np.float64(2.0), np.bool_(True)):
        with pytest.raises(TypeError, match="window must be an int >= 1 or None"):
            attention(q, k, v, causal=True, window=w, impl="reference")


def test_check_impl_names_the_op():
    from kernels.attention.spec import check_impl

    with pytest.raises(ValueError, match=r"^attention impl must be one of \['reference', 'triton'\], got 'xla'"):
        check_impl("xla", ("triton", "reference"), op="attention")
    with pytest.raises(ValueError, match=r"^impl must be one of"):
        check_impl("xla", ("triton", "reference"))
