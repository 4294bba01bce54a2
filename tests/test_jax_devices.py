"""JAX device checks of the encoder ops, int4_matmul and linear_cross_entropy: committed arrays
on different devices are refused by name before anything runs (every impl); uncommitted arrays,
tracers and matching devices pass. A fresh process with 2 host devices (XLA_FLAGS must be set
before JAX initializes); attention and decode are covered in test_attention_inputs.py.
"""
from __future__ import annotations

from conftest import run_two_device_script

_SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp
from kernels import jax_ops as J

d0, d1 = jax.devices()[:2]
on = jax.device_put
f = lambda *s: jnp.ones(s, jnp.float32)

sys.path.insert(0, "tests")
from conftest import refused  # noqa: E402

x, w = on(f(3, 8), d0), f(8)
pos, pos2 = jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 3, 2), jnp.int32)
img, pw, pb, pp = on(f(1, 14, 14, 3), d0), f(588, 8), f(8), f(1, 8)
K, N, G = 64, 16, 32
xi, packed, sc = on(f(3, K), d0), jnp.zeros((N, K // 2), jnp.uint8), f(K // G, N)
t = jnp.zeros((3,), jnp.int32)
B = "on x's device cpu:0, got cpu:1"
for impl in J.NORM_IMPLS:
    refused(lambda: J.rms_norm(x, on(w, d1), impl=impl), "weight must be " + B)
    refused(lambda: J.rms_norm(x, w, residual=on(f(3, 8), d1), impl=impl), "residual must be " + B)
    refused(lambda: J.layer_norm(x, w, on(w, d1), impl=impl), "bias must be " + B)
for impl in J.ROPE_IMPLS:
    refused(lambda: J.rope(on(f(1, 3, 2, 8), d0), on(pos, d1), impl=impl), "positions must be " + B)
    refused(lambda: J.rope_2d(on(f(1, 3, 2, 8), d0), on(pos2, d1), impl=impl), "positions_hw must be " + B)
for impl in J.ACTIVATION_IMPLS:
    refused(lambda: J.gated_gelu(x, on(f(3, 8), d1), impl=impl), "up must be on gate's device cpu:0, got cpu:1")
for impl in J.PATCH_EMBED_IMPLS:
    for i, name in enumerate(("weight", "bias", "pos_embed")):
        args = [pw, pb, pp]
        args[i] = on(args[i], d1)
        refused(lambda: J.patch_embed(img, *args, patch=14, impl=impl),
                name + " must be on images' device cpu:0, got cpu:1")
for impl in J.INT4_IMPLS:
    refused(lambda: J.int4_matmul(xi, on(packed, d1), sc, sc, G, impl=impl), "packed_w must be " + B)
    refused(lambda: J.int4_matmul(xi, packed, on(sc, d1), None, G, impl=impl), "scales must be " + B)
    refused(lambda: J.int4_matmul(xi, packed, sc, on(sc, d1), G, impl=impl), "zeros must be " + B)
for impl in J.LOSS_IMPLS:
    refused(lambda: J.linear_cross_entropy(x, on(f(11, 8), d1), t, impl=impl), "weight must be " + B)
    refused(lambda: J.linear_cross_entropy(x, f(11, 8), on(t, d1), impl=impl), "targets must be " + B)
    refused(lambda: J.linear_cross_entropy(x, f(11, 8), t, mask=on(t == 0, d1), impl=impl), "mask must be " + B)
    refused(lambda: J.linear_cross_entropy(x, f(11, 8), t, normalizer=on(jnp.array(2.0), d1), impl=impl),
            "normalizer must be " + B)

# Not refused: committed beside uncommitted (x on d1, the rest uncommitted), tracers beside a
# committed constant, and everything on one device.
x1 = on(f(3, 8), d1)
assert J.rms_norm(x1, w, impl="reference").devices() == {d1}
J.layer_norm(x1, on(w, d1), on(w, d1), impl="reference")
J.gated_gelu(x1, f(3, 8), impl="reference")
J.rope(on(f(1, 3, 2, 8), d1), pos, impl="reference")
J.patch_embed(on(img, d1), pw, on(pb, d1), pp, patch=14, impl="reference")
J.int4_matmul(on(xi, d1), packed, sc, on(sc, d1), G, impl="reference")
J.linear_cross_entropy(x1, f(11, 8), on(t, d1), normalizer=jnp.array(2.0), impl="reference")
jax.jit(lambda a: J.rms_norm(a, on(w, d1), impl="reference"))(f(3, 8))
jax.jit(lambda a, n: J.linear_cross_entropy(a, on(f(11, 8), d1), t, normalizer=n, impl="reference"))(f(3, 8), 2.0)
print("DEVICE CHECKS OK")
"""


def test_jax_device_mismatch_named():
    run_two_device_script(_SCRIPT)
