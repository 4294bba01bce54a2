"""Helper process for tests/test_ring_attention.py (not collected): JAX ring attention over the
TPU kernel (impl="pallas_tpu", TPU interpret mode) on 8 simulated CPU devices.

    python tests/_ring_jax_tpu_worker.py '<json: {"seed", "cases": [...]}>'

As ``_ring_jax_worker.py`` (whose helpers it reuses; importing it sets XLA_FLAGS before JAX
starts), but the ring runs ``impl="pallas_tpu"`` and the single-device kernel it is compared
with is ``kernels.attention.pallas_tpu.attention_pallas_tpu``. Prints one ``RESULT {json}``
line per quantity (o, dq, dk, dv), then ``CHECK {json}`` lines for the impl / blocks checks.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ring_jax_worker import _max_err, _torch64_vjp, _vjp, main, run_attempts  # noqa: E402  (sets XLA_FLAGS first)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kernels.attention import reference_jax  # noqa: E402
from kernels.attention.pallas_tpu import attention_pallas_tpu  # noqa: E402
from sharding.ring_attention_jax import ring_attention  # noqa: E402


def _case(case, rng):
    b, s, h, kvh, d = (case[key] for key in ("batch", "seq", "heads", "kv_heads", "head_dim"))
    kw = dict(causal=case["causal"], softcap=case["softcap"], scale=d ** -0.5)
    mesh = jax.make_mesh(tuple(case["mesh"]), tuple(case["axes"]))
    q, k, v, do = (jnp.asarray(rng.standard_normal(shape), case["dtype"]) for shape in
                   ((b, s, h, d), (b, s, kvh, d), (b, s, kvh, d), (b, s, h, d)))
    ring = jax.jit(lambda q, k, v, do: _vjp(
        lambda q, k, v: ring_attention(q, k, v, mesh=mesh, axis_name="sp", impl="pallas_tpu",
                                       **kw), q, k, v, do))
    kernel = jax.jit(lambda q, k, v, do: _vjp(
        lambda q, k, v: attention_pallas_tpu(q, k, v, window=None, q_segment_ids=None,
                                             kv_segment_ids=None, **kw), q, k, v, do))
    base = jax.jit(lambda q, k, v, do: _vjp(
        lambda q, k, v: reference_jax._attention(q, k, v, window=None, q_segment_ids=None,
                                                 kv_segment_ids=None, upcast=False, **kw),
        q, k, v, do))
    # one at a time: TPU interpret mode's io_callbacks deadlock if another program is
    # dispatched while an 8-device one is still running them
    outs = [jax.block_until_ready(f(q, k, v, do)) for f in (ring, kernel)]
    outs += [_torch64_vjp((q, k, v), do, **kw), base(q, k, v, do)]
    return [dict(case=case["id"], what=what, err_ring=_max_err(r, f), err_kernel=_max_err(kk, f),
                 err_base=_max_err(bb, f), diff_ring_kernel=_max_err(r, kk),
                 ref_max=float(np.max(np.abs(f))))
            for what, r, kk, f, bb in zip(("o", "dq", "dk", "dv"), *outs)]


def _checks():
    """impl / blocks errors, raised while checking arguments: (name, error type, message)."""
    from kernels.attention.pallas_attention import PallasAttentionBlocks

    mesh = jax.make_mesh((8,), ("sp",))
    x, kv = jnp.zeros((1, 32, 2, 16)), jnp.zeros((1, 32, 1, 16))
    attempts = {
        "impl": lambda: ring_attention(x, kv, kv, mesh=mesh, axis_name="sp", impl="triton"),
        "tpu_blocks": lambda: ring_attention(x, kv, kv, mesh=mesh, axis_name="sp",
                                             impl="pallas_tpu", blocks=PallasAttentionBlocks()),
    }
    return run_attempts(attempts)


if __name__ == "__main__":
    main(_case, _checks)
