"""Compiled kernels on a CUDA GPU (skipped elsewhere): bf16 and fp16, forward and
backward, against the float64 reference on the CPU (plain, windowed, softcapped, and with
segment ids and bidirectional image blocks). Run by `make bench-gpu`.

CPU self-check, for editing this file without a GPU (as tests/test_kernels_gpu.py):
    KERNELS_GPU_TESTS_ON_CPU=1 python -m pytest tests/test_attention_gpu.py -q -m gpu
runs the same code on the CPU at small sizes, Triton in the interpreter with bf16 run as fp16,
Pallas in interpret mode; the TMA tests need sm_90 and skip. It checks the test code (devices,
dtypes, plumbing), not the compiled kernels.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import assert_close, attention_inputs, rounded, torch_attention_vjp

from kernels.attention.reference import _attention as ref_torch

pytestmark = pytest.mark.gpu

GPU_TESTS_ON_CPU = os.environ.get("KERNELS_GPU_TESTS_ON_CPU") == "1"  # read by conftest
DEVICE = "cpu" if GPU_TESTS_ON_CPU else "cuda"


def _sized(n: int) -> int:
    """A length on the GPU; about a tenth of it in the CPU self-check (interpreters are slow)."""
    return max(1, n // 10) if GPU_TESTS_ON_CPU and n > 1 else n


CASES = [  # id, (b, sq, skv, h, kvh, d), flags
    ("mqa-1000-causal-d128", (1, _sized(1000), _sized(1000), 8, 1, 128), dict(causal=True)),
    ("gqa-333x1025-d64", (2, _sized(333), _sized(1025), 8, 2, 64), dict(causal=True)),
    ("gqa-700-window-d80", (1, _sized(700), _sized(700), 4, 2, 80), dict(window=_sized(129))),
    ("mqa-513-softcap-d256", (1, _sized(513), _sized(513), 4, 1, 256), dict(causal=True, softcap=30.0)),
    ("mha-1x777-d128", (1, 1, _sized(777), 4, 4, 128), dict()),
    # sm_90's defaults (SM90_DEFAULTS): head_dim 256, GQA, batch 2, Sq < Skv, causal
    ("gqa-b2-300x555-causal-d256", (2, _sized(300), _sized(555), 8, 2, 256), dict(causal=True)),
]
# the Triton interpreter's bf16 tl.dot is wrong: the CPU self-check runs Triton in fp16 only
DTYPES = [torch.float16] if GPU_TESTS_ON_CPU else [torch.bfloat16, torch.float16]


def _truth_and_base(q, k, v, do, dtype, flags):
    fn = lambda a, b, c: ref_torch(a, b, c, scale=q.shape[-1] ** -0.5, q_segment_ids=None,  # noqa: E731
                                   kv_segment_ids=None, window=flags.get("window"),
                                   softcap=flags.get("softcap"), causal=flags.get("causal", False))
    truth = torch_attention_vjp(fn, *(rounded(x, dtype) for x in (q, k, v)), do, torch.float64)
    same = lambda a, b, c: ref_torch(a.to(DEVICE), b.to(DEVICE), c.to(DEVICE), scale=q.shape[-1] ** -0.5,  # noqa: E731
                                     q_segment_ids=None, kv_segment_ids=None, upcast=False,
                                     window=flags.get("window"), softcap=flags.get("softcap"),
                                     causal=flags.get("causal", False))
    base = torch_attention_vjp(same, q, k, v, do, dtype)
    return truth, base


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_on_gpu(case, dtype, rng):
    from kernels import torch_ops

    _, shape, flags = case
    q, k, v, do = attention_inputs(rng, *shape)
    truth, base = _truth_and_base(q, k, v, do, dtype, flags)
    got = torch_attention_vjp(lambda a, b, c: torch_ops.attention(a.to(DEVICE), b.to(DEVICE), c.to(DEVICE),
                                                                  impl="triton", **flags),
                              q, k, v, do, dtype)
    for name, g, t, b in zip(("out", "dq", "dk", "dv"), got, truth, base):
        assert_close(g, t, b, dtype, f"triton {name}")


# autotune compiles every forward and backward candidate per problem class: one case only
TMA_CASES = [(c, "tma") for c in CASES] + [(CASES[0], "autotune")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case,blocks", TMA_CASES, ids=[f"{c[0]}-{b}" for c, b in TMA_CASES])
def test_triton_tma_and_autotuned_forward_on_gpu(case, blocks, dtype, rng):
    """TMA tiles (copy engine) in the forward and backward passes; the autotuned picks."""
    from kernels.attention import triton_attention as ta

    if GPU_TESTS_ON_CPU or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor-descriptor (TMA) tiles need sm_90 or later")
    _, shape, flags = case
    q, k, v, do = attention_inputs(rng, *shape)
    truth, base = _truth_and_base(q, k, v, do, dtype, flags)
    d = shape[-1]
    if blocks == "tma":
        cap = torch.cuda.get_device_capability()
        blocks = tuple(ta.tma_blocks(ta.default_blocks(d, dtype, backward=bwd, capability=cap),
                                     backward=bwd) for bwd in (False, True))
    launched = ta.LAUNCHES["_attn_fwd_tma_kernel"], ta.LAUNCHES["_attn_bwd_dq_tma_kernel"]
    got = torch_attention_vjp(lambda a, b, c: ta.attention_triton(a.to(DEVICE), b.to(DEVICE), c.to(DEVICE),
                                                                  blocks=blocks, **flags),
                              q, k, v, do, dtype)
    if blocks != "autotune":
        assert ta.LAUNCHES["_attn_fwd_tma_kernel"] > launched[0]
        assert ta.LAUNCHES["_attn_bwd_dq_tma_kernel"] > launched[1]
    for name, g, t, b in zip(("out", "dq", "dk", "dv"), got, truth, base):
        assert_close(g, t, b, dtype, f"triton {blocks} {name}")


# every backward tile candidate of the device (what the autotuner and the sweep choose among,
# by time alone): head_dim 128 (MQA causal) and 256 (softcap), bf16


def _bwd_candidate_count(head_dim: int) -> int:
    """The most backward candidates of sm_80, sm_90 and this GPU, at collection: a candidate
    added to candidate_blocks gets its own test id instead of falling past a fixed range."""
    from kernels.attention import triton_attention as ta

    caps = {(8, 0), (9, 0)} | ({torch.cuda.get_device_capability()} if torch.cuda.is_available() else set())
    return max(len(ta.candidate_blocks(head_dim, torch.bfloat16, backward=True, capability=c)) for c in caps)


BWD_CANDIDATE_CASES = [(c, i) for c in (CASES[0], CASES[3]) for i in range(_bwd_candidate_count(c[1][-1]))]


@pytest.mark.parametrize("case,index", BWD_CANDIDATE_CASES,
                         ids=[f"{c[0]}-cand{i}" for c, i in BWD_CANDIDATE_CASES])
def test_triton_backward_candidates_on_gpu(case, index, rng):
    """Each ``candidate_blocks(backward=True)`` (two-pass dK/dV, 128-key tiles, own dQ tiles,
    TMA, dQ by atomics or bulk reductions) gives the float64 gradients within the accuracy rule, forward at the default tiles."""
    from kernels.attention import triton_attention as ta

    _, shape, flags = case
    d = shape[-1]
    cap = (9, 0) if GPU_TESTS_ON_CPU else torch.cuda.get_device_capability()
    dtype = torch.float16 if GPU_TESTS_ON_CPU else torch.bfloat16
    cands = ta.candidate_blocks(d, dtype, backward=True, capability=cap)
    if index >= len(cands):
        pytest.skip(f"{len(cands)} candidates on this device")
    blocks = cands[index]
    if blocks.tma and (GPU_TESTS_ON_CPU or cap[0] < 9):
        pytest.skip("tensor-descriptor (TMA) tiles need sm_90 or later")
    if blocks.gluon_dkdv and (GPU_TESTS_ON_CPU or cap[0] != 9):
        pytest.skip("the Gluon dK/dV pass runs on sm_90 (on the CPU: tests/test_gluon_emulator.py)")
    q, k, v, do = attention_inputs(rng, *shape)
    truth, base = _truth_and_base(q, k, v, do, dtype, flags)
    fwd = ta.default_blocks(d, dtype, capability=None if GPU_TESTS_ON_CPU else cap)
    got = torch_attention_vjp(lambda a, b, c: ta.attention_triton(a.to(DEVICE), b.to(DEVICE), c.to(DEVICE),
                                                                  blocks=(fwd, blocks), **flags),
                              q, k, v, do, dtype)
    for name, g, t, b in zip(("out", "dq", "dk", "dv"), got, truth, base):
        assert_close(g, t, b, dtype, f"triton bwd {blocks} {name}")


# the Gluon forward's candidates (sm_90: warp-specialized, overlapped, ping-pong, 64-key
# ping-pong, ping-pong with a 3-deep ring; at head_dim 256 ping-pong and warp-specialized with 64 keys, ping-pong with 32):
# MQA causal, GQA with Sq < Skv at head_dim 64 and two batches, MHA with one query row, a
# softcap at head_dim 256, a window; gradients through the default Triton backward on the
# Gluon forward's LSE
# (every candidate on the first; ping-pong, candidate 0, on the others and in fp16: the GPU
# test stage has about a minute)
D256 = ("mqa-700-causal-d256", (1, _sized(700), _sized(700), 8, 1, 256), dict(causal=True))
GLUON_CASES = [(CASES[0], j, "bf16") for j in range(5)] + [(D256, j, "bf16") for j in range(3)]
WINDOW = ("mqa-900-window-d128", (1, _sized(900), _sized(900), 8, 1, 128), dict(window=_sized(129)))
GLUON_CASES += [(CASES[1], 0, "bf16"), (CASES[4], 0, "bf16"), (CASES[1], 0, "fp16"),
                (CASES[3], 0, "bf16"), (WINDOW, 2, "bf16"), (WINDOW, 3, "bf16")]  # softcap hd256; window


@pytest.mark.parametrize("case,index,dt", GLUON_CASES, ids=[f"{c[0]}-gluon{i}-{dt}" for c, i, dt in GLUON_CASES])
def test_gluon_forward_candidates_on_gpu(case, index, dt, rng):
    """Each Gluon ``candidate_blocks`` forward gives the float64 output, and its LSE the float64
    gradients through the Triton backward, within the accuracy rule."""
    from kernels.attention import triton_attention as ta

    if GPU_TESTS_ON_CPU or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon forward needs sm_90")
    cap = torch.cuda.get_device_capability()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dt]
    _, shape, flags = case
    d = shape[-1]
    cands = [b for b in ta.candidate_blocks(d, dtype, capability=cap) if b.gluon]
    assert len(cands) == (3 if d == 256 else 5), cands
    q, k, v, do = attention_inputs(rng, *shape)
    truth, base = _truth_and_base(q, k, v, do, dtype, flags)
    bwd = ta.default_blocks(d, dtype, backward=True, capability=cap)
    launched = ta.LAUNCHES["_gluon_attn_fwd_kernel"]
    got = torch_attention_vjp(lambda a, b, c: ta.attention_triton(a.to(DEVICE), b.to(DEVICE), c.to(DEVICE),
                                                                  blocks=(cands[index], bwd), **flags),
                              q, k, v, do, dtype)
    assert ta.LAUNCHES["_gluon_attn_fwd_kernel"] > launched
    for name, g, t, b in zip(("out", "dq", "dk", "dv"), got, truth, base):
        assert_close(g, t, b, dtype, f"gluon {cands[index]} {name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pallas_on_gpu(case, dtype, rng):
    import jax
    import jax.numpy as jnp

    from kernels import jax_ops

    if not GPU_TESTS_ON_CPU and jax.default_backend() != "gpu":
        pytest.skip(f"JAX sees no GPU (backend {jax.default_backend()})")
    _, shape, flags = case
    q, k, v, do = attention_inputs(rng, *shape)
    truth, base = _truth_and_base(q, k, v, do, dtype, flags)
    jdt = jnp.dtype(str(dtype).replace("torch.", ""))
    f = lambda a, b, c: jax_ops.attention(a, b, c, impl="pallas", **flags)  # noqa: E731
    xs = [jnp.asarray(rounded(x, dtype), jdt) for x in (q, k, v)]
    o, vjp = jax.vjp(f, *xs)
    got = [np.asarray(t.astype(jnp.float32)) for t in (o, *vjp(jnp.asarray(do, jdt)))]
    for name, g, t, b in zip(("out", "dq", "dk", "dv"), got, truth, base):
        assert_close(g, t, b, dtype, f"pallas {name}")


# image blocks seen bidirectionally (bidirectional_ids; GQA, causal) and packed documents
# (segment ids; MQA, causal, window): the masks the model's multimodal and packed batches use
def _masks(rng, b, sq, kind):
    """(kwargs for the kernels, (q_segment_ids, kv_segment_ids, q_end) for the reference)."""
    if kind == "bidir":  # text (-1) with two image runs per row at random places
        ids = np.full((b, sq), -1, np.int64)
        for r in range(b):
            for run in range(2):
                start = int(rng.integers(0, max(1, sq - sq // 4)))
                ids[r, start:start + max(2, sq // 6)] = run + 10 * r
        ids_t = torch.tensor(ids, dtype=torch.int32)
        from kernels.attention.reference import bidirectional_q_end

        return dict(bidirectional_ids=ids_t), (None, None, bidirectional_q_end(ids_t, sq))
    seg = torch.tensor(np.sort(rng.integers(0, 3, (b, sq)), axis=1), dtype=torch.int32)
    return dict(segment_ids=seg), (seg, seg, None)


MASK_CASES = [("bidir-gqa-300-d128", (2, _sized(300), _sized(300), 8, 2, 128), dict(causal=True), "bidir"),
              ("segments-mqa-257-window-d128", (2, _sized(257), _sized(257), 8, 1, 128),
               dict(causal=True, window=_sized(100)), "segments")]


@pytest.mark.parametrize("impl", ["triton", "pallas"])
@pytest.mark.parametrize("case", MASK_CASES, ids=[c[0] for c in MASK_CASES])
def test_masked_attention_on_gpu(case, impl, rng):
    """bidirectional_ids and segment_ids through the compiled Triton and Pallas kernels,
    forward and backward, bf16 (fp16 in the CPU self-check), against float64."""
    _, shape, flags, kind = case
    dtype = torch.float16 if GPU_TESTS_ON_CPU else torch.bfloat16
    q, k, v, do = attention_inputs(rng, *shape)
    kw, (qs, ks, q_end) = _masks(rng, shape[0], shape[1], kind)

    def ref(a, b, c, upcast=True):
        dev = a.device
        return ref_torch(a, b, c, scale=shape[-1] ** -0.5, causal=flags["causal"], window=flags.get("window"),
                         softcap=None, upcast=upcast, q_end=None if q_end is None else q_end.to(dev),
                         q_segment_ids=None if qs is None else qs.to(dev),
                         kv_segment_ids=None if ks is None else ks.to(dev))

    truth = torch_attention_vjp(ref, *(rounded(x, dtype) for x in (q, k, v)), do, torch.float64)
    base = torch_attention_vjp(lambda a, b, c: ref(a.to(DEVICE), b.to(DEVICE), c.to(DEVICE), upcast=False),
                               q, k, v, do, dtype)
    if impl == "triton":
        from kernels import torch_ops

        kwd = {n: t.to(DEVICE) for n, t in kw.items()}
        got = torch_attention_vjp(lambda a, b, c: torch_ops.attention(a.to(DEVICE), b.to(DEVICE), c.to(DEVICE),
                                                                      impl="triton", **flags, **kwd),
                                  q, k, v, do, dtype)
    else:
        import jax
        import jax.numpy as jnp

        from kernels import jax_ops

        if not GPU_TESTS_ON_CPU and jax.default_backend() != "gpu":
            pytest.skip(f"JAX sees no GPU (backend {jax.default_backend()})")
        jdt = jnp.dtype(str(dtype).replace("torch.", ""))
        kwj = {n: jnp.asarray(t.numpy()) for n, t in kw.items()}
        f = lambda a, b, c: jax_ops.attention(a, b, c, impl="pallas", **flags, **kwj)  # noqa: E731
        o, vjp = jax.vjp(f, *[jnp.asarray(rounded(x, dtype), jdt) for x in (q, k, v)])
        got = [np.asarray(t.astype(jnp.float32)) for t in (o, *vjp(jnp.asarray(do, jdt)))]
    for name, g, t, b in zip(("out", "dq", "dk", "dv"), got, truth, base):
        assert_close(g, t, b, dtype, f"{impl} {kind} {name}")
