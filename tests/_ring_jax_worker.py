"""Helper process for tests/test_ring_attention.py (not collected): JAX ring attention, 8 CPU devices.

    python tests/_ring_jax_worker.py '<json: {"seed", "cases": [...]}>'

XLA_FLAGS must ask for 8 host devices before JAX initializes, which a pytest process that
already imported JAX cannot do, hence this process. For each case it runs
``sharding.ring_attention_jax.ring_attention`` (forward and vjp, jitted) on the case's mesh,
the single-device Pallas kernel, the float64 torch reference (on the rounded inputs) and
jnp's math in the input dtype, and prints
one ``RESULT {json}`` line per quantity, then ``CHECK {json}`` lines for validation errors.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from kernels.attention import reference, reference_jax  # noqa: E402
from kernels.attention.pallas_attention import attention_pallas  # noqa: E402
from sharding.ring_attention_jax import ring_attention  # noqa: E402


def _max_err(x, ref):
    return float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(ref, np.float64))))


def _vjp(fn, q, k, v, do):
    o, pullback = jax.vjp(fn, q, k, v)
    return [o, *pullback(do)]


def _torch64_vjp(arrays, do, **kw):
    ts = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in arrays]
    o = reference._attention(*ts, window=None, q_segment_ids=None, kv_segment_ids=None, **kw)
    o.backward(torch.tensor(np.asarray(do, np.float64)))
    return [o.detach().numpy(), *(t.grad.numpy() for t in ts)]


def _case(case, rng):
    b, s, h, kvh, d = (case[key] for key in ("batch", "seq", "heads", "kv_heads", "head_dim"))
    kw = dict(causal=case["causal"], softcap=case["softcap"], scale=d ** -0.5)
    mesh = jax.make_mesh(tuple(case["mesh"]), tuple(case["axes"]))
    q, k, v, do = (jnp.asarray(rng.standard_normal(shape), case["dtype"]) for shape in
                   ((b, s, h, d), (b, s, kvh, d), (b, s, kvh, d), (b, s, h, d)))

    ring = jax.jit(lambda q, k, v, do: _vjp(
        lambda q, k, v: ring_attention(q, k, v, mesh=mesh, axis_name="sp", **kw), q, k, v, do))
    kernel = jax.jit(lambda q, k, v, do: _vjp(
        lambda q, k, v: attention_pallas(q, k, v, window=None, q_segment_ids=None,
                                         kv_segment_ids=None, **kw), q, k, v, do))
    base = jax.jit(lambda q, k, v, do: _vjp(
        lambda q, k, v: reference_jax._attention(q, k, v, window=None, q_segment_ids=None,
                                                 kv_segment_ids=None, upcast=False, **kw),
        q, k, v, do))
    outs = [ring(q, k, v, do), kernel(q, k, v, do), _torch64_vjp((q, k, v), do, **kw),
            base(q, k, v, do)]
    return [dict(case=case["id"], what=what, err_ring=_max_err(r, f), err_kernel=_max_err(kk, f),
                 err_base=_max_err(bb, f), diff_ring_kernel=_max_err(r, kk),
                 ref_max=float(np.max(np.abs(f))))
            for what, r, kk, f, bb in zip(("o", "dq", "dk", "dv"), *outs)]


def _checks():
    """Input errors, raised while checking arguments: (name, error type, message)."""
    mesh = jax.make_mesh((8,), ("sp",))
    x, kv = jnp.zeros((1, 32, 2, 16)), jnp.zeros((1, 32, 1, 16))
    attempts = {
        "seq_not_divisible": lambda: ring_attention(
            jnp.zeros((1, 24, 2, 16)), jnp.zeros((1, 24, 1, 16)), jnp.zeros((1, 24, 1, 16)),
            mesh=mesh, axis_name="sp", causal=True),
        "q_len_ne_kv_len": lambda: ring_attention(jnp.zeros((1, 16, 2, 16)), kv, kv, mesh=mesh,
                                                  axis_name="sp"),
        "window": lambda: ring_attention(x, kv, kv, mesh=mesh, axis_name="sp", window=4),
        "segment_ids": lambda: ring_attention(x, kv, kv, mesh=mesh, axis_name="sp",
                                              segment_ids=jnp.zeros((1, 32), jnp.int32)),
    }
    return run_attempts(attempts)


def run_attempts(attempts: dict) -> list:
    """One CHECK row per named call: the ValueError / TypeError it raised, or none."""
    out = []
    for name, fn in attempts.items():
        try:
            fn()
            out.append(dict(check=name, error=None, message=""))
        except (ValueError, TypeError) as e:
            out.append(dict(check=name, error=type(e).__name__, message=str(e)))
    return out


def main(case_fn, checks_fn) -> None:
    """RESULT lines of ``case_fn`` over the spec's cases (argv[1]), then CHECK lines."""
    spec = json.loads(sys.argv[1])
    assert jax.device_count() == 8, f"expected 8 simulated CPU devices, got {jax.device_count()}"
    rng = np.random.default_rng(spec["seed"])
    for case in spec["cases"]:
        for row in case_fn(case, rng):
            print("RESULT " + json.dumps(row), flush=True)
    for row in checks_fn():
        print("CHECK " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main(_case, _checks)
