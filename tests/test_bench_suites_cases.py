"""Cases the benchmark suites' own tests left open (benchmarks/suites/*.py, mutation audit).

Each test pins one thing a results file or report prints: a suite's case grid (attention's
tokens-per-length batch and forward-only long lengths, decode's head counts, int4's in/out
order, encoder_kernels' divisible image sizes, the model's decode lengths), its FLOP and
byte counts (int4's 2 M K N, patch_embed's 3x backward, log_mel's frames and fp32 output,
rope / gated-GELU backward bytes), the throughput units each run() derives from the timing
(checked against a fake timer's fixed median), the correctness gate before timing (a NaN
output is reported failed and never timed; every compared tensor, not only the output,
counts), the skip rules (TMA below sm_90, mem-efficient SDPA without a GQA path, CUDA-only
backends, pages that do not divide the cache), and the peer ratios (per framework, the
steady-state ratio against the fastest peer). Kernels never run at a size that matters:
where only the arithmetic is under test, the check is stubbed out.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.hardware import Device
from benchmarks.suites.common import Skip
from benchmarks.timing import Timing

CPU = Device(kind="cpu", name="cpu")
MEDIAN_S = 2e-3  # the fake timer's median: every derived rate below is computed from it


class FakeTimers:
    """A timer factory whose timers call the timed function once and report MEDIAN_S; it
    records the factory's keyword arguments and every call (``steady`` too)."""

    def __init__(self):
        self.made, self.timed, self.steady_calls = [], 0, 0

    def __call__(self, framework=None, **kw):
        self.made.append(kw)
        outer = self

        class _T:
            def __call__(self, fn):
                fn()
                outer.timed += 1
                return Timing(median_s=MEDIAN_S, p20_s=MEDIAN_S, p80_s=MEDIAN_S, min_s=MEDIAN_S, runs=1,
                              method="fake")

            def steady(self, fns):
                outer.steady_calls += 1
                return Timing(median_s=MEDIAN_S, p20_s=MEDIAN_S, p80_s=MEDIAN_S, min_s=MEDIAN_S, runs=1,
                              method="fake steady")

        return _T()


def _nan_like(shape):
    return torch.full(shape, float("nan"))


# ---- common.py ----------------------------------------------------------------------------

def test_rel_err_divides_by_the_reference_magnitude_only_above_one(rng):
    """rel_err = max|x - ref| / max(1, max|ref|): an absolute error for small references (a
    relative one would blow up near zero), relative for large ones."""
    from benchmarks.suites.common import rel_err

    ref = 0.25 * rng.standard_normal(64)
    ref /= max(1.0, 2 * np.abs(ref).max())  # max|ref| <= 0.5
    x = ref + 1e-3 * rng.standard_normal(64)
    assert rel_err(x, ref) == pytest.approx(np.abs(x - ref).max())
    big = 100.0 * ref / np.abs(ref).max()
    assert rel_err(big + (x - ref), big) == pytest.approx(np.abs(x - ref).max() / 100.0)


def test_peer_ratios_are_per_framework_and_steady_against_the_fastest_peer():
    """speedup_vs_peer compares a row with its own framework's peers only (a fast XLA row does
    not set torch's baseline); the steady ratio is the fastest peer's steady time / the row's;
    interpret-mode rows get no plain ratio."""
    from benchmarks.suites.common import add_peer_ratios

    def row(fw, impl, ms, steady_ms=None, mode="eager"):
        r = {"case": "c", "framework": fw, "impl": impl, "status": "ok", "median_ms": ms, "mode": mode}
        if steady_ms is not None:
            r["steady"] = {"median_ms": steady_ms}
        return r

    recs = [row("torch", "sdpa", 4.0, 3.0), row("torch", "sdpa-math", 8.0, 6.0), row("torch", "triton", 2.0, 1.0),
            row("jax", "xla", 0.5, 0.25), row("jax", "pallas", 1.0, 0.5), row("torch", "triton", 2.0, mode="interpret")]
    add_peer_ratios(recs, {"torch": ("sdpa",), "jax": ("xla",)})
    assert recs[2]["speedup_vs_peer"] == pytest.approx(2.0)  # 4 ms (fastest sdpa) / 2 ms
    assert recs[4]["speedup_vs_peer"] == pytest.approx(0.5)  # 0.5 ms (xla) / 1 ms
    assert recs[2]["steady"]["speedup_vs_peer"] == pytest.approx(3.0)  # 3 ms (fastest steady sdpa) / 1 ms
    assert recs[1]["steady"]["speedup_vs_peer"] == pytest.approx(0.5)
    assert recs[4]["steady"]["speedup_vs_peer"] == pytest.approx(0.5)
    assert "speedup_vs_peer" not in recs[5]


def test_steady_copies_stay_between_two_and_the_byte_budget():
    """steady_copies: ``calls`` input sets, fewer when the copies would pass STEADY_BYTES, and
    never fewer than 2 (one set would time the same warm inputs again)."""
    from benchmarks.suites.common import STEADY_BYTES, steady_copies

    assert steady_copies(1000, 8) == 8
    assert steady_copies(STEADY_BYTES // 4, 100) == 4
    assert steady_copies(10 * STEADY_BYTES, 8) == 2


# ---- attention.py -------------------------------------------------------------------------

def _att_cfg(**kw):
    from omegaconf import OmegaConf

    from benchmarks import config

    base = dict(seq_lens=[16], kv_heads=[1], causal=[True], directions=["fwd"], head_dim=16, heads=2,
                torch_impls=["sdpa"], jax_impls=[])
    return OmegaConf.structured(config.AttentionBenchConfig(**{**base, **kw}))


def test_attention_cases_batch_from_tokens_and_long_lengths_forward_only():
    """tokens > 0: batch = tokens // seq, at least 1; max_bwd_seq: longer lengths run the
    forward only (the max itself keeps its backward); ids name the head grouping."""
    from benchmarks.suites.attention import Case, cases

    got = cases(_att_cfg(seq_lens=[32, 64, 128], tokens=64, max_bwd_seq=64, directions=["fwd", "fwd+bwd"]))
    assert [(c.seq, c.batch, c.direction) for c in got] == [
        (32, 2, "fwd"), (32, 2, "fwd+bwd"), (64, 1, "fwd"), (64, 1, "fwd+bwd"), (128, 1, "fwd")]
    ids = [Case(1, 8, 4, kvh, 16, True, "float32", "fwd").id.split()[0] for kvh in (1, 2, 4)]
    assert ids == ["mqa4/1", "gqa4/2", "mha4/4"]


def test_attention_nan_output_is_failed_and_never_timed(monkeypatch):
    """A kernel returning NaN fails the check (NaN compares False with the tolerance)."""
    from benchmarks.suites import attention as A

    monkeypatch.setattr(A, "torch_impl", lambda name, kind: ((lambda q, k, v, causal: _nan_like(q.shape)), "eager"))
    timers = FakeTimers()
    suite = A.AttentionSuite(_att_cfg(), CPU, timers)
    [(case, fw, impl)] = suite.entries()
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "failed" and timers.timed == 0


def test_attention_rates_come_from_the_median_in_tflops_and_gb():
    """tflops = FLOPs / median / 1e12, gbps = bytes / median / 1e9 (and the record carries both
    counts), for a real sdpa row that passed its check."""
    from benchmarks.suites.attention import AttentionSuite

    suite = AttentionSuite(_att_cfg(directions=["fwd+bwd"]), CPU, FakeTimers())
    [(case, fw, impl)] = suite.entries()
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "ok" and rec["max_error"] <= rec["tolerance"]
    assert rec["tflops"] == pytest.approx(case.flops() / MEDIAN_S / 1e12)
    assert rec["gbps"] == pytest.approx(case.bytes() / MEDIAN_S / 1e9)
    assert rec["flops"] == case.flops() and rec["bytes"] == case.bytes()


def test_attention_backward_check_compares_dv_too(monkeypatch):
    """fwd+bwd: o, dq, dk and dv are each compared; a kernel whose dv alone is off fails."""
    from benchmarks.suites.attention import AttentionSuite

    suite = AttentionSuite(_att_cfg(directions=["fwd+bwd"], kv_heads=[2]), CPU, FakeTimers())
    [(case, fw, impl)] = suite.entries()
    real = AttentionSuite._torch_calls

    def dv_off(fn, case, q, k, v, do, m):
        got, step = real(fn, case, q, k, v, do, m)
        return (*got[:3], got[3] * 1.01), step

    monkeypatch.setattr(AttentionSuite, "_torch_calls", staticmethod(dv_off))
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "failed" and rec["max_error"] > rec["tolerance"]


def test_attention_reference_rows_skip_over_the_score_memory_cap(monkeypatch):
    """The O(S^2) references (eager and compiled) skip when B*H*S^2 fp32 scores (three
    such for fwd+bwd) pass REFERENCE_MAX_GB, before any input is made; under the cap they go on."""
    from benchmarks.suites import attention as A
    from benchmarks.suites.attention import Case

    fwd, both = (Case(1, 16, 1, 1, 16, True, "float32", d) for d in ("fwd", "fwd+bwd"))
    monkeypatch.setattr(A, "REFERENCE_MAX_GB", 2 * 16 * 16 * 4 / 1e9)  # between 1x and 3x the scores
    suite = A.AttentionSuite(_att_cfg(), CPU, FakeTimers())

    class Built(Exception):
        pass

    def no_inputs(case):
        raise Built

    monkeypatch.setattr(suite, "_inputs", no_inputs)
    for impl in ("reference", "reference-compiled"):
        with pytest.raises(Skip, match="materializes"):
            suite.check(both, "torch", impl)
        with pytest.raises(Built):
            suite.check(fwd, "torch", impl)


def test_attention_torch_impl_skip_rules(monkeypatch):
    """triton-tma below sm_90 skips naming the capability; CUDA-only SDPA backends skip on a
    CPU but sdpa-math runs there; mem-efficient SDPA skips grouped-query inputs (no GQA path)."""
    from benchmarks.suites.attention import torch_impl
    from kernels.attention import triton_attention as ta

    q = torch.randn(1, 16, 2, 16)
    kv = torch.randn(1, 16, 1, 16)
    monkeypatch.setattr(ta, "_capability", lambda t: (8, 9))
    fn, _ = torch_impl("triton-tma", "cpu")
    with pytest.raises(Skip, match="sm_89"):
        fn(q, kv, kv, True)
    monkeypatch.setattr(ta, "_capability", lambda t: (8, 0))
    with pytest.raises(Skip, match="sm_90"):
        fn(q, kv, kv, True)
    for name in ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn"):
        with pytest.raises(Skip, match="needs a CUDA device"):
            torch_impl(name, "cpu")
    fn, mode = torch_impl("sdpa-math", "cpu")
    assert mode == "eager" and fn(q, q, q, False).shape == q.shape
    eff, _ = torch_impl("sdpa-efficient", "cuda")
    with pytest.raises(Skip, match="grouped-query"):
        eff(q, kv, kv, True)


# ---- decode.py ----------------------------------------------------------------------------

def _dec_cfg(**kw):
    from omegaconf import OmegaConf

    from benchmarks import config

    base = dict(batches=[2], cache_lens=[32], heads=4, kv_heads=[2], head_dim=16, torch_impls=["sdpa"],
                jax_impls=[])
    return OmegaConf.structured(config.DecodeBenchConfig(**{**base, **kw}))


def test_decode_cases_keep_query_and_kv_heads_and_count_fp32_bytes():
    """Each case has the config's query heads and one of its kv head counts; float32 K and V
    are 4 bytes an element (bf16 / fp16 2)."""
    from benchmarks.suites.decode import Case, cases

    got = cases(_dec_cfg(heads=8, kv_heads=[1, 2], batches=[1, 3], cache_lens=[64]))
    assert {(c.batch, c.heads, c.kv_heads) for c in got} == {(1, 8, 1), (1, 8, 2), (3, 8, 1), (3, 8, 2)}
    assert [c.id.split()[0] for c in got] == ["mqa8/1", "gqa8/2"] * 2
    assert Case(3, 101, 8, 2, 64, "float32").kv_bytes() == 2 * 3 * 101 * 2 * 64 * 4
    assert Case(3, 101, 8, 2, 64, "float16").kv_bytes() == 2 * 3 * 101 * 2 * 64 * 2


def test_decode_rates_and_timer_settings():
    """gbps = K/V bytes / median / 1e9; cuda_graphs in the config makes every torch row a
    graph replay (the timer is asked for one)."""
    from benchmarks.suites.decode import DecodeSuite

    timers = FakeTimers()
    suite = DecodeSuite(_dec_cfg(cuda_graphs=True), CPU, timers)
    [(case, fw, impl)] = suite.entries()
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "ok" and rec["bytes"] == case.kv_bytes()
    assert rec["gbps"] == pytest.approx(case.kv_bytes() / MEDIAN_S / 1e9)
    assert timers.made[-1].get("cuda_graphs") is True


def test_decode_nan_output_is_failed_and_never_timed(monkeypatch):
    from benchmarks.suites.decode import DecodeSuite

    timers = FakeTimers()
    suite = DecodeSuite(_dec_cfg(), CPU, timers)
    monkeypatch.setattr(suite, "_torch_fn", lambda impl: ((lambda q, k, v, L, *bt, check=True: _nan_like(q.shape)),
                                                          "eager"))
    [(case, fw, impl)] = suite.entries()
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "failed" and timers.timed == 0


def test_decode_skips_graph_rows_off_cuda_and_pages_that_do_not_divide_the_cache():
    from benchmarks.suites.decode import DecodeSuite

    suite = DecodeSuite(_dec_cfg(page_size=24), CPU, FakeTimers())
    with pytest.raises(Skip, match="CUDA-graph"):
        suite._torch_fn("triton-graph")
    [(case, _, _)] = suite.entries()
    with pytest.raises(Skip, match="not a multiple of page_size 24"):
        suite._paged(case)


def test_decode_tpu_interpret_rows_past_the_first_cases_skip_before_any_work(monkeypatch):
    """pallas_tpu on a CPU: cases from index tpu_interpret_cases on are skipped (the first
    ones run); the skip comes before the case's inputs are made."""
    from benchmarks.suites.decode import DecodeSuite

    suite = DecodeSuite(_dec_cfg(kv_heads=[1, 2, 4], torch_impls=[], jax_impls=["pallas_tpu"], tpu_interpret_cases=2),
                        CPU, FakeTimers())

    class Built(Exception):
        pass

    def no_inputs(case):
        raise Built

    monkeypatch.setattr(suite, "_inputs", no_inputs)
    entries = list(suite.entries())
    for case, fw, impl in entries[:2]:
        with pytest.raises(Built):
            suite.run(case, fw, impl)
    with pytest.raises(Skip, match="first 2 case"):
        suite.run(*entries[2])


def test_decode_interpreted_rows_get_no_steady_timing():
    """steady_calls: an interpret-mode row (triton on a CPU) is timed once, never as the
    back-to-back steady calls (that would time the interpreter)."""
    from benchmarks.suites.decode import DecodeSuite

    timers = FakeTimers()
    suite = DecodeSuite(_dec_cfg(torch_impls=["triton"], steady_calls=3, batches=[1], heads=2, kv_heads=[1]),
                        CPU, timers)
    [(case, fw, impl)] = suite.entries()
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "ok" and rec["mode"] == "interpret"
    assert "steady" not in rec and timers.steady_calls == 0


def test_decode_pdl_row_is_skipped_off_sm90_and_runs_the_default_tiles_with_pdl(monkeypatch):
    """triton-pdl: on a CPU the row is skipped saying why; given an sm_90 device (faked) its
    function calls the public decode with the device's default tiles and pdl set, lengths
    checked only when asked. Catches: the row timing plain launches, or other tiles."""
    import dataclasses

    import torch

    from benchmarks.suites import decode as suite_mod
    from benchmarks.suites.common import Skip
    from kernels import torch_ops
    from kernels.decode import triton_decode

    suite = suite_mod.DecodeSuite(_dec_cfg(torch_impls=["triton-pdl"]), CPU, FakeTimers())
    with pytest.raises(Skip, match="programmatic dependent launch needs an sm_90"):
        suite._torch_fn("triton-pdl")
    calls = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch_ops, "decode_attention", lambda *a, **kw: calls.append(kw))
    q, k, v = torch.zeros(1, 8, 128, dtype=torch.bfloat16), torch.zeros(1, 4096, 1, 128), torch.zeros(1, 4096, 1, 128)
    suite_mod.DecodeSuite._pdl_fn()(q, k, v, torch.tensor([4096]), check=False)
    want = dataclasses.replace(triton_decode.default_blocks(128, torch.bfloat16, 4096, capability=(9, 0)), pdl=True)
    assert calls == [dict(block_table=None, impl="triton", check_lengths=False, blocks=want)]
    monkeypatch.setattr("kernels._autotune.excluded_blocks", lambda: {repr(want): "the canary process died"})
    with pytest.raises(Skip, match="the canary excluded .*pdl=True.*: the canary process died"):
        suite_mod.DecodeSuite._pdl_fn()(q, k, v, torch.tensor([4096]))
    assert len(calls) == 1


def test_decode_blocks_argument_is_for_triton_only():
    """torch_ops.decode_attention(blocks=...): a TritonDecodeBlocks reaches the Triton kernel (the
    same output as its defaults here); another impl or another type is refused by name."""
    import torch

    from kernels import torch_ops
    from kernels.decode.triton_decode import TritonDecodeBlocks

    q, k, v = torch.randn(1, 4, 16), torch.randn(1, 32, 2, 16), torch.randn(1, 32, 2, 16)
    lens = torch.tensor([20])
    got = torch_ops.decode_attention(q, k, v, lens, blocks=TritonDecodeBlocks(16, 4, 1))
    assert torch.allclose(got, torch_ops.decode_attention(q, k, v, lens, impl="reference"), atol=1e-5)
    with pytest.raises(ValueError, match="blocks: only impl='triton' takes tile sizes"):
        torch_ops.decode_attention(q, k, v, lens, impl="sdpa", blocks=TritonDecodeBlocks())
    with pytest.raises(ValueError, match="blocks must be None or a TritonDecodeBlocks, got 'fast'"):
        torch_ops.decode_attention(q, k, v, lens, blocks="fast")


# ---- int4.py ------------------------------------------------------------------------------

def _int4_cfg(**kw):
    from benchmarks.suites.int4 import Int4BenchConfig

    base = dict(rows=[2], shapes=[[256, 64]], group_size=128, torch_impls=["matmul"], jax_impls=[])
    return Int4BenchConfig(**{**base, **kw})


def test_int4_cases_flops_and_ids():
    """shapes are [in, out]; FLOPs 2 M K N; rows up to 16 are decode, more prefill."""
    from benchmarks.suites.int4 import Case, cases

    [c] = cases(_int4_cfg(rows=[3], shapes=[[256, 128]]))
    assert (c.in_features, c.out_features) == (256, 128)
    assert c.flops() == 2 * 3 * 256 * 128
    assert Case(16, 256, 128, 128, False, "float32").id.startswith("decode m16 256->128")
    assert Case(17, 256, 128, 128, False, "float32").id.startswith("prefill m17")


def test_int4_rates_use_each_rows_own_bytes_and_the_graph_setting():
    """The matmul peer's gbps counts the dense weights it reads (not the packed ones); tflops =
    2 M K N / median / 1e12; cuda_graphs reaches the timer."""
    from benchmarks.suites.int4 import Int4Suite

    timers = FakeTimers()
    suite = Int4Suite(_int4_cfg(cuda_graphs=True), CPU, timers)
    [(case, fw, impl)] = suite.entries()
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "ok" and rec["bytes"] == 4 * (256 * 64 + 2 * 256)
    assert rec["gbps"] == pytest.approx(rec["bytes"] / MEDIAN_S / 1e9)
    assert rec["tflops"] == pytest.approx(2 * 2 * 256 * 64 / MEDIAN_S / 1e12)
    assert timers.made[-1].get("cuda_graphs") is True


def test_int4_nan_output_is_failed_and_never_timed(monkeypatch):
    from benchmarks.suites.int4 import Int4Suite

    timers = FakeTimers()
    suite = Int4Suite(_int4_cfg(), CPU, timers)
    monkeypatch.setattr(suite, "_torch_fn", lambda impl, case: (
        (lambda x, p, s, z, w: _nan_like((x.shape[0], case.out_features))), "eager"))
    [(case, fw, impl)] = suite.entries()
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "failed" and timers.timed == 0


# ---- elementwise.py -----------------------------------------------------------------------

def test_elementwise_bytes_of_rope_and_gated_gelu():
    """rope reads x and writes y each way ([rows, hidden] as hidden / 128 heads of 128);
    gated GELU reads gate and up and writes y forward, reads dy, gate, up and writes both
    gradients backward; layer_norm moves what rms_norm does."""
    from benchmarks.suites.elementwise import Case

    rows, hidden, el = 6, 256, 2
    n = rows * hidden * el
    assert Case("rope", rows, hidden, "bfloat16", "fwd").bytes() == 2 * n
    assert Case("rope", rows, hidden, "bfloat16", "fwd+bwd").bytes() == 4 * n
    assert Case("gated_gelu", rows, hidden, "bfloat16", "fwd").bytes() == 3 * n
    assert Case("gated_gelu", rows, hidden, "bfloat16", "fwd+bwd").bytes() == 3 * n + 5 * n
    assert Case("layer_norm", rows, hidden, "bfloat16", "fwd+bwd").bytes() == 2 * n + 3 * n


def test_elementwise_torch_error_is_rel_err_on_small_references(rng):
    """The torch rows' on-device error is common.rel_err's: absolute below max|ref| = 1."""
    from benchmarks.suites.common import rel_err
    from benchmarks.suites.elementwise import _rel_err_torch

    ref = 0.1 * rng.standard_normal((8, 16))
    x = ref + 1e-3 * rng.standard_normal((8, 16))
    assert _rel_err_torch(torch.from_numpy(x), torch.from_numpy(ref)) == pytest.approx(rel_err(x, ref))
    assert _rel_err_torch(torch.from_numpy(50 * x), torch.from_numpy(50 * ref)) == pytest.approx(
        rel_err(50 * x, 50 * ref))


def _ew_suite(timers, **kw):
    from benchmarks.suites.elementwise import ElementwiseBenchConfig, ElementwiseSuite

    base = dict(ops=["rms_norm"], shapes=[[16, 64]], directions=["fwd+bwd"], torch_impls=["reference"], jax_impls=[])
    return ElementwiseSuite(ElementwiseBenchConfig(**{**base, **kw}), CPU, timers)


def test_elementwise_gradients_are_checked_and_nan_is_failed(monkeypatch):
    """fwd+bwd: a row whose output is right but one input gradient 1 % off fails; a NaN
    output fails; neither is timed. The compiled impl's mode says torch.compile."""
    from benchmarks.suites import elementwise as ew

    timers = FakeTimers()
    suite = _ew_suite(timers)
    [(case, fw, impl)] = suite.entries()
    real = ew.ElementwiseSuite._torch

    def grad_off(self, case, impl, tensors):
        fn, mode, got, step = real(self, case, impl, tensors)
        return fn, mode, [got[0], got[1] * 1.01, *got[2:]], step

    monkeypatch.setattr(ew.ElementwiseSuite, "_torch", grad_off)
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "failed" and rec["max_error"] > rec["tolerance"]

    def nan_out(self, case, impl, tensors):
        fn, mode, got, step = real(self, case, impl, tensors)
        return fn, mode, [torch.full_like(got[0], float("nan")), *got[1:]], step

    monkeypatch.setattr(ew.ElementwiseSuite, "_torch", nan_out)
    assert suite.run(case, fw, impl)["status"] == "failed" and timers.timed == 0
    monkeypatch.setattr(ew.ElementwiseSuite, "_torch", real)
    real_call = ew._call
    monkeypatch.setattr(ew, "_call", lambda ops, op, impl: real_call(ops, op, "reference"))  # no compile here
    rec, _ = suite.check(case, "torch", "compiled")
    assert rec["mode"] == "torch.compile"


# ---- encoder_kernels.py -------------------------------------------------------------------

def test_encoder_kernel_cases_flops_frames_and_bytes():
    """patch_embed FLOPs 2 B N K D (x3 with the backward) over (size / patch)^2 patches, only
    for sizes the patch divides; log_mel frames are those of the reference (25 ms windows,
    10 ms hop at 16 kHz) and its bytes read the waveform in the dtype and write fp32."""
    from benchmarks.suites.encoder_kernels import EncoderKernelsBenchConfig, MelCase, PatchCase, cases
    from kernels.audio.reference import log_mel_reference

    p = PatchCase(2, 48, 3, 16, 32, "float32", "fwd")
    assert p.patches == 9 and p.flops() == 2 * 2 * 9 * 16 * 16 * 3 * 32
    assert PatchCase(2, 48, 3, 16, 32, "float32", "fwd+bwd").flops() == 3 * p.flops()
    for samples in (400, 559, 560, 4000):
        frames = log_mel_reference(torch.zeros(1, samples), n_mels=16).shape[1]
        assert MelCase(1, samples, 16, "float32").frames == frames, samples
    m = MelCase(2, 4000, 80, "bfloat16")
    assert m.bytes(2) == 2 * 4000 * 2 + 2 * m.frames * 80 * 4
    got = cases(EncoderKernelsBenchConfig(image_sizes=[32, 40], patch_sizes=[16], dims=[8], patch_directions=["fwd"]))
    assert [c.size for c in got if c.op == "patch_embed"] == [32]


def test_encoder_kernels_rates_nan_and_cublas_backward_skip(monkeypatch):
    """log_mel: audio-seconds/s counts every clip of the batch; a NaN output is failed and not
    timed; the cublas GEMM yardstick has no backward row."""
    from benchmarks.suites import encoder_kernels as ek

    timers = FakeTimers()
    suite = ek.EncoderKernelsSuite(ek.EncoderKernelsBenchConfig(), CPU, timers)
    mel = ek.MelCase(3, 1600, 16, "float32")
    ref = torch.zeros(3, mel.frames, 16)
    monkeypatch.setattr(suite, "_inputs", lambda case: ([torch.zeros(3, 1600)], (ref,)))
    monkeypatch.setattr(ek.EncoderKernelsSuite, "_torch_calls", staticmethod(lambda case, impl, data: ((ref,), lambda: ref)))
    rec = suite.run(mel, "torch", "stft")
    assert rec["audio_s_per_s"] == pytest.approx(3 * 0.1 / MEDIAN_S)
    assert rec["gbps"] == pytest.approx(mel.bytes(4) / MEDIAN_S / 1e9)
    nan = torch.full_like(ref, float("nan"))
    monkeypatch.setattr(ek.EncoderKernelsSuite, "_torch_calls", staticmethod(lambda case, impl, data: ((nan,), lambda: nan)))
    timers.timed = 0
    assert suite.run(mel, "torch", "stft")["status"] == "failed" and timers.timed == 0
    monkeypatch.undo()
    case = ek.PatchCase(1, 16, 3, 8, 8, "float32", "fwd+bwd")
    data, _ = suite._inputs(case)
    with pytest.raises(Skip, match="forward GEMM"):
        ek.EncoderKernelsSuite._torch_calls(case, "cublas", data)


# ---- encoders.py --------------------------------------------------------------------------

def test_encoders_rates_count_the_batch_and_nan_is_failed(monkeypatch):
    """images/s = batch / median, audio-seconds/s = batch x clip seconds / median; a NaN
    embedding is failed and not timed; a dtype without a tolerance is refused up front."""
    from benchmarks.suites.encoders import EncoderCase, EncodersBenchConfig, EncodersSuite

    with pytest.raises(ValueError, match="dtype must be one of"):
        EncodersSuite(EncodersBenchConfig(dtype="float64"), CPU, None)
    timers = FakeTimers()
    suite = EncodersSuite(EncodersBenchConfig(), CPU, timers)
    monkeypatch.setattr(suite, "check", lambda case, fw, impl: ({"max_error": 0.0, "tolerance": 1.0, "mode": "eager"},
                                                                lambda: None))
    vis = suite.run(EncoderCase("vision", "tiny", 3, "float32"), "torch", "sdpa")
    aud = suite.run(EncoderCase("audio", "tiny", 3, "float32", 0.5), "torch", "sdpa")
    assert vis["images_per_s"] == pytest.approx(3 / MEDIAN_S)
    assert aud["audio_s_per_s"] == pytest.approx(3 * 0.5 / MEDIAN_S)
    monkeypatch.undo()
    case = EncoderCase("vision", "tiny", 1, "float32")
    ref = np.zeros((1, 4, 8), np.float32)
    monkeypatch.setattr(suite, "_inputs", lambda case: ({}, None, ref))
    monkeypatch.setattr(suite, "_torch_call", lambda case, params, x, kernels: (lambda: torch.full((1, 4, 8), float("nan"))))
    timers.timed = 0
    assert suite.run(case, "torch", "sdpa")["status"] == "failed" and timers.timed == 0


# ---- model.py -----------------------------------------------------------------------------

def _model_suite(timers, **kw):
    from benchmarks.suites.model import ModelBenchConfig, ModelSuite

    base = dict(batch=2, seq_len=16, decode_batches=[3], decode_cache_len=64, torch_impls=["reference"], jax_impls=[])
    return ModelSuite(ModelBenchConfig(**{**base, **kw}), CPU, timers)


def test_model_rows_count_tokens_and_flops_by_mode(monkeypatch):
    """forward: (2 N + 4 L H D S) x B x S FLOPs, train step 3x that; decode: B tokens a step and
    no FLOPs; tflops and tokens/s from the median."""
    from model.config import PRESETS, flops_per_token

    suite = _model_suite(FakeTimers())
    monkeypatch.setattr(suite, "check", lambda case, fw, impl: ({"max_error": 0.0, "tolerance": 1.0, "mode": "eager"},
                                                                lambda: None))
    recs = {c.mode: suite.run(c, fw, i) for c, fw, i in suite.entries()}
    cfg = PRESETS["tiny"]
    fwd = flops_per_token(cfg, 16, train=False) * 2 * 16
    assert recs["forward"]["flops"] == pytest.approx(fwd)
    assert recs["forward"]["tflops"] == pytest.approx(fwd / MEDIAN_S / 1e12)
    assert recs["train_step"]["flops"] == pytest.approx(3 * fwd)
    assert recs["forward"]["tokens_per_s"] == pytest.approx(2 * 16 / MEDIAN_S)
    assert recs["decode"]["tokens_per_s"] == pytest.approx(3 / MEDIAN_S) and "flops" not in recs["decode"]


def test_model_check_targets_rows_and_nan(monkeypatch):
    """Next-token targets: tokens shifted left, the last position masked out; the forward
    check reads the last check_rows positions; a NaN output is failed and not timed."""
    from benchmarks.suites.model import Case, ModelSuite

    t = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    targets, mask = ModelSuite._next_tokens(t)
    assert targets[:, :-1].tolist() == [[2, 3, 4], [6, 7, 8]]
    assert mask.tolist() == [[True, True, True, False]] * 2
    timers = FakeTimers()
    suite = _model_suite(timers, check_rows=3)
    case = Case("tiny", "forward", 2, 8, "float32")
    logits = torch.arange(2 * 8 * 5, dtype=torch.float32).reshape(2, 8, 5)
    got = suite._torch_run(lambda tok: logits, np.zeros((2, 8), np.int64), case, None)
    np.testing.assert_array_equal(got, logits[:, -3:].numpy())
    monkeypatch.setattr(suite, "_reference", lambda case: np.zeros((2, 3, 5), np.float32))
    monkeypatch.setattr(suite, "_torch", lambda case, impl: (np.full((2, 3, 5), np.nan, np.float32), lambda: None, "eager"))
    assert suite.run(case, "torch", "reference")["status"] == "failed" and timers.timed == 0


def test_model_short_decode_cache_equal_to_the_full_one_adds_no_rows():
    """interpret_decode_cache_len equal to decode_cache_len: one decode length, each row once."""
    suite = _model_suite(None, modes=["decode"], decode_batches=[1], interpret_decode_cache_len=64,
                         torch_impls=["reference", "triton"])
    assert [c.seq for c in suite.cases()] == [64]
    assert len(list(suite.entries())) == 2


def test_model_decode_rows_report_the_bytes_they_read(monkeypatch):
    """The module docstring: 'Decode reports tokens/s and the bytes of weights + KV read per
    step'. A decode step reads at least every layer's K and V (2 L B T KVH D) and the matmul
    weights (the tied head included) once."""
    import math

    from model.config import PRESETS, param_specs

    suite = _model_suite(FakeTimers(), modes=["decode"], decode_batches=[2])
    monkeypatch.setattr(suite, "check", lambda case, fw, impl: ({"max_error": 0.0, "tolerance": 1.0, "mode": "eager"},
                                                                lambda: None))
    [(case, fw, impl)] = suite.entries()
    rec = suite.run(case, fw, impl)
    c = PRESETS["tiny"]
    kv = 2 * c.layers * 2 * 64 * c.kv_heads * c.head_dim * 4
    weights = 4 * sum(math.prod(shape) for shape, _ in param_specs(c).values() if len(shape) == 2)
    assert rec["bytes"] >= kv + weights
    assert rec["gbps"] == pytest.approx(rec["bytes"] / MEDIAN_S / 1e9)


def test_model_sdpa_fused_loss_row_is_sdpa_with_the_fused_loss_alone():
    """The peer that fits an 80 GB H100: sdpa attention and reference ops, the loss through
    the fused linear cross-entropy; its train step matches the reference model's loss."""
    from benchmarks.suites.model import TORCH_PRESETS
    from model.config import KernelConfig

    kc = KernelConfig(**TORCH_PRESETS["sdpa-fused-loss"])
    assert [kc.impl(op) for op in ("attention", "decode", "norm", "rope", "mlp", "loss")] == \
        ["sdpa", "sdpa", "reference", "reference", "reference", "triton"]
    suite = _model_suite(FakeTimers(), modes=["train_step"], torch_impls=["sdpa-fused-loss"])
    (case, fw, impl), = list(suite.entries())
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "ok" and rec["max_error"] < rec["tolerance"] and rec["mode"] == "interpret"
