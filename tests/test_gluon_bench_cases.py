"""Cases found by mutation testing of the Gluon attention forward (``kernels/attention/gluon_*``
run in ``kernels._gluon_emu``) and of ``make bench-gpu``'s plumbing (``benchmarks/canary.py``,
``sweep.py``, ``goals.py``, ``ncu_targets.py``): each test names the mutation it catches. The
benchmark ones pin what would mislead a GPU session: a goal judged on the wrong row, a candidate
that killed its process never excluded, a sweep rate upside down, a deadline ignored."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kernels.tolerances import ATOL_FLOOR

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


# --- the Gluon forward's LSE -----------------------------------------------------------------

@pytest.mark.parametrize("mode", [1, 2, 3])
def test_gluon_lse_is_log2_logsumexp_and_plus_inf_where_a_query_sees_no_key(mode):
    """Sq > Skv causal GQA: the first Sq - Skv queries see no key. Their LSE must be +inf
    (the Triton backward's convention: exp2(s - lse) = 0), not -inf (an isinf check passes
    either), and their output 0; the others the float64 log2-logsumexp, in every mode.
    Catches K06 (-inf for rows that saw no key)."""
    from kernels.attention import gluon_attention
    from kernels.attention.triton_attention import TritonAttentionBlocks

    blocks = {1: TritonAttentionBlocks(128, 64, 8, 2, gluon=1), 2: TritonAttentionBlocks(128, 32, 8, 3, gluon=2),
              3: TritonAttentionBlocks(128, 64, 4, 2, gluon=3)}[mode]
    b, sq, skv, h, kvh, d = 2, 70, 30, 4, 2, 64
    g = torch.Generator().manual_seed(100 + mode)
    q = torch.randn(b, sq, h, d, generator=g).half()
    k, v = (torch.randn(b, skv, kvh, d, generator=g).half() for _ in range(2))
    scale = d ** -0.5
    o, lse = gluon_attention.gluon_fwd(q, k, v, causal=True, scale=scale, blocks=blocks)

    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double().repeat_interleave(h // kvh, 2)) * scale
    q_pos = torch.arange(sq)[:, None] + skv - sq
    s = s.masked_fill(torch.arange(skv)[None, :] > q_pos, float("-inf"))
    none = q_pos[:, 0] < 0  # queries before the first key
    want = (torch.logsumexp(s, -1) / np.log(2)).masked_fill(none, float("inf"))  # [b, h, q]
    want = want.reshape(b, kvh, h // kvh, sq).permute(0, 1, 3, 2).reshape(b * kvh, sq * (h // kvh))
    assert lse.shape == want.shape
    dead = torch.isinf(want)
    assert bool(dead.any()) and bool((lse[dead] == float("inf")).all()), lse[dead][:4]
    assert torch.isfinite(lse[~dead]).all()
    tol = ATOL_FLOOR["float16"] * max(1.0, float(want[~dead].abs().max()))
    assert float((lse.double()[~dead] - want[~dead]).abs().max()) <= tol
    assert bool((o[:, :sq - skv] == 0).all())  # no key: zeros


@pytest.mark.parametrize("mode", [1, 2, 3])
def test_gluon_forward_with_a_window_wider_than_a_tile_against_float64(mode):
    """A sliding window of 100 keys over 300 positions, G = 2 (64 positions a 128-row tile),
    32- or 64-key tiles: some key tiles lie inside every row's window (unmasked) and the
    window's edge tiles must be masked for the tile's last rows, whose window starts latest.
    The existing window cases (2 to 33 keys) never have an unmasked tile after the edge.
    Catches K17 (the window's full range taken from the tile's first row, q_lo, not its last)."""
    from kernels.attention import gluon_attention
    from kernels.attention.reference import _attention
    from kernels.attention.triton_attention import TritonAttentionBlocks

    from conftest import assert_close

    blocks = {1: TritonAttentionBlocks(128, 64, 8, 2, gluon=1), 2: TritonAttentionBlocks(128, 32, 8, 3, gluon=2),
              3: TritonAttentionBlocks(128, 32, 4, 2, gluon=3)}[mode]
    g = torch.Generator().manual_seed(200 + mode)
    q = torch.randn(1, 300, 2, 64, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 300, 1, 64, generator=g, dtype=torch.float64) for _ in range(2))
    kw = dict(causal=True, window=100, softcap=None, scale=0.125, q_segment_ids=None, kv_segment_ids=None)
    o, _ = gluon_attention.gluon_fwd(q.half(), k.half(), v.half(), causal=True, scale=0.125, blocks=blocks, window=100)
    ref = _attention(q.half().double(), k.half().double(), v.half().double(), **kw)
    base = _attention(q.half(), k.half(), v.half(), upcast=False, **kw)
    assert_close(o, ref, base, torch.float16, "out")


# --- benchmarks/goals.py: which rows a goal is judged on -------------------------------------

def _rec(suite, impl, config, **kw):
    return {"suite": suite, "impl": impl, "framework": "torch", "status": "ok",
            "mode": "compiled", "config": config, "case": kw.pop("case", "c"), **kw}


def _goal(records, prefix):
    from benchmarks import goals

    [g] = [g for g in goals.goals({"records": records}) if g["goal"].startswith(prefix)]
    return g


ATT_FWD = dict(seq=8192, kv_heads=1, head_dim=128, causal=True, direction="fwd", dtype="bfloat16")


def test_attention_forward_goal_needs_550_tflops_as_well_as_the_ratio():
    """#2's forward goal is both >= 550 TFLOP/s and >= 1.1x the best SDPA: 1.25x at 500
    TFLOP/s is not met. Catches G03 (the TFLOP/s bar dropped once an SDPA row exists)."""
    rows = [_rec("attention", "triton", ATT_FWD, tflops=500.0), _rec("attention", "sdpa-flash", ATT_FWD, tflops=400.0)]
    g = _goal(rows, "#2 attention fwd MQA causal hd128 bf16 s8192")
    assert "(1.25×)" in g["measured"] and g["met"] is False


def test_elementwise_goal_compares_each_shape_with_its_own_compile_row():
    """Shape b's Triton row is 1.1x its own torch.compile row (goal 1.2x): not met, though
    shape a's compile row (listed first) is slower. Catches G06 (the peer taken from any
    shape)."""
    norm = dict(op="rms_norm", direction="fwd", dtype="bfloat16")
    rows = [_rec("elementwise", "compiled", norm, case="rms a", median_ms=3.0),
            _rec("elementwise", "triton", norm, case="rms a", median_ms=1.0, frac_measured_bw=0.95),
            _rec("elementwise", "triton", norm, case="rms b", median_ms=1.0, frac_measured_bw=0.95),
            _rec("elementwise", "compiled", norm, case="rms b", median_ms=1.1)]
    g = _goal(rows, "#4 rms_norm fwd ")
    assert "worst of 2 shapes: b 95 % of copy, 1.10× compile" in g["measured"] and g["met"] is False


def test_patch_embed_goal_takes_the_fastest_triton_and_the_fastest_cublas_row():
    """Two Triton rows (1.0 and 2.0 ms) against cuBLAS 1.05 ms: met on the faster Triton row;
    one Triton row of 1.5 ms against cuBLAS rows of 1.0 and 3.0 ms: not met (the baseline is
    the faster cuBLAS). Catches G07 (the slowest Triton row) and G08 (the slowest cuBLAS row,
    a goal judged met when it is not)."""
    pe = dict(op="patch_embed", direction="fwd")
    rows = [_rec("encoder_kernels", "triton", pe, median_ms=2.0), _rec("encoder_kernels", "triton-tma", pe, median_ms=1.0),
            _rec("encoder_kernels", "cublas", pe, median_ms=1.05)]
    g = _goal(rows, "#4 patch_embed")
    assert g["measured"].startswith("triton-tma 1.000 ms, cuBLAS 1.050 ms") and g["met"] is True
    rows = [_rec("encoder_kernels", "triton", pe, median_ms=1.5), _rec("encoder_kernels", "cublas", pe, median_ms=3.0),
            _rec("encoder_kernels", "cublas", pe, median_ms=1.0)]
    g = _goal(rows, "#4 patch_embed")
    assert "cuBLAS 1.000 ms" in g["measured"] and g["met"] is False


NANO = dict(model="nano1", mode="train_step")


def test_model_goal_races_the_fastest_sdpa_row_and_reads_only_triton_rows():
    """nano1's train step at 52 % MFU and 300 ms against SDPA rows of 330 and 250 ms: not met
    (the fastest SDPA wins).
    Catches G09 (the slowest SDPA row as the baseline)."""
    rows = [_rec("model", "triton", NANO, median_ms=300.0, frac_measured_peak=0.52),
            _rec("model", "sdpa", NANO, median_ms=330.0, frac_measured_peak=0.47),
            _rec("model", "sdpa-cudnn", NANO, median_ms=250.0, frac_measured_peak=0.62)]
    g = _goal(rows, "#5 nano1")
    assert g["measured"].startswith("triton 52 % MFU, 300 ms") and "sdpa-cudnn 250 ms" in g["measured"]
    assert g["met"] is False


def test_int4_goal_takes_each_shapes_fastest_triton_row():
    """One shape with two Triton rows, 0.2 and 0.6 ms, against a 0.7 ms matmul: 3.5x, met.
    Catches G10 (the slowest Triton row of the shape)."""
    cfg = dict(rows=16, in_features=2048, out_features=9984)
    rows = [_rec("int4", "triton", cfg, case="m16", median_ms=0.6, frac_measured_bw=0.5),
            _rec("int4", "triton-autotune", cfg, case="m16", median_ms=0.2, frac_measured_bw=0.9),
            _rec("int4", "matmul", cfg, case="m16", median_ms=0.7)]
    g = _goal(rows, "#8 int4")
    assert "m16 triton-autotune 3.50× matmul, 90 % of copy" in g["measured"] and g["met"] is True


def test_gpu_tests_lists_only_functions_with_no_case_run(tmp_path):
    """A function with one case run and one cut off by the stage's time is counted as not run
    for that case, but not listed among the functions with no case run. Catches G13 (every
    function with a missing case listed as never run)."""
    from benchmarks import goals

    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="tests.test_a" name="t1[0]"/>'
                   '</testsuite></testsuites>')
    collected = tmp_path / "c.txt"
    collected.write_text("tests/test_a.py::t1[0]\ntests/test_a.py::t1[1]\ntests/test_a.py::t2[0]\n")
    line = goals.gpu_tests(str(xml), str(collected))
    assert "3 collected, 2 not run" in line and line.endswith("functions with no case run: t2")


# --- benchmarks/canary.py: a candidate that kills its process ------------------------------------

def test_a_candidate_that_kills_the_process_is_on_disk_and_excluded_next_try(tmp_path, monkeypatch):
    """A launch that ends the process at once (an illegal address ends the CUDA context; here
    os._exit) leaves the candidate "running" on disk, so the next try marks it crashed, does
    not launch it again and the autotuners exclude it. Catches C01 (the state not written
    before the launch: each try would die on the same candidate, and it is never excluded)."""
    from benchmarks import canary
    from kernels._autotune import EXCLUDED_ENV, excluded_blocks

    path = tmp_path / "canary.json"
    script = ("import os\nfrom benchmarks import canary\n"
              "canary._attention_jobs = lambda *a: [('bench', 'ok0', lambda: None), ('bench', 'killer', lambda: os._exit(9))]\n"
              "canary._int4_jobs = lambda *a: []\ncanary._decode_jobs = lambda *a: []\n"
              f"canary.run({str(path)!r}, smoke=True)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    state = json.loads(path.read_text())
    assert [(c["blocks"], c["status"]) for c in state["candidates"]] == [(repr("ok0"), "ok"), (repr("killer"), "running")]

    monkeypatch.setattr(canary, "_attention_jobs", lambda *a: [
        ("bench", "ok0", lambda: pytest.fail("settled")), ("bench", "killer", lambda: pytest.fail("relaunched"))])
    monkeypatch.setattr(canary, "_int4_jobs", lambda *a: [])
    monkeypatch.setattr(canary, "_decode_jobs", lambda *a: [])
    state = canary.run(str(path), smoke=True)
    assert state["complete"] and [c["status"] for c in state["candidates"]] == ["ok", "crashed"]
    monkeypatch.setenv(EXCLUDED_ENV, str(path))
    assert list(excluded_blocks()) == [repr("killer")]


def test_an_async_fault_is_charged_to_the_candidate_that_caused_it(tmp_path, monkeypatch):
    """On the GPU a kernel's fault surfaces at the next synchronization: the canary syncs
    after each launch, so the candidate whose sync raises is the one marked error and the next
    one is not. Catches C06 (no synchronize: the fault lands on a later candidate, and the
    faulty one reads ok)."""
    from benchmarks import canary

    pending = []

    def sync():
        if pending:
            pending.clear()
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "synchronize", sync)
    monkeypatch.setattr(canary, "_attention_jobs", lambda *a: [
        ("bench", "faulty", lambda: pending.append(1)), ("bench", "fine", lambda: sync())])
    monkeypatch.setattr(canary, "_int4_jobs", lambda *a: [])
    monkeypatch.setattr(canary, "_decode_jobs", lambda *a: [])
    state = canary.run(str(tmp_path / "canary.json"))
    status = {c["blocks"]: c["status"] for c in state["candidates"]}
    assert status == {repr("faulty"): "error", repr("fine"): "ok"}


# --- benchmarks/sweep.py: rates, the default mark, the deadline ----------------------------------

class _FakeTimer:
    """A timer that calls fn once and reports the next of ``times_s`` as its median."""

    def __init__(self, times_s):
        self.times_s = list(times_s)

    def __call__(self, fn):
        fn()
        return SimpleNamespace(median_s=self.times_s.pop(0))


def test_attention_sweep_rates_default_marks_and_deadline(monkeypatch):
    """The attention sweep's rows with one candidate a pass (the default) and made-up times:
    TFLOP/s is FLOPs over time (3.5x the forward's for forward+backward), the default forward
    rows are marked default; with the deadline passed nothing is launched.
    Catches S01 (the deadline not checked), S03 (a rate that grows with the time: the
    slowest candidate would look fastest) and S06 (forward and backward defaults swapped)."""
    from benchmarks import sweep
    from kernels.attention import reference, triton_attention as ta

    real = ta.candidate_blocks
    monkeypatch.setattr(ta, "candidate_blocks", lambda *a, **kw: real(*a, **kw)[:1])
    # the forward's one candidate stands as the problem's default (on sm_90 that would be the
    # Gluon ping-pong, SM90_DEFAULTS): the plumbing of the mark is under test here
    monkeypatch.setattr(ta, "default_forward_blocks",
                        lambda q, k, v, cap, **kw: real(q.shape[-1], q.dtype, capability=cap)[0])

    def fake_attention(q, k, v, causal, blocks):  # the kernels are checked elsewhere: the plumbing here
        return reference._attention(q, k, v, causal=causal, window=None, softcap=None, scale=q.shape[-1] ** -0.5,
                                    q_segment_ids=None, kv_segment_ids=None)
    monkeypatch.setattr(ta, "attention_triton", fake_attention)
    setup = sweep.Setup(dev="cpu")
    assert sweep.sweep_attention(setup, _FakeTimer([]), lambda: True) == []
    rows = sweep.sweep_attention(setup, _FakeTimer([2e-3, 1e-3] * 2), lambda: False)
    assert [(r["pass_"], r["status"]) for r in rows] == [("fwd+bwd", "ok"), ("fwd", "ok")] * 2
    assert all(r["default"] for r in rows[1::2])  # the forward's first candidate is its default
    for r, (s, h, d) in zip(rows[::2], ((70, 2, 256), (100, 2, 128))):
        fwd_flops = 4 * h * s * s * d / 2
        assert r["tflops"] == pytest.approx(3.5 * fwd_flops / 2e-3 / 1e12) and r["ms"] == pytest.approx(2.0)
    for r, (s, h, d) in zip(rows[1::2], ((70, 2, 256), (100, 2, 128))):
        assert r["tflops"] == pytest.approx(4 * h * s * s * d / 2 / 1e-3 / 1e12) and r["ms"] == pytest.approx(1.0)
    assert max(r["err"] for r in rows[1::2]) < 1e-2


def test_int4_sweep_speedup_is_the_matmul_time_over_the_candidates():
    """The int4 sweep's first row with made-up times (bf16 matmul 2 ms, copy 1 ms, the
    candidate 0.5 ms): 4x faster than the matmul, not 0.25x. Catches S04 (the speedup
    inverted: the slowest candidate would read fastest)."""
    from benchmarks import sweep

    calls = []
    rows = sweep.sweep_int4(sweep.Setup(dev="cpu"), _FakeTimer([2e-3, 1e-3, 0.5e-3] + [1.0] * 8),
                            lambda: calls.append(1) or len(calls) > 1)
    [r] = rows
    assert r["status"] == "ok" and r["speedup_vs_bf16"] == pytest.approx(4.0) and r["ms"] == pytest.approx(0.5)
    assert r["err"] < 1e-2


def test_sweep_cut_by_its_deadline_says_so(tmp_path):
    """A sweep whose deadline passed before its candidates writes complete=False, and the
    report says it was cut. Catches S02 (complete written True whatever the deadline)."""
    from benchmarks import sweep
    from benchmarks.report import sweep_table

    path = sweep.main(["--smoke", "--ops", "patch_embed", "--deadline-s", "0", "--out-dir", str(tmp_path)])
    data = json.load(open(path))
    assert data["complete"] is False and data["records"] == []
    assert "cut at its deadline" in sweep_table(path)


# --- benchmarks/ncu_targets.py: excluded candidates stay out -------------------------------------

def test_ncu_attention_backward_skips_a_candidate_the_canary_saw_crash(tmp_path, monkeypatch):
    """ncu_targets' attention backward launches the default and the two candidates, less one
    the canary marked crashed (it would end the ncu stage's process). Catches N01 (the
    exclusion dropped)."""
    from benchmarks import ncu_targets
    from kernels import torch_ops
    from kernels._autotune import EXCLUDED_ENV
    from kernels.attention import triton_attention as ta

    atomic = ta.TritonAttentionBlocks(32, 128, 8, 2, dkdv_passes=2, dq_atomic=True)
    state = tmp_path / "canary.json"
    state.write_text(json.dumps({"tries": 1, "complete": True, "candidates": [
        {"label": "x", "blocks": repr(atomic), "status": "crashed", "why": "illegal address"}]}))
    monkeypatch.setenv(EXCLUDED_ENV, str(state))
    seen = []

    def fake_attention(q, k, v, *, causal, impl, blocks):
        seen.append(blocks)
        return q * (k.sum() + v.sum())
    monkeypatch.setattr(torch_ops, "attention", fake_attention)
    ncu_targets._attention_bwd("cpu", torch.float16, True)()
    assert seen[0] is None and len(seen) == 2 and seen[1][1].gluon_dkdv
    assert all(b is None or repr(b[1]) != repr(atomic) for b in seen)
