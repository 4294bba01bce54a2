"""int4 dequantizing matmul: Triton and Pallas kernels vs float64 on odd shapes, the quantizers,
bad input, no rows (an empty result), and the sm_90 ahead-of-time compile (no spills; wgmma for prefill tiles).

Accuracy: kernel error vs float64 (exact dequantization, x rounded to its dtype) <= 2x the error
of the reference impl doing the same math in the same precision + floor (tests/conftest.py).
The AOT compile runs in a fresh process (see tests/test_triton_aot.py's docstring for why).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from conftest import assert_close

from kernels import torch_ops  # noqa: F401  (sets TRITON_INTERPRET before any kernel import)
from kernels.int4 import reference as ref_torch
from kernels.int4.pallas_int4 import PallasInt4Blocks
from kernels.int4.triton_int4 import LAUNCHES, Int4Blocks, int4_matmul_triton, split_plan


# (x shape, out, group_size, asymmetric, dtype, triton blocks or None, pallas blocks or None)
CASES = {
    "decode-m1-splitk-out40": ((1, 256), 40, 64, False, "float32", Int4Blocks(16, 32, 64, 2, 4, 1),
                               PallasInt4Blocks(16, 16, 64, 3, 4, 1)),
    "decode-3x5-asym-fp16": ((3, 5, 128), 72, 32, True, "float16", None, None),
    "prefill-70rows-asym-tiles": ((70, 256), 48, 128, True, "float32", Int4Blocks(32, 32, 64, 1, 4, 1),
                                  PallasInt4Blocks(32, 32, 64, 1, 4, 1)),
    # the group's scale and zero applied to the product of x and the exact codes 1024 + q
    "decode-3x5-asym-fp16-scale-after-dot": ((3, 5, 128), 72, 32, True, "float16",
                                             Int4Blocks(16, 32, 32, 2, 4, 1, scale_after_dot=True), None),
    # split-K with preloaded scale rows: the second split starts mid-group (k 192 of groups of 128)
    "decode-2rows-split-mid-group-asym": ((2, 384), 40, 128, True, "float32",
                                          Int4Blocks(16, 32, 64, 2, 4, 1), None),
    # split-K with the scale rows loaded per step (preloading off)
    "decode-2rows-split-per-step-scales": ((2, 384), 40, 128, True, "float32",
                                           Int4Blocks(16, 32, 64, 2, 4, 1, preload_scales=False), None),
    # split-K whose last split is shorter: 7 K steps as 4 + 3 (the k_end clamp)
    "decode-2rows-uneven-splits-asym": ((2, 448), 40, 64, True, "float32", Int4Blocks(16, 32, 64, 2, 4, 1),
                                        PallasInt4Blocks(16, 16, 64, 2, 4, 1)),
    "prefill-70rows-sym-fp16-scale-after-dot": ((70, 256), 48, 128, False, "float16",
                                                Int4Blocks(32, 32, 64, 1, 4, 1, scale_after_dot=True), None),
    # scale rows loaded a step ahead: uneven splits (the last split's step has no next row) ...
    "decode-2rows-uneven-splits-prefetch-asym": ((2, 448), 40, 64, True, "float32",
                                                 Int4Blocks(16, 32, 64, 2, 4, 1, preload_scales=False,
                                                            prefetch_scales=True), None),
    # ... and one split of steps half a group long (two steps read each row), codes after the dot
    "decode-3x5-sym-fp16-scale-after-dot-prefetch": ((3, 5, 256), 72, 64, False, "float16",
                                                     Int4Blocks(16, 32, 32, 1, 4, 1, scale_after_dot=True,
                                                                prefetch_scales=True), None),
}


def _problem(rng, xs, out, g, asym, dtype):
    w = torch.tensor(rng.standard_normal((out, xs[-1])), dtype=torch.float32)
    packed, scales, zeros = ref_torch.quantize_int4(w, g, asymmetric=asym)
    x = torch.tensor(rng.standard_normal(xs)).to(getattr(torch, dtype))
    truth = ref_torch.int4_matmul_reference(x.double(), packed, scales, zeros, g)
    return x, packed, scales, zeros, truth


def _to_jax(x, packed, scales, zeros):
    """The torch problem as JAX arrays: x in its dtype, scales / zeros in float16."""
    import jax.numpy as jnp

    xj = jnp.asarray(x.float().numpy()).astype(str(x.dtype).replace("torch.", ""))
    pj, sj = jnp.asarray(packed.numpy()), jnp.asarray(scales.float().numpy()).astype(jnp.float16)
    zj = None if zeros is None else jnp.asarray(zeros.float().numpy()).astype(jnp.float16)
    return xj, pj, sj, zj


@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_float64(rng, case):
    xs, out, g, asym, dtype, blocks, _ = CASES[case]
    x, packed, scales, zeros, truth = _problem(rng, xs, out, g, asym, dtype)
    before = LAUNCHES["_int4_matmul_kernel"]
    if blocks is None:
        y = torch_ops.int4_matmul(x, packed, scales, zeros, g, impl="triton")
    else:
        y = int4_matmul_triton(x, packed, scales, zeros, g, blocks=blocks)
    assert LAUNCHES["_int4_matmul_kernel"] == before + 1  # the kernel ran, not a fallback
    assert y.dtype == x.dtype and y.shape == (*xs[:-1], out)
    base = torch_ops.int4_matmul(x, packed, scales, zeros, g, impl="reference")
    assert_close(y, truth, base, x.dtype, what=f"triton {case}")
    if blocks is not None and blocks.split_k > 1:  # in-kernel split-K sum: counters left at zero
        from kernels.int4.triton_int4 import _LOCKS

        assert all(int(buf.abs().sum()) == 0 for buf in _LOCKS.values())
        again = int4_matmul_triton(x, packed, scales, zeros, g, blocks=blocks)
        assert torch.equal(again, y)  # the next launch reduces the same way


@pytest.mark.parametrize("case", [c for c, v in CASES.items() if v[5] is None or v[6] is not None])
def test_pallas_matches_float64(rng, case):  # (Triton-only tile options are left out)
    from kernels import jax_ops
    from kernels.int4.pallas_int4 import int4_matmul_pallas

    xs, out, g, asym, dtype, _, blocks = CASES[case]
    x, packed, scales, zeros, truth = _problem(rng, xs, out, g, asym, dtype)
    xj, pj, sj, zj = _to_jax(x, packed, scales, zeros)
    if blocks is None:
        y = jax_ops.int4_matmul(xj, pj, sj, zj, g, impl="pallas")
    else:
        y = int4_matmul_pallas(xj, pj, sj, zj, g, blocks=blocks, interpret=True)
    assert y.dtype == xj.dtype and y.shape == (*xs[:-1], out)
    base = jax_ops.int4_matmul(xj, pj, sj, zj, g, impl="reference")
    assert_close(np.asarray(y, np.float64), truth, np.asarray(base, np.float64), x.dtype,
                 what=f"pallas {case}")


@pytest.mark.parametrize("blocks", [None, Int4Blocks(16, 32, 32, 2, 4, 1, scale_after_dot=True)],
                         ids=["default", "scale-after-dot"])
def test_fractional_zero_points_are_kept(rng, blocks):
    """Zero points with a fraction (other quantizers write them; ours are integers): every impl
    dequantizes (q - z) * s with z as given, none rounds z (the Triton 2^23 + z trick did)."""
    from kernels import jax_ops

    x, packed, scales, _, _ = _problem(rng, (3, 128), 24, 32, True, "float16")
    zeros = torch.tensor(rng.uniform(0.0, 15.0, (128 // 32, 24))).to(scales.dtype)
    assert (zeros != zeros.round()).float().mean() > 0.9
    truth = ref_torch.int4_matmul_reference(x.double(), packed, scales, zeros, 32)
    base = torch_ops.int4_matmul(x, packed, scales, zeros, 32, impl="reference")
    y = (torch_ops.int4_matmul(x, packed, scales, zeros, 32, impl="triton") if blocks is None
         else int4_matmul_triton(x, packed, scales, zeros, 32, blocks=blocks))
    assert_close(y, truth, base, x.dtype, what="triton, fractional zeros")
    if blocks is None:
        xj, pj, sj, zj = _to_jax(x, packed, scales, zeros)
        yj = jax_ops.int4_matmul(xj, pj, sj, zj, 32, impl="pallas")
        bj = jax_ops.int4_matmul(xj, pj, sj, zj, 32, impl="reference")
        assert_close(np.asarray(yj, np.float64), truth, np.asarray(bj, np.float64), x.dtype,
                     what="pallas, fractional zeros")


@pytest.mark.parametrize("xs", [(0, 128), (2, 0, 128)], ids=["0x128", "2x0x128"])
def test_zero_rows_give_an_empty_result(rng, xs):
    """x with no rows: Triton and Pallas return [..., out] empty in x's dtype (nothing launched),
    as the references do."""
    from kernels import jax_ops

    x, packed, scales, zeros, _ = _problem(rng, (1, 128), 40, 64, True, "float32")
    x = torch.zeros(xs)
    y = torch_ops.int4_matmul(x, packed, scales, zeros, 64, impl="triton")
    assert y.shape == (*xs[:-1], 40) and y.dtype == x.dtype
    xj, pj, sj, zj = _to_jax(x, packed, scales, zeros)
    for impl in ("pallas", "reference"):
        yj = jax_ops.int4_matmul(xj, pj, sj, zj, 64, impl=impl)
        assert yj.shape == (*xs[:-1], 40) and yj.dtype == xj.dtype, impl


@pytest.mark.parametrize("asym", [False, True], ids=["symmetric", "asymmetric"])
def test_quantizers_round_to_nearest_and_agree(rng, asym):
    import jax.numpy as jnp

    from kernels.int4 import reference_jax

    g = 32
    w = torch.tensor(rng.standard_normal((24, 128)) * 0.05, dtype=torch.float32)
    w[3, :g] = 0.0  # an all-zero group: scale 1, dequantizes to exactly 0
    packed, scales, zeros = ref_torch.quantize_int4(w, g, asymmetric=asym)
    assert packed.dtype == torch.uint8 and packed.shape == (24, 64) and scales.shape == (4, 24)
    codes = ref_torch.unpack_int4(packed)
    assert torch.equal(ref_torch.pack_int4(codes), packed)
    assert torch.equal(codes[:, 0::2], packed & 0xF)  # low nibble = even input index
    dq = ref_torch.dequantize_int4(packed, scales, zeros, g, torch.float64)
    step = scales.double().t().repeat_interleave(g, 1)
    # symmetric: each value within half a step; asymmetric: the zero point is rounded to an
    # integer, which shifts the grid by up to half a step, so a clamped extreme is within one
    bound = step if asym else step / 2
    assert torch.all((dq - w.double()).abs() <= bound + 1e-6)
    assert torch.all(dq[3, :g] == 0)
    pj, sj, zj = reference_jax.quantize_int4(jnp.asarray(w.numpy()), g, asymmetric=asym)
    np.testing.assert_array_equal(np.asarray(pj), packed.numpy())
    np.testing.assert_array_equal(np.asarray(sj, np.float32), scales.float().numpy())
    assert (zj is None) == (zeros is None)

@pytest.mark.parametrize("asym", [False, True], ids=["symmetric", "asymmetric"])
def test_tiny_groups_quantize_to_zero_and_bad_weights_are_refused(rng, asym):
    """A group whose scale underflows fp16 (range below ~4.5e-7) gets scale 1 and codes for 0,
    never a 0 / 0 = NaN zero point (both quantizers); NaN / inf weights are refused."""
    import jax.numpy as jnp

    from kernels.int4 import reference_jax

    g = 32
    w = torch.tensor(rng.standard_normal((4, 64)), dtype=torch.float32)
    w[0, :g] = 1e-9  # scale ~1.4e-10: 0 in fp16
    w[1, g:] = 0.0
    w[1, g + 5] = -3e-9  # zeros but one: asymmetric lo < 0, hi == 0
    packed, scales, zeros = ref_torch.quantize_int4(w, g, asymmetric=asym)
    dq = ref_torch.dequantize_int4(packed, scales, zeros, g, torch.float64)
    assert torch.isfinite(dq).all() and torch.isfinite(scales).all()
    assert dq[0, :g].abs().max() <= 1e-8 and dq[1, g:].abs().max() <= 1e-8
    x = torch.randn(3, 64, dtype=torch.float16)
    out = torch_ops.int4_matmul(x, packed, scales, zeros, g)
    assert torch.isfinite(out).all()
    pj, sj, _ = reference_jax.quantize_int4(jnp.asarray(w.numpy()), g, asymmetric=asym)
    np.testing.assert_array_equal(np.asarray(pj), packed.numpy())
    np.testing.assert_array_equal(np.asarray(sj, np.float32), scales.float().numpy())
    for bad in (float("nan"), float("inf")):
        wb = w.clone()
        wb[2, 7] = bad
        with pytest.raises(ValueError, match="w: a group's scale is not finite"):
            ref_torch.quantize_int4(wb, g, asymmetric=asym)
        with pytest.raises(ValueError, match="w: a group's scale is not finite"):
            reference_jax.quantize_int4(jnp.asarray(wb.numpy()), g, asymmetric=asym)



def _bad_calls(mk, uint8, f16):
    """(kwargs override, error type, text the message must contain)."""
    return [
        (dict(group_size=48), ValueError, "group_size must be a power of two"),
        (dict(group_size=256), ValueError, "group_size=256 must divide the input dimension in=128"),
        (dict(group_size="32"), TypeError, "group_size must be an int"),
        (dict(packed_w=mk((8, 64), f16)), TypeError, "packed_w dtype must be uint8"),
        (dict(packed_w=mk((8, 32), uint8)), ValueError, "packed_w must have shape [out, in // 2]"),
        (dict(scales=mk((8, 4), f16)), ValueError, "scales must have shape [in // group_size, out]"),
        (dict(zeros=mk((4, 8), uint8)), TypeError, "zeros dtype must equal scales dtype"),
        (dict(x=mk((2, 127), f16)), ValueError, "must be even"),
        (dict(impl="cuda"), ValueError, "impl must be one of"),
    ]


def test_bad_input_torch():
    mk = lambda s, dt: torch.zeros(s, dtype=dt)  # noqa: E731
    good = dict(x=mk((2, 128), torch.float16), packed_w=mk((8, 64), torch.uint8),
                scales=mk((4, 8), torch.float16), zeros=None, group_size=32, impl="triton")
    before = LAUNCHES["_int4_matmul_kernel"]
    for override, err, text in _bad_calls(mk, torch.uint8, torch.float16):
        kw = {**good, **override}
        with pytest.raises(err, match=re.escape(text)):
            torch_ops.int4_matmul(kw.pop("x"), kw.pop("packed_w"), kw.pop("scales"), kw.pop("zeros"),
                                  kw.pop("group_size"), **kw)
    assert LAUNCHES["_int4_matmul_kernel"] == before  # refused before any launch


def test_bad_input_jax():
    import jax.numpy as jnp

    from kernels import jax_ops

    mk = lambda s, dt: jnp.zeros(s, dt)  # noqa: E731
    good = dict(x=mk((2, 128), jnp.float16), packed_w=mk((8, 64), jnp.uint8),
                scales=mk((4, 8), jnp.float16), zeros=None, group_size=32, impl="pallas")
    for override, err, text in _bad_calls(mk, jnp.uint8, jnp.float16):
        kw = {**good, **override}
        with pytest.raises(err, match=re.escape(text)):
            jax_ops.int4_matmul(kw.pop("x"), kw.pop("packed_w"), kw.pop("scales"), kw.pop("zeros"),
                                kw.pop("group_size"), **kw)


def test_blocks_and_split_plan_validate():
    with pytest.raises(ValueError, match="block_n=48"):
        Int4Blocks(16, 48, 64)
    with pytest.raises(ValueError, match="split_k"):
        PallasInt4Blocks(split_k=-1)
    with pytest.raises(ValueError, match="scale_after_dot needs bf16 or fp16 x"):
        w = torch.zeros(32, 64)
        int4_matmul_triton(torch.zeros(1, 64), *ref_torch.quantize_int4(w, 32)[:2], None, 32,
                           blocks=Int4Blocks(16, 32, 32, 1, 4, 1, scale_after_dot=True))
    # decode M=1 on 132 SMs, nano1 down_proj 9984 -> 2048: 32 column tiles x split-K, no empty split
    split, per = split_plan(1, 2048, 9984, 128, Int4Blocks(16, 64, 128, 0, 4, 4), 132)
    assert split > 1 and per % 128 == 0 and (split - 1) * per < 9984 <= split * per


@pytest.mark.parametrize("k,group,block_k,split_k", [(9984, 128, 128, 0), (384, 128, 64, 2), (2048, 128, 32, 7),
                                                     (4096, 64, 16, 5), (2048, 32, 32, 3)])
def test_preloaded_scale_rows_cover_every_split(k, group, block_k, split_k):
    from kernels.int4.triton_int4 import MAX_PRELOAD_GROUPS, preload_groups

    blocks = Int4Blocks(16, 64, block_k, split_k, 4, 4)
    split, per = split_plan(1, 2048, k, block_k, blocks, 132)
    rows = preload_groups(per, block_k, group, split, blocks)
    touched = max(len({c // group for c in range(s * per, min((s + 1) * per, k))}) for s in range(split))
    assert rows == 0 or touched <= rows <= MAX_PRELOAD_GROUPS  # 0: too many rows, loaded per step
    assert preload_groups(per, block_k, group, split, dataclasses.replace(blocks, preload_scales=False)) == 0


def test_pallas_lowers_to_triton_for_cuda():
    import jax
    import jax.numpy as jnp
    from jax import export

    from kernels.int4.pallas_int4 import default_blocks, int4_matmul_pallas

    call = "__gpu$xla.gpu.triton"
    for rows, zeros in ((1, True), (512, False)):  # decode split-K and prefill tiles
        def f(x, p, s, *z):
            return int4_matmul_pallas(x, p, s, z[0] if z else None, 128, interpret=False,
                                      blocks=default_blocks(x.shape[0], interpret=False))

        args = (jnp.ones((rows, 2048), jnp.bfloat16), jnp.ones((256, 1024), jnp.uint8),
                *[jnp.ones((16, 256), jnp.bfloat16)] * (2 if zeros else 1))
        exported = export.export(jax.jit(f), platforms=("cuda",),
                                 disabled_checks=[export.DisabledSafetyCheck.custom_call(call)])(*args)
        assert re.findall(r"custom_call @(\S+)\(", exported.mlir_module()).count(call) == 1


def test_benchmark_suite_checks_before_timing():
    from benchmarks.hardware import Device
    from benchmarks.suites.int4 import Int4BenchConfig, Int4Suite

    cfg = Int4BenchConfig(rows=[3], shapes=[[128, 40]], group_size=64, asymmetric=True,
                          torch_impls=["triton", "matmul"], jax_impls=["reference"])
    suite = Int4Suite(cfg, Device(kind="cpu", name="cpu"), timer_factory=None)
    for case, fw, impl in suite.entries():
        rec, timed = suite.check(case, fw, impl)
        assert timed is not None and rec["max_error"] <= rec["tolerance"], (fw, impl, rec)
        assert rec["bytes"] == (128 * 40 * 4 + 3 * 128 * 4 if impl == "matmul"
                                else 128 * 40 // 2 + 2 * 2 * 2 * 40 + 3 * 128 * 4)


# --- ahead-of-time compile for sm_90 (fresh process: tests/aot.py) ---------------------------

AOT_JOBS = {  # job -> (x dtype, rows, asymmetric, expect wgmma)
    "decode-m1-fp16": ("float16", 1, False, False),
    "decode-m16-bf16-asym": ("bfloat16", 16, True, False),
    "small-m64-bf16": ("bfloat16", 64, False, True),
    "prefill-fp16": ("float16", 4096, False, True),
    "prefill-bf16-asym": ("bfloat16", 4096, True, True),
    "decode-fp32": ("float32", 1, False, False),
}


# Spill audit entries (benchmarks.compile_report --sweep; nano1's layers differ only in the
# runtime N, K): fp32 prefill, group-32 asymmetric prefill on wgmma, and sm_80.
AOT_SWEEP = [("int4 matmul m4096 g128 fp32", 90), ("int4 matmul m4096 g32 asym bf16", 90),
             ("int4 matmul m16 g128 fp16", 80), ("int4 matmul m64 g32 asym bf16", 80),
             ("int4 matmul m4096 g128 bf16", 80), ("int4 matmul m4096 g32 asym fp32", 80)]


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory):
    from aot import compile_in_subprocess, sweep_jobs

    jobs = {job: {"module": "kernels.int4.triton_int4", "args": [f"torch.{dt}"],
                  "kwargs": {"rows": rows, "asymmetric": asym}, "cap": 90}
            for job, (dt, rows, asym, _) in AOT_JOBS.items()}
    sweep = sweep_jobs([(label, cap, None) for label, cap in AOT_SWEEP])
    from benchmarks.compile_report import blocks_json

    ptx = {job: {"module": "kernels.int4.triton_int4", "args": [f"torch.{dt}"],
                 "kwargs": {"rows": 1, "asymmetric": asym, "blocks": blocks_json(PTX_BLOCKS)}, "cap": cap}
           for job, (dt, asym, cap) in AOT_PTX_JOBS.items()}
    return compile_in_subprocess({**jobs, **sweep, **ptx}, tmp_path_factory.mktemp("int4_aot"))


# the inline-PTX nibbles (scale after the dot): centered (symmetric) and MAGIC + q (asymmetric)
PTX_BLOCKS = Int4Blocks(16, 64, 128, 0, 4, 4, scale_after_dot=True)
AOT_PTX_JOBS = {"ptx-decode-bf16-sm90": ("bfloat16", False, 90), "ptx-decode-fp16-asym-sm90": ("float16", True, 90),
                "ptx-decode-bf16-asym-sm80": ("bfloat16", True, 80), "ptx-decode-fp16-sm80": ("float16", False, 80)}


@pytest.mark.parametrize("job", list(AOT_PTX_JOBS))
def test_ptx_nibbles_assemble_without_spills(aot_report, job):
    from aot import assert_compiled_clean

    report = aot_report[job]
    assert "error" not in report, report.get("error")
    assert_compiled_clean(report["_int4_matmul_kernel"], job, cap=AOT_PTX_JOBS[job][2])


@pytest.mark.parametrize("job", list(AOT_JOBS))
def test_sm90_compiles_without_spills(aot_report, job):
    from aot import assert_compiled_clean

    report = aot_report[job]
    assert "error" not in report, report.get("error")
    assert_compiled_clean(report["_int4_matmul_kernel"], job, wgmma=AOT_JOBS[job][3])


@pytest.mark.parametrize("label,cap", AOT_SWEEP)
def test_default_configs_across_dtypes_and_targets_without_spills(aot_report, label, cap):
    from aot import assert_compiled_clean

    report = aot_report[f"{label}|sm{cap}"]
    assert "error" not in report, report.get("error")
    wgmma = cap == 90 and "m4096" in label and "fp32" not in label  # prefill keeps wgmma
    assert_compiled_clean(report["_int4_matmul_kernel"], f"{label} sm{cap}", cap=cap, wgmma=wgmma)


def _run_ptx(asm: str, word: int) -> list[int]:
    """A reference semantics of the few PTX instructions ``_nibbles_ptx`` emits (prmt, shr,
    lop3, mov, packed fma on bf16x2 / f16x2) run on one input register $4 -> [$0..$3]."""
    def halves(v, kind):
        h = [(v >> 16 * i) & 0xFFFF for i in (0, 1)]
        if kind == "bf16x2":
            return [float(np.array([x << 16], np.uint32).view(np.float32)[0]) for x in h]
        return [float(np.array([x], np.uint16).view(np.float16)[0]) for x in h]

    def pack(vals, kind):
        if kind == "bf16x2":  # round to nearest even from float32 bits
            bits = [int(np.array([v], np.float32).view(np.uint32)[0]) for v in vals]
            h = [((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF for b in bits]
        else:
            h = [int(np.array([v], np.float16).view(np.uint16)[0]) for v in vals]
        return h[0] | h[1] << 16

    regs = {"$4": word}
    val = lambda t: regs[t] if t in regs else int(t, 0)  # noqa: E731
    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        d, *src = [a.strip() for a in args.split(",")]
        if op == "prmt.b32":
            pool = [(val(src[0]) >> 8 * i) & 0xFF for i in range(4)] + [(val(src[1]) >> 8 * i) & 0xFF for i in range(4)]
            sel = val(src[2])
            regs[d] = sum(pool[(sel >> 4 * i) & 0x7] << 8 * i for i in range(4))  # no sign-replicate mode used
        elif op == "shr.u32":
            regs[d] = val(src[0]) >> val(src[1])
        elif op == "lop3.b32":
            a, b, c, lut = (val(x) for x in src)
            regs[d] = sum(((lut >> ((a >> i & 1) << 2 | (b >> i & 1) << 1 | (c >> i & 1))) & 1) << i for i in range(32))
        elif op == "mov.b32":
            regs[d] = val(src[0])
        elif op in ("fma.rn.bf16x2", "fma.rn.f16x2"):
            kind = op.split(".")[-1]
            a, b, c = (halves(val(x), kind) for x in src)
            regs[d] = pack([a[i] * b[i] + c[i] for i in (0, 1)], kind)
        else:
            raise AssertionError(f"unexpected PTX instruction {op}")
        regs[d] &= 0xFFFFFFFF
    return [regs[f"${i}"] for i in range(4)]


@pytest.mark.parametrize("magic_bits,kind", [(0x4300, "bf16x2"), (0x6400, "f16x2")])
@pytest.mark.parametrize("center", [False, True], ids=["magic-plus-q", "q-minus-8"])
def test_nibble_ptx_gives_each_byte_its_codes(magic_bits, kind, center):
    """Triton packs a pack=4 call's four i8 inputs into one register (element j = byte j) and
    takes each 16-bit output register's low half as the lower element: output $0 must hold the
    low nibbles of elements 0 and 1, $1 of 2 and 3, $2 and $3 the high nibbles, as the values
    MAGIC + q (or q - 8). Every byte value is checked in every position."""
    from kernels.int4.triton_kernels import _nibbles_ptx

    asm = _nibbles_ptx(magic_bits, center).value
    magic = 128.0 if magic_bits == 0x4300 else 1024.0
    rng = np.random.default_rng(0)
    for word_bytes in [[b, (b * 7 + 3) % 256, 255 - b, (b * 13) % 256] for b in range(256)] + [rng.integers(0, 256, 4)]:
        word = sum(int(b) << 8 * i for i, b in enumerate(word_bytes))
        out = _run_ptx(asm, word)
        got = []
        for reg in out:
            h = [(reg >> 16 * i) & 0xFFFF for i in (0, 1)]
            got += [float(np.array([x << 16], np.uint32).view(np.float32)[0]) if kind == "bf16x2"
                    else float(np.array([x], np.uint16).view(np.float16)[0]) for x in h]
        lo = [b & 0xF for b in word_bytes]
        hi = [b >> 4 for b in word_bytes]
        want = [float(q) + (-8.0 if center else magic) for q in lo + hi]
        assert got == want, (word_bytes, got, want)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_autotune_picks_a_candidate_once_per_problem_class(rng, dtype):
    """blocks="autotune" times the candidates on the first call of a class, records every
    candidate's time, reuses the pick (no more timing) and matches float64 either way."""
    from kernels.int4 import triton_autotune

    x, packed, scales, zeros, truth = _problem(rng, (4, 256), 40, 64, True, dtype)
    triton_autotune.TUNING.clear()
    y = torch_ops.int4_matmul(x, packed, scales, zeros, 64, blocks="autotune")
    [(key, entry)] = triton_autotune.TUNING.items()
    assert len(entry["times_ms"]) == 2 and all(ms is not None for _, ms, _ in entry["times_ms"])
    assert entry["blocks"] in [b for b, _, _ in entry["times_ms"]]
    base = torch_ops.int4_matmul(x, packed, scales, zeros, 64, impl="reference")
    assert_close(y, truth, base, x.dtype, what=f"autotuned {dtype}")
    before = LAUNCHES["_int4_matmul_kernel"]
    again = torch_ops.int4_matmul(x[:3], packed, scales, zeros, 64, blocks="autotune")  # 3 rows: same class
    assert LAUNCHES["_int4_matmul_kernel"] == before + 1 and len(triton_autotune.TUNING) == 1
    assert torch.equal(again, torch_ops.int4_matmul(x[:3], packed, scales, zeros, 64, blocks=entry["blocks"]))
    assert triton_autotune.tuning_summary()[0]["pick"] == repr(entry["blocks"])


def test_blocks_option_is_checked():
    w = torch.zeros(32, 64)
    packed, scales, _ = ref_torch.quantize_int4(w, 32)
    with pytest.raises(ValueError, match="only impl='triton' takes tile sizes"):
        torch_ops.int4_matmul(torch.zeros(1, 64), packed, scales, None, 32, impl="reference", blocks="autotune")
    with pytest.raises(ValueError, match="blocks must be None, an Int4Blocks or 'autotune', got 'fast'"):
        torch_ops.int4_matmul(torch.zeros(1, 64), packed, scales, None, 32, blocks="fast")


def test_autotune_skips_candidates_that_fail_to_launch_or_time():
    """kernels._autotune.fastest: a candidate whose launch or timing raises is recorded with
    its reason and skipped; no candidate running is an error naming the problem."""
    from kernels._autotune import fastest

    def launch(b):
        if b == "bad-launch":
            raise RuntimeError("ptxas crashed")
        return b

    def timer(fn):
        if fn() == "bad-timing":
            raise RuntimeError("capture failed")
        return {"slow": 2.0, "fast": 1.0}[fn()]

    tuning = {}
    assert fastest("k", ["slow", "bad-launch", "bad-timing", "fast"], launch, tuning, timer=timer) == "fast"
    reasons = {b: why for b, ms, why in tuning["k"]["times_ms"]}
    assert reasons["slow"] is None and "ptxas crashed" in reasons["bad-launch"]
    assert reasons["bad-timing"].startswith("timing: RuntimeError: capture failed")
    with pytest.raises(RuntimeError, match="no candidate runs this problem"):
        fastest("k2", ["bad-launch"], launch, tuning, timer=timer)


def test_autotune_skips_candidates_whose_output_disagrees():
    """kernels._autotune.fastest: timing alone never picks a wrong tile. A candidate whose
    output differs from the first running candidate's beyond twice the benchmark tolerance,
    or has NaN where it has none, is skipped with the reason; equal infinities agree (lse)."""
    from kernels._autotune import disagreement, fastest

    ref = torch.tensor([1.0, -2.0, float("inf")])
    outs = {"default": (ref, torch.ones(2, dtype=torch.bfloat16)),
            "close": (ref + 1e-5, torch.full((2,), 1.0625, dtype=torch.bfloat16)),
            "wrong-fast": (ref * 1.01, torch.ones(2, dtype=torch.bfloat16)),
            "nan": (torch.tensor([1.0, float("nan"), float("inf")]), torch.ones(2, dtype=torch.bfloat16))}
    times = {"default": 3.0, "close": 2.0, "wrong-fast": 1.0, "nan": 0.5}
    tuning = {}
    pick = fastest("k", list(outs), lambda b: outs[b], tuning, timer=lambda fn: times[next(
        b for b, o in outs.items() if o is fn())])
    assert pick == "close"
    reasons = {b: why for b, ms, why in tuning["k"]["times_ms"]}
    assert reasons["default"] is None and reasons["close"] is None
    assert reasons["wrong-fast"].startswith("disagrees: output 0 differs")
    assert "NaN" in reasons["nan"]
    assert disagreement(ref, torch.zeros(2)).startswith("output 0 has shape (2,)")


def test_sm90_decode_default_takes_the_ptx_nibbles_with_per_step_scales():
    """sm_90, 16-bit, <= 16 rows: the scale-after-dot tiles with per-step scale rows (timed
    1.4-1.6x faster than the shift-and-mask tiles at nano1's wide shapes on an H200); sm_80,
    fp32, more rows and the interpreter keep their tiles; the old default stays a candidate."""
    from kernels.int4 import triton_int4

    for rows in (1, 4, 16):
        for dt in (torch.bfloat16, torch.float16):
            b = triton_int4.default_blocks(rows, dt, capability=(9, 0))
            assert (b.scale_after_dot, b.preload_scales) == (True, False)
            assert Int4Blocks(16, 64, 128, 0, 4, 4) in triton_int4.candidate_blocks(rows, dt, capability=(9, 0))
    assert not triton_int4.default_blocks(1, torch.bfloat16, capability=(8, 0)).scale_after_dot
    assert not triton_int4.default_blocks(1, torch.float32, capability=(9, 0)).scale_after_dot
    assert not triton_int4.default_blocks(64, torch.bfloat16, capability=(9, 0)).scale_after_dot
    assert not triton_int4.default_blocks(1, torch.bfloat16, capability=None).scale_after_dot
