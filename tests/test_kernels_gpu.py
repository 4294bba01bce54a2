"""The other compiled kernels on a CUDA GPU (skipped elsewhere; attention has
tests/test_attention_gpu.py): bf16 and fp16 against the float64 reference on the CPU,
forward and backward where the op has one. Run by `make bench-gpu`.

Why: the Triton interpreter's bf16 tl.dot is wrong, so the CPU tests never check bf16 Triton
matmul kernels, and they run Pallas only in interpret mode. Accuracy rule and floors:
conftest.assert_close (error <= 2x the error of the framework doing the same math in the same
precision on the GPU, plus the dtype floor of kernels/tolerances.py). Case tables, inputs and
truth/baseline helpers are the CPU test files'. Each case runs in bf16 or fp16 (paired so every
op sees both and compiles stay few). Sizes: decode caches of 4k and 6k (several splits),
contiguous and paged (pages of 16 and 64); int4 on nano1's layer shapes scaled down, group 128;
norms at 1152, 2048 and past 8192 columns (the column-blocked Triton backward); rope and
rope_2d at head_dim 128 and 80 with positions in [0, 5000); patch 14 and 16 on odd patch grids;
log_mel on fp32, bf16 and fp16 waveforms (float32 out).

CPU self-check, for editing this file without a GPU:
    KERNELS_GPU_TESTS_ON_CPU=1 python -m pytest tests/test_kernels_gpu.py -q -m gpu
runs the same tests on the CPU at small sizes (`sized`): Triton in the interpreter with the bf16
cases run in fp16, Pallas in interpret mode in bf16/fp16; conftest leaves this file's gpu tests
unskipped when GPU_TESTS_ON_CPU is true. It checks the test code, not the compiled kernels.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import test_activations
import test_cross_entropy
import test_decode
import test_int4
import test_log_mel
import test_norms
import test_paged_decode
import test_patch_embed
import test_rope
from conftest import assert_close, rounded
from test_patch_embed import _jax_vjp as jax_vjp  # [outputs, *input grads] of fn(*arrays[:-1]), dY = arrays[-1]

from kernels import jax_ops, torch_ops
from kernels.activations import reference as act_ref
from kernels.activations import reference_jax as act_ref_jax
from kernels.activations import triton_activations
from kernels.audio import reference_jax as mel_ref_jax
from kernels.audio import triton_log_mel
from kernels.audio.reference import log_mel_reference
from kernels.decode import triton_decode
from kernels.int4 import triton_int4
from kernels.norms import triton_norms
from kernels.patch_embed import reference_jax as patch_ref_jax
from kernels.patch_embed import triton_patch_embed
from kernels.patch_embed.reference import patch_embed_reference
from kernels.rope import reference as rope_ref
from kernels.rope import reference_jax as rope_ref_jax
from kernels.rope import triton_rope
from kernels.tolerances import dtype_name

pytestmark = pytest.mark.gpu

GPU_TESTS_ON_CPU = os.environ.get("KERNELS_GPU_TESTS_ON_CPU") == "1"  # read by conftest
DEVICE = "cpu" if GPU_TESTS_ON_CPU else "cuda"
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


def sized(gpu, cpu):
    """The GPU size, or a small one for the interpreters in the CPU self-check."""
    return cpu if GPU_TESTS_ON_CPU else gpu


def params(pairs, case_id, *, triton: bool):
    """pytest params (case, torch dtype); in the CPU self-check Triton's bf16 runs as fp16
    (the interpreter's bf16 tl.dot is wrong), pairs that then repeat dropped."""
    if triton and GPU_TESTS_ON_CPU:
        pairs = dict.fromkeys((c, FP16 if d == BF16 else d) for c, d in pairs)
    return [pytest.param(c, d, id=f"{case_id(c)}-{dtype_name(d)}") for c, d in pairs]


def jdt(dtype) -> jnp.dtype:
    return jnp.dtype(dtype_name(dtype))


def f32(x) -> np.ndarray:
    return np.asarray(x.astype(jnp.float32))


@pytest.fixture
def pallas_gpu():
    if not GPU_TESTS_ON_CPU and jax.default_backend() != "gpu":
        pytest.skip(f"JAX sees no GPU (backend {jax.default_backend()})")


@contextlib.contextmanager
def launched(module, *kernels):
    """Assert the Triton ``kernels`` of ``module`` launched inside the block (no fallback)."""
    before = collections.Counter(module.LAUNCHES)
    yield
    ran = collections.Counter(module.LAUNCHES) - before
    assert all(ran[k] for k in kernels), f"expected launches of {kernels}, got {dict(ran)}"


def tt(x, dtype):
    """numpy -> a torch tensor of ``dtype`` on DEVICE."""
    return torch.tensor(x).to(DEVICE, dtype)


def compare(names, got, truth, base, dtype):
    """assert_close for each named output and gradient, torch tensors or JAX arrays in ``dtype``."""
    for name, g, r, b in zip(names, got, truth, base):
        if isinstance(g, torch.Tensor):
            assert g.dtype == dtype, name
        else:
            assert g.dtype == jdt(dtype), name
            g, b = f32(g), f32(b)
        assert_close(g, r, b, dtype, name)


# ---- decode_attention: contiguous and paged ---------------------------------------------

T_A, T_B = sized(4096, 128), sized(6144, 192)
DECODE = [
    test_decode.Case(8, 1, 128, T_A, (0, 1, T_A // 2 + 1, T_A)),  # MQA: empty, one, odd, full
    test_decode.Case(8, 2, 80, T_B, (T_B, T_B - 37, 5), window=sized(1000, 40), softcap=5.0),  # GQA
]
PAGED = [test_paged_decode.Case(**dataclasses.asdict(c), page_size=p) for c, p in zip(DECODE, (16, 64))]
DECODE_PAIRS = [(c, d) for c in DECODE for d in (BF16, FP16)]
PAGED_PAIRS = [(c, d) for c in PAGED for d in (BF16, FP16)]
case_id = lambda c: c.id  # noqa: E731


@pytest.mark.parametrize("case,dtype", params(DECODE_PAIRS, case_id, triton=True))
def test_triton_decode(rng, case, dtype):
    q, k, v, lens = test_decode._inputs(rng, case)
    with launched(triton_decode, "_decode_split_kernel", "_decode_combine_kernel"):
        out = torch_ops.decode_attention(tt(q, dtype), tt(k, dtype), tt(v, dtype),
                                         torch.tensor(lens, device=DEVICE), window=case.window,
                                         softcap=case.softcap, impl="triton")
    test_decode._torch_check(out, q, k, v, lens, case, dtype, device=DEVICE)


@pytest.mark.parametrize("case,dtype", params(DECODE_PAIRS[:1], case_id, triton=True))
def test_triton_decode_every_candidate(rng, case, dtype):
    """Each decode ``candidate_blocks`` on this GPU against float64, sm_90's PDL launch among
    them (split and combine launched as programmatic dependents, each waiting before its
    loads: on a GPU the combine really starts under the split). Twice each: back to back,
    the second launch's split overlaps the first's combine."""
    q, k, v, lens = test_decode._inputs(rng, case)
    args = (tt(q, dtype), tt(k, dtype), tt(v, dtype), torch.tensor(lens, device=DEVICE, dtype=torch.int32))
    cap = (9, 0) if GPU_TESTS_ON_CPU else torch.cuda.get_device_capability()
    cands = triton_decode.candidate_blocks(case.head_dim, dtype, case.max_len, capability=cap)
    assert any(b.pdl for b in cands) == (cap >= (9, 0))
    for blocks in cands:
        with launched(triton_decode, "_decode_split_kernel", "_decode_combine_kernel"):
            outs = [triton_decode.decode_triton(*args, window=case.window, softcap=case.softcap, blocks=blocks)
                    for _ in range(2)]
        for out in outs:
            test_decode._torch_check(out, q, k, v, lens, case, dtype, device=DEVICE)


@pytest.mark.parametrize("case,dtype", params(PAGED_PAIRS, case_id, triton=True))
def test_triton_paged_decode(rng, case, dtype):
    with launched(triton_decode, "_decode_split_kernel", "_decode_combine_kernel"):
        test_paged_decode._torch_run(rng, case, dtype, "triton", device=DEVICE)


@pytest.mark.usefixtures("pallas_gpu")
@pytest.mark.parametrize("case,dtype", params(DECODE_PAIRS, case_id, triton=False))
def test_pallas_decode(rng, case, dtype):
    q, k, v, lens = test_decode._inputs(rng, case)
    out = jax_ops.decode_attention(*(jnp.asarray(x, jdt(dtype)) for x in (q, k, v)), jnp.asarray(lens),
                                   window=case.window, softcap=case.softcap, impl="pallas")
    test_decode._jax_check(out, q, k, v, lens, case, jdt(dtype))


@pytest.mark.usefixtures("pallas_gpu")
@pytest.mark.parametrize("case,dtype", params(PAGED_PAIRS, case_id, triton=False))
def test_pallas_paged_decode(rng, case, dtype):
    test_paged_decode._jax_run(rng, case, jdt(dtype), "pallas")


# ---- int4_matmul: nano1's layers (width 2048, mlp 9984) scaled down, group 128 -------------

INT4 = {  # id: (x shape, out features, asymmetric)
    "decode-m1-qkv-sym": (sized((1, 2048), (1, 256)), sized(1280, 40), False),  # (2048 + 2 * 256) / 2
    "decode-m16-down-asym": (sized((16, 1664), (16, 384)), sized(1024, 48), True),  # in: mlp / 6
    "prefill-up-asym": (sized((2, 77, 2048), (2, 13, 256)), sized(2496, 72), True),  # out: mlp / 4
    "prefill-up-sym": (sized((2, 77, 2048), (2, 13, 256)), sized(2496, 72), False),
}
INT4_PAIRS = list(zip(INT4, (BF16, FP16, BF16, FP16)))
GROUP = 128


@pytest.mark.parametrize("case,dtype", params(INT4_PAIRS, str, triton=True))
def test_triton_int4(rng, case, dtype):
    xs, out, asym = INT4[case]
    problem = test_int4._problem(rng, xs, out, GROUP, asym, dtype_name(dtype))
    x, packed, scales, zeros = (None if a is None else a.to(DEVICE) for a in problem[:4])
    with launched(triton_int4, "_int4_matmul_kernel"):
        y = torch_ops.int4_matmul(x, packed, scales, zeros, GROUP, impl="triton")
    assert y.dtype == dtype and y.shape == (*xs[:-1], out)
    base = torch_ops.int4_matmul(x, packed, scales, zeros, GROUP, impl="reference")
    assert_close(y, problem[4], base, dtype, f"triton {case}")


@pytest.mark.parametrize("case,dtype", params(INT4_PAIRS[:2], str, triton=True))
def test_triton_int4_every_decode_candidate(rng, case, dtype):
    """Each ``candidate_blocks`` of the decode rows (the inline-PTX nibbles with the scale after
    the dot, per-step or preloaded scale rows) on the GPU against float64: the PTX runs only here."""
    xs, out, asym = INT4[case]
    problem = test_int4._problem(rng, xs, out, GROUP, asym, dtype_name(dtype))
    x, packed, scales, zeros = (None if a is None else a.to(DEVICE) for a in problem[:4])
    base = torch_ops.int4_matmul(x, packed, scales, zeros, GROUP, impl="reference")
    cap = (9, 0) if GPU_TESTS_ON_CPU else torch.cuda.get_device_capability()
    cands = triton_int4.candidate_blocks(xs[0], dtype, capability=cap)
    assert any(b.scale_after_dot for b in cands)
    for blocks in cands:
        with launched(triton_int4, "_int4_matmul_kernel"):
            y = triton_int4.int4_matmul_triton(x, packed, scales, zeros, GROUP, blocks=blocks)
        assert_close(y, problem[4], base, dtype, f"triton {case} {blocks}")


@pytest.mark.usefixtures("pallas_gpu")
@pytest.mark.parametrize("case,dtype", params(INT4_PAIRS, str, triton=False))
def test_pallas_int4(rng, case, dtype):
    xs, out, asym = INT4[case]
    problem = test_int4._problem(rng, xs, out, GROUP, asym, dtype_name(dtype))
    args = test_int4._to_jax(*problem[:4])
    y = jax_ops.int4_matmul(*args, GROUP, impl="pallas")
    assert y.dtype == jdt(dtype) and y.shape == (*xs[:-1], out)
    base = jax_ops.int4_matmul(*args, GROUP, impl="reference")
    assert_close(f32(y), problem[4], f32(base), dtype, f"pallas {case}")


# ---- rms_norm / layer_norm (+ residual, gemma scale) ------------------------------------------

NORMS = [
    test_norms.Case(True, 1152, residual=True, gemma=True, lead=sized((4, 77), (3, 13))),
    test_norms.Case(False, 2048, residual=True, lead=sized((301,), (39,))),
    test_norms.Case(True, sized(10240, 8200), residual=True, gemma=True, lead=sized((67,), (3,))),
    test_norms.Case(False, 9001, residual=False, lead=sized((5, 13), (2,))),
]
NORM_PAIRS = list(zip(NORMS, (BF16, FP16, BF16, FP16)))


def norm_op(ops, case, impl):
    """fn(x, w, b, r) through the public op: rms_norm (gemma flag) or layer_norm."""
    eps = test_norms._kwargs(case)["eps"]
    if case.rms:
        return lambda x, w, b, r: ops.rms_norm(x, w, eps=eps, gemma=case.gemma, residual=r, impl=impl)
    return lambda x, w, b, r: ops.layer_norm(x, w, b, eps=eps, residual=r, impl=impl)


def norm_problem(rng, case, dtype):
    arrays, cots = test_norms._inputs(rng, case)
    return {k: None if v is None else rounded(v, dtype) for k, v in arrays.items()}, cots


@pytest.mark.parametrize("case,dtype", params(NORM_PAIRS, case_id, triton=True))
def test_triton_norm(rng, case, dtype):
    arrays, cots = norm_problem(rng, case, dtype)
    wide = case.hidden > triton_norms.WHOLE_ROW_BWD_MAX
    bwd = ("_norm_bwd_row_sums_kernel", "_norm_bwd_col_block_kernel") if wide else ("_norm_bwd_kernel",)
    with launched(triton_norms, "_norm_fwd_kernel", *bwd):
        got = test_norms._torch_run(norm_op(torch_ops, case, "triton"), arrays, cots, dtype, DEVICE)
    test_norms._assert_torch_matches(got, arrays, cots, case, dtype, DEVICE)


@pytest.mark.usefixtures("pallas_gpu")
@pytest.mark.parametrize("case,dtype", params(NORM_PAIRS, case_id, triton=False))
def test_pallas_norm(rng, case, dtype):
    arrays, cots = norm_problem(rng, case, dtype)
    got = test_norms._jax_run(norm_op(jax_ops, case, "pallas"), arrays, cots, jdt(dtype))
    test_norms._assert_jax_matches(got, arrays, cots, case, jdt(dtype))


# ---- rope, rope_2d --------------------------------------------------------------------------

ROPE = [((1, 128), BF16), ((1, 80), FP16), ((2, 80), BF16), ((2, 128), FP16)]  # (sections, head_dim)
ROPE_SHAPE = sized((2, 301, 8), (2, 9, 3))  # batch, seq, heads
rope_id = lambda c: f"{c[0]}d-d{c[1]}"  # noqa: E731


def rope_problem(rng, case, dtype, ops):
    """(x, positions, dY), the op (rope or rope_2d) of ``ops``, reference kwargs, float64 truth."""
    sections, head_dim = case
    x, pos, dy = test_rope._data(rng, dtype, sections, head_dim, ROPE_SHAPE)
    kw = dict(theta=10000.0, sections=sections)
    truth = test_rope._torch_run(lambda t, p: rope_ref._rope(t, p, **kw), x, pos, dy, torch.float64)
    return (x, pos, dy), (ops.rope if sections == 1 else ops.rope_2d), kw, truth


@pytest.mark.parametrize("case,dtype", params(ROPE, rope_id, triton=True))
def test_triton_rope(rng, case, dtype):
    data, op, kw, truth = rope_problem(rng, case, dtype, torch_ops)
    with launched(triton_rope, "_rope_kernel"):
        got = test_rope._torch_run(lambda t, p: op(t, p, impl="triton"), *data, dtype, DEVICE)
    base = test_rope._torch_run(lambda t, p: rope_ref._rope(t, p, **kw, upcast=False), *data, dtype, DEVICE)
    compare(["y", "dx"], got, truth, base, dtype)


@pytest.mark.usefixtures("pallas_gpu")
@pytest.mark.parametrize("case,dtype", params(ROPE, rope_id, triton=False))
def test_pallas_rope(rng, case, dtype):
    (x, pos, dy), op, kw, truth = rope_problem(rng, case, dtype, jax_ops)
    pj = jnp.asarray(pos)
    got = jax_vjp(lambda a: op(a, pj, impl="pallas"), [x, dy], jdt(dtype))
    base = jax_vjp(lambda a: rope_ref_jax._rope(a, pj, **kw, upcast=False), [x, dy], jdt(dtype))
    compare(["y", "dx"], got, truth, base, dtype)


# ---- gelu, gated_gelu -----------------------------------------------------------------------

ACT = [((True, "tanh"), BF16), ((False, "none"), FP16)]  # (gated, approximate)
ACT_SHAPE = sized((37, 5001), test_activations.SHAPE)
act_id = lambda c: f"{'geglu' if c[0] else 'gelu'}-{c[1]}"  # noqa: E731
ACT_NAMES = ["y", "dgate", "dup"]


@pytest.mark.parametrize("case,dtype", params(ACT, act_id, triton=True))
def test_triton_gelu(rng, case, dtype):
    gated, approximate = case
    xs, dy = test_activations._data(rng, dtype, gated, ACT_SHAPE)
    op = (lambda x, u: torch_ops.gated_gelu(x, u, approximate=approximate, impl="triton")) if gated else \
        (lambda x, u: torch_ops.gelu(x, approximate=approximate, impl="triton"))
    with launched(triton_activations, "_gelu_fwd_kernel", "_gelu_bwd_kernel"):
        got = test_activations._torch_run(op, xs, dy, dtype, DEVICE)
    ref = test_activations._torch_run(lambda x, u: act_ref._gelu(x, u, approximate=approximate), xs, dy,
                                      torch.float64)
    base = test_activations._torch_run(lambda x, u: act_ref._gelu(x, u, approximate=approximate, upcast=False),
                                       xs, dy, dtype, DEVICE)
    compare(ACT_NAMES, got, ref, base, dtype)


@pytest.mark.usefixtures("pallas_gpu")
@pytest.mark.parametrize("case,dtype", params(ACT, act_id, triton=False))
def test_pallas_gelu(rng, case, dtype):
    gated, approximate = case
    xs, dy = test_activations._data(rng, dtype, gated, ACT_SHAPE)
    op = (lambda x, u: jax_ops.gated_gelu(x, u, approximate=approximate, impl="pallas")) if gated else \
        (lambda x: jax_ops.gelu(x, approximate=approximate, impl="pallas"))
    base_op = (lambda x, u=None: act_ref_jax._gelu(x, u, approximate=approximate, upcast=False))
    got, base = (jax_vjp(fn, [*xs, dy], jdt(dtype)) for fn in (op, base_op))
    ref = test_activations._torch_run(lambda x, u: act_ref._gelu(x, u, approximate=approximate), xs, dy,
                                      torch.float64)
    compare(ACT_NAMES, got, ref, base, dtype)


# ---- patch_embed ----------------------------------------------------------------------------

PE = test_patch_embed.Case
PATCH = [(sized(PE(2, 14 * 9, 14 * 13, 3, 14, 384), test_patch_embed.P14), BF16),
         (sized(PE(1, 16 * 7, 16 * 15, 3, 16, 256), test_patch_embed.P16), FP16)]


@pytest.mark.parametrize("case,dtype", params(PATCH, case_id, triton=True))
def test_triton_patch_embed(rng, case, dtype):
    arrays = test_patch_embed._rounded(case.arrays(rng), dtype)
    fn = lambda *t: patch_embed_reference(*t, patch=case.patch)  # noqa: E731
    ref = test_patch_embed._torch_vjp(fn, arrays, torch.float64)
    base = test_patch_embed._torch_vjp(fn, arrays, dtype, device=DEVICE)
    with launched(triton_patch_embed, "_patch_embed_fwd_kernel", "_patch_embed_dweight_kernel",
                  "_patch_embed_dimages_kernel", "_patch_embed_dpos_kernel"):
        got = test_patch_embed._torch_vjp(lambda *t: torch_ops.patch_embed(*t, patch=case.patch, impl="triton"),
                                          arrays, dtype, device=DEVICE)
    compare(test_patch_embed.NAMES, got, ref, base, dtype)


@pytest.mark.usefixtures("pallas_gpu")
@pytest.mark.parametrize("case,dtype", params(PATCH, case_id, triton=False))
def test_pallas_patch_embed(rng, case, dtype):
    arrays = test_patch_embed._rounded(case.arrays(rng), dtype)  # exact in dtype: one truth for both
    ref = test_patch_embed._torch_vjp(lambda *t: patch_embed_reference(*t, patch=case.patch), arrays,
                                      torch.float64)
    base = jax_vjp(lambda *a: patch_ref_jax.patch_embed_reference(*a, patch=case.patch), arrays, jdt(dtype))
    got = jax_vjp(lambda *a: jax_ops.patch_embed(*a, patch=case.patch, impl="pallas"), arrays, jdt(dtype))
    compare(test_patch_embed.NAMES, got, ref, base, dtype)


# ---- log_mel (forward; float32 out) ---------------------------------------------------------

LOG_MEL = [((2, 128), FP32), ((2, 80), BF16), ((1, 128), FP16)]  # (batch, n_mels)
SAMPLES = sized(24_123, 2001)  # 1.5 s and an odd tail
mel_id = lambda c: f"b{c[0]}-{SAMPLES}-mel{c[1]}"  # noqa: E731


@pytest.mark.parametrize("case,dtype", params(LOG_MEL, mel_id, triton=True))
def test_triton_log_mel(rng, case, dtype):
    batch, n_mels = case
    x = rng.standard_normal((batch, SAMPLES))
    with launched(triton_log_mel, "_log_mel_kernel"):
        out = torch_ops.log_mel(tt(x, dtype), n_mels=n_mels, impl="triton")
    assert out.dtype == torch.float32
    ref = log_mel_reference(torch.tensor(rounded(x, dtype)), n_mels=n_mels)
    base = test_log_mel._same_precision_baseline(x, dtype, n_mels, DEVICE)
    assert_close(out, ref, base, dtype, "log_mel")


@pytest.mark.usefixtures("pallas_gpu")
@pytest.mark.parametrize("case,dtype", params(LOG_MEL, mel_id, triton=False))
def test_pallas_log_mel(rng, case, dtype):
    batch, n_mels = case
    x = rounded(rng.standard_normal((batch, SAMPLES)), dtype)  # exact in dtype: one truth for both
    xj = jnp.asarray(x).astype(jdt(dtype))
    out = jax_ops.log_mel(xj, n_mels=n_mels, impl="pallas")
    assert out.dtype == jnp.float32
    ref = log_mel_reference(torch.tensor(x), n_mels=n_mels)
    base = mel_ref_jax.log_mel_xla(xj, n_mels=n_mels)
    assert_close(np.asarray(out), ref, np.asarray(base), dtype, "log_mel")


# ---- linear_cross_entropy: chunked logits, the row kernel, in-place gradients -----------

CE = [((sized(300, 21), sized(50257, 301), sized(128, 5), None), BF16),
      ((sized(300, 21), sized(50257, 301), sized(128, 5), 30.0), FP16)]  # (rows, vocab, chunk, softcap)
ce_id = lambda c: f"n{c[0]}-v{c[1]}-chunk{c[2]}{'-softcap' if c[3] else ''}"  # noqa: E731


@pytest.mark.parametrize("case,dtype", params(CE, ce_id, triton=True))
def test_triton_linear_cross_entropy(rng, case, dtype):
    from kernels.cross_entropy import reference as ce_ref
    from kernels.cross_entropy import triton_cross_entropy
    from kernels.cross_entropy.triton_cross_entropy import CrossEntropyBlocks

    rows, vocab, chunk, cap = case
    width = sized(256, test_cross_entropy.WIDTH)
    x, w, t, m = test_cross_entropy._data(rng, (rows,), vocab, width)
    blocks = CrossEntropyBlocks(chunk_rows=chunk) if DEVICE == "cuda" else CrossEntropyBlocks(64, 4, chunk)
    td, md = t.to(DEVICE), m.to(DEVICE)
    op = lambda a, b: triton_cross_entropy.linear_cross_entropy_triton(  # noqa: E731
        a, b, torch.where(md, td, 0), md.float() / md.sum(), softcap=cap, blocks=blocks)
    with launched(triton_cross_entropy, "_ce_kernel"):
        got = test_cross_entropy._run(op, x, w, dtype, DEVICE)
    ref = test_cross_entropy._run(lambda a, b: ce_ref._linear_cross_entropy(a, b, t, m, softcap=cap), x, w,
                                  torch.float64)
    base = test_cross_entropy._run(lambda a, b: ce_ref._linear_cross_entropy(a, b, td, md, softcap=cap,
                                                                             upcast=False), x, w, dtype, DEVICE)
    assert_close(got[0], ref[0], base[0], dtype, "loss")
    compare(["dx", "dweight"], got[1:], ref[1:], base[1:], dtype)



@pytest.mark.usefixtures("pallas_gpu")
@pytest.mark.parametrize("case,dtype", params(CE, ce_id, triton=False))
def test_pallas_linear_cross_entropy(rng, case, dtype):
    """The JAX chunked path with its Pallas row kernel (Triton lowering on the GPU)."""
    from kernels.cross_entropy.jax_cross_entropy import JaxCrossEntropyBlocks, linear_cross_entropy_jax
    from kernels.cross_entropy.reference_jax import linear_cross_entropy_reference

    import test_cross_entropy_jax as tcj

    rows, vocab, chunk, cap = case
    width = sized(256, test_cross_entropy.WIDTH)
    x, w, t, m = (a.numpy() for a in test_cross_entropy._data(rng, (rows,), vocab, width))
    blocks = JaxCrossEntropyBlocks(chunk_rows=chunk) if DEVICE == "cuda" else \
        JaxCrossEntropyBlocks(block_r=4, block_v=64, chunk_rows=chunk)
    row_w = jnp.asarray(m / max(m.sum(), 1))
    got, _ = tcj._jax_run(lambda a, b: linear_cross_entropy_jax(
        a, b, jnp.asarray(np.where(m, t, 0)), row_w, softcap=cap, impl="pallas", blocks=blocks), x, w, jdt(dtype))
    base, _ = tcj._jax_run(lambda a, b: linear_cross_entropy_reference(
        a, b, jnp.asarray(t), jnp.asarray(m), softcap=cap), x, w, jdt(dtype))
    for name, g, r, b in zip(["loss", "dx", "dweight"], got, tcj._truth(x, w, t, m, cap), base):
        assert_close(g, r, b, dtype, f"pallas {name}")
