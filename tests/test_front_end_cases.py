"""Front-end cases: what every user call goes through before a kernel runs.

Defaults the front-ends fill in (scale = 1/sqrt(head_dim)), the shared argument checks
(``kernels/_checks.py``), interpreter selection (``kernels/_platform.py``) and the autotune
problem classes (a class must separate every field that can change the pick). Each test's
docstring names the mutation (the bug) it catches.
"""
from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import assert_close
from kernels import jax_ops, torch_ops


# --- independent float64 references (numpy) ---------------------------------------------

def _attention64(q, k, v, scale):
    """Plain float64 GQA attention, no mask: q [B, Sq, H, D], k/v [B, Skv, KVH, D]."""
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _decode64(q, k, v, lens, scale):
    """Float64 one-token decode: q [B, H, D], caches [B, T, KVH, D], row b sees keys < lens[b]."""
    out = np.zeros_like(q)
    for b, n in enumerate(lens):
        out[b] = _attention64(q[b][None, None], k[b:b + 1, :n], v[b:b + 1, :n], scale)[0, 0]
    return out


# --- default scale -----------------------------------------------------------------------

# head_dim 5: 5 ** -0.5 differs from every "nearby" power-of-two or even-rounded form.
_ATT_SHAPE = dict(b=1, sq=5, skv=7, h=4, kvh=2, d=5)


def _att_inputs(seed):
    g = np.random.default_rng(seed)
    s = _ATT_SHAPE
    q = g.standard_normal((s["b"], s["sq"], s["h"], s["d"])) * 2
    k = g.standard_normal((s["b"], s["skv"], s["kvh"], s["d"])) * 2
    v = g.standard_normal((s["b"], s["skv"], s["kvh"], s["d"]))
    return q, k, v


@pytest.mark.parametrize("impl", ["reference", "sdpa", "triton"])
def test_torch_attention_default_scale_is_inv_sqrt_head_dim(impl):
    """Mutations A1 (spec default scale off for odd head_dim) and T3 (the torch front-end
    passes the caller's scale=None instead of the resolved default): scale=None must mean
    1/sqrt(head_dim), checked against float64 on an odd head_dim."""
    q, k, v = _att_inputs(11)
    want = _attention64(q, k, v, _ATT_SHAPE["d"] ** -0.5)
    base = _attention64(*(x.astype(np.float32) for x in (q, k, v)), np.float32(_ATT_SHAPE["d"] ** -0.5))
    got = torch_ops.attention(*(torch.tensor(x, dtype=torch.float32) for x in (q, k, v)), impl=impl)
    assert_close(got, want, base.astype(np.float32), torch.float32, what=f"torch {impl} scale=None")


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_jax_attention_default_scale_is_inv_sqrt_head_dim(impl):
    """Mutation A1 (spec default scale off for odd head_dim), through the JAX front-end."""
    q, k, v = _att_inputs(12)
    want = _attention64(q, k, v, _ATT_SHAPE["d"] ** -0.5)
    base = _attention64(*(x.astype(np.float32) for x in (q, k, v)), np.float32(_ATT_SHAPE["d"] ** -0.5))
    got = jax_ops.attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), impl=impl)
    assert_close(np.asarray(got), want, base.astype(np.float32), jnp.float32, what=f"jax {impl} scale=None")


def _decode_inputs(seed, d=5):
    g = np.random.default_rng(seed)
    q = g.standard_normal((2, 4, d)) * 2
    k = g.standard_normal((2, 16, 2, d)) * 2
    v = g.standard_normal((2, 16, 2, d))
    lens = np.array([9, 16])
    return q, k, v, lens


@pytest.mark.parametrize("impl", ["reference", "sdpa", "triton"])
def test_torch_decode_default_scale_is_inv_sqrt_head_dim(impl):
    """Mutation D2 (decode spec default scale off for odd head_dim): scale=None is
    1/sqrt(head_dim), checked against float64."""
    q, k, v, lens = _decode_inputs(21)
    want = _decode64(q, k, v, lens, 5 ** -0.5)
    base = _decode64(*(x.astype(np.float32) for x in (q, k, v)), lens, np.float32(5 ** -0.5))
    t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    got = torch_ops.decode_attention(t(q), t(k), t(v), torch.tensor(lens, dtype=torch.int32), impl=impl)
    assert_close(got, want, base.astype(np.float32), torch.float32, what=f"torch decode {impl} scale=None")


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_jax_decode_default_scale_is_inv_sqrt_head_dim(impl):
    """Mutation D2, through the JAX front-end."""
    q, k, v, lens = _decode_inputs(22)
    want = _decode64(q, k, v, lens, 5 ** -0.5)
    base = _decode64(*(x.astype(np.float32) for x in (q, k, v)), lens, np.float32(5 ** -0.5))
    j = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    got = jax_ops.decode_attention(j(q), j(k), j(v), jnp.asarray(lens, jnp.int32), impl=impl)
    assert_close(np.asarray(got), want, base.astype(np.float32), jnp.float32, what=f"jax decode {impl} scale=None")


# --- shared scalar checks (kernels/_checks.py) ------------------------------------------

@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_norm_scalars_refused_by_name(framework):
    """Mutations C2 (check_float lets NaN through where positivity is not asked: offset=nan
    reached the kernel) and C3 (check_float takes a bool: eps=True ran as eps=1.0)."""
    if framework == "torch":
        x, w, ops = torch.ones(2, 8), torch.ones(8), torch_ops
    else:
        x, w, ops = jnp.ones((2, 8)), jnp.ones(8), jax_ops
    with pytest.raises(ValueError, match=r"^offset must be finite, got nan$"):
        ops.rms_norm(x, w, offset=float("nan"), impl="reference")
    with pytest.raises(ValueError, match=r"^offset must be finite, got inf$"):
        ops.rms_norm(x, w, offset=float("inf"), impl="reference")
    with pytest.raises(TypeError, match=r"^eps must be a float, got True$"):
        ops.rms_norm(x, w, eps=True, impl="reference")
    with pytest.raises(TypeError, match=r"^eps must be a float, got True$"):
        ops.layer_norm(x, w, w, eps=True, impl="reference")
    pos = (torch.zeros(1, 2, dtype=torch.int32) if framework == "torch" else jnp.zeros((1, 2), jnp.int32))
    xr = x.reshape(1, 2, 1, 8)
    with pytest.raises(TypeError, match=r"^theta must be a float, got False$"):
        ops.rope(xr, pos, theta=False, impl="reference")


# --- interpreter selection (kernels/_platform.py) ---------------------------------------

def test_pallas_interprets_unless_jax_runs_on_a_gpu(monkeypatch):
    """Mutation P2 (only the backend name "gpu" counted as a GPU): JAX names CUDA and ROCm
    backends "cuda" / "rocm" as well, where Pallas must compile, not interpret."""
    from kernels import _platform

    for backend, interpret in (("gpu", False), ("cuda", False), ("rocm", False), ("cpu", True), ("tpu", True)):
        monkeypatch.setattr(_platform, "jax_backend", lambda b=backend: b)
        assert _platform.pallas_interpret_default() is interpret, backend


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU default")
def test_user_triton_interpret_setting_is_kept():
    """Mutation P1 (configure_triton_interpret overwrote a TRITON_INTERPRET the user set):
    without a GPU the package sets TRITON_INTERPRET=1 only when the user set nothing; a user's
    TRITON_INTERPRET=0 (ahead-of-time compiles) survives importing the front-end."""
    script = ("import os\nfrom kernels import _platform\n"
              "on = _platform.configure_triton_interpret()\n"
              "print(repr(os.environ.get('TRITON_INTERPRET')), on)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for setting, want in (("0", "'0' False"), (None, "'1' True")):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = root
        if setting is not None:
            env["TRITON_INTERPRET"] = setting
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120, cwd=root, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == want, (setting, proc.stdout)


# --- autotune problem classes -----------------------------------------------------------

def _attention_class(**over):
    from kernels.attention.triton_autotune import problem_class

    a = dict(dtype=torch.float32, b=1, sq=64, skv=64, h=4, kvh=2, d=32, causal=False, window=None,
             softcap=None, segments=False)
    a.update(over)
    q = torch.empty(a["b"], a["sq"], a["h"], a["d"], dtype=a["dtype"])
    k = torch.empty(a["b"], a["skv"], a["kvh"], a["d"], dtype=a["dtype"])
    return problem_class(q, k, a["causal"], a["window"], a["softcap"], a["segments"])


def test_attention_autotune_class_separates_every_field():
    """Mutations U7 (the class ignores dtype: an fp32 pick reused for fp16) and U8 (ignores
    causal): two calls differing in any field the pick depends on are two problem classes;
    lengths that round to the same power of two, and batch, share one."""
    base = _attention_class()
    for field, value in (("dtype", torch.float16), ("causal", True), ("window", 8), ("softcap", 30.0),
                         ("segments", True), ("d", 64), ("kvh", 1), ("sq", 65), ("skv", 65)):
        assert _attention_class(**{field: value}) != base, field
    assert _attention_class(sq=40, skv=33, b=3) == base


def _int4_class(rows=1, dtype=torch.float32, k=64, n=32, group=32, zeros=True, sdtype=torch.float32):
    from kernels.int4.triton_autotune import problem_class

    x2 = torch.empty(rows, k, dtype=dtype)
    packed = torch.empty(n, k // 2, dtype=torch.uint8)
    scales = torch.empty(k // group, n, dtype=sdtype)
    return problem_class(x2, packed, scales, scales if zeros else None, group)


def test_int4_autotune_class_separates_decode_from_prefill():
    """Mutation U9 (rows left out of the int4 class: a decode row's split-K pick reused for a
    64-row prefill): rows round up to a power of two, and every other field separates too."""
    base = _int4_class()
    assert _int4_class(rows=64) != base and _int4_class(rows=2) != base
    assert _int4_class(rows=33) == _int4_class(rows=64)
    for over in (dict(dtype=torch.float16), dict(k=128), dict(n=64), dict(group=64), dict(zeros=False),
                 dict(sdtype=torch.float16)):
        assert _int4_class(**over) != base, over


# --- checks that must raise by name before a kernel runs --------------------------------

@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_zero_kv_heads_refused_by_name(framework):
    """Mutation A2 (kv_heads left out of the >= 1 check: heads % 0 raised a bare
    ZeroDivisionError): k/v with 0 kv_heads get the spec's ValueError naming the shapes."""
    if framework == "torch":
        q, k = torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 0, 8)
        attention = torch_ops.attention
    else:
        q, k = jnp.zeros((1, 4, 2, 8)), jnp.zeros((1, 4, 0, 8))
        attention = jax_ops.attention
    with pytest.raises(ValueError, match=r"every dimension must be >= 1, got q \(1, 4, 2, 8\) and k \(1, 4, 0, 8\)"):
        attention(q, k, k, impl="reference")


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_bidirectional_ids_shape_checked_when_lengths_differ(framework):
    """Mutation A6 (bidirectional_ids' shape checked against kv_len, or only when q_len ==
    kv_len): with q_len 3 < kv_len 5, ids shaped [batch, kv_len] are refused, naming the
    expected [batch, q_len]."""
    if framework == "torch":
        q, k, ids = torch.zeros(1, 3, 2, 8), torch.zeros(1, 5, 1, 8), torch.zeros(1, 5, dtype=torch.int32)
        attention = torch_ops.attention
    else:
        q, k, ids = jnp.zeros((1, 3, 2, 8)), jnp.zeros((1, 5, 1, 8)), jnp.zeros((1, 5), jnp.int32)
        attention = jax_ops.attention
    with pytest.raises(ValueError, match=r"bidirectional_ids must have shape \[batch, q_len\] = \(1, 3\), got \(1, 5\)"):
        attention(q, k, k, causal=True, bidirectional_ids=ids, impl="reference")


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_bool_positions_refused_by_name(framework):
    """Mutation C6 (check_integer let bool arrays through: rope ran with positions 0/1)."""
    if framework == "torch":
        x, pos, pos2, ops = torch.zeros(1, 3, 2, 8), torch.ones(1, 3, dtype=torch.bool), \
            torch.ones(1, 3, 2, dtype=torch.bool), torch_ops
    else:
        x, pos, pos2, ops = jnp.zeros((1, 3, 2, 8)), jnp.ones((1, 3), bool), jnp.ones((1, 3, 2), bool), jax_ops
    with pytest.raises(TypeError, match=r"^positions must be an integer array, got (torch\.)?bool$"):
        ops.rope(x, pos, impl="reference")
    with pytest.raises(TypeError, match=r"^positions_hw must be an integer array, got (torch\.)?bool$"):
        ops.rope_2d(x, pos2, impl="reference")


# --- eps reaches the norm ---------------------------------------------------------------

def _norm64(x, w, b, eps, rms):
    if rms:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


@pytest.mark.parametrize("framework,impl", [("torch", "reference"), ("torch", "triton"), ("jax", "reference")])
@pytest.mark.parametrize("rms", [True, False], ids=["rms", "layer"])
def test_norm_eps_is_the_callers(framework, impl, rms):
    """Mutation T8 (torch layer_norm dropped the caller's eps for a fixed one): a large eps
    (0.25) on small-variance rows changes the result visibly; checked against float64."""
    g = np.random.default_rng(31)
    x = g.standard_normal((3, 24)) * 0.3
    w, b = g.standard_normal(24), g.standard_normal(24)
    eps = 0.25
    want = _norm64(x, w, b, eps, rms)
    base = _norm64(*(a.astype(np.float32) for a in (x, w, b)), np.float32(eps), rms)
    if framework == "torch":
        t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        got = (torch_ops.rms_norm(t(x), t(w), eps=eps, impl=impl) if rms
               else torch_ops.layer_norm(t(x), t(w), t(b), eps=eps, impl=impl))
    else:
        j = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
        got = np.asarray(jax_ops.rms_norm(j(x), j(w), eps=eps, impl=impl) if rms
                         else jax_ops.layer_norm(j(x), j(w), j(b), eps=eps, impl=impl))
    assert_close(got, want, base, torch.float32, what=f"{framework} {impl} rms={rms} eps={eps}")


# --- the autotuner's output check -------------------------------------------------------

def test_autotune_checks_every_output_of_a_candidate():
    """Mutation U4 (only the first tensor of a launch's tuple compared): a backward launch
    returns (dq, dk, dv); a fast candidate with a wrong dv (or forward lse) must be skipped,
    not picked for being fastest."""
    from kernels._autotune import fastest

    g = torch.Generator().manual_seed(41)
    dq, dk, dv = (torch.randn(2, 8, 2, 16, generator=g) for _ in range(3))
    outs = {"default": (dq, dk, dv),
            "wrong-dv": (dq.clone(), dk.clone(), dv * 1.01),
            "wrong-dk": (dq.clone(), dk + 1.0, dv.clone()),
            "ok": (dq.clone(), dk.clone(), dv.clone())}
    times = {"default": 3.0, "ok": 2.0, "wrong-dk": 1.5, "wrong-dv": 1.0}
    tuning = {}
    pick = fastest("k", list(outs), lambda b: outs[b], tuning,
                   timer=lambda fn: times[next(b for b, o in outs.items() if o is fn())])
    assert pick == "ok"
    reasons = {b: why for b, ms, why in tuning["k"]["times_ms"]}
    assert reasons["wrong-dv"].startswith("disagrees: output 2 differs"), reasons
    assert reasons["wrong-dk"].startswith("disagrees: output 1 differs"), reasons
