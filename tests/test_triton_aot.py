"""Ahead-of-time compile of the Triton attention kernels for NVIDIA targets, with no GPU.

Compiles the default sm_90 (and sm_80 forward) configurations through the real Triton
compiler and the ptxas shipped in the wheel, then checks what only shows compiled: no
register spills, shared memory within the SM limit, and wgmma (HGMMA in SASS) on sm_90;
then entries of the compile report's spill audit (fp32/fp16/bf16, head dims 64-256, sm_80
and sm_90) in the same compile process.

The compiles run in a fresh Python process with TRITON_INTERPRET=0 (``tests/aot.py``): with
the variable set when triton is imported, triton.language's own jit functions (``tl.zeros``,
``tl.sum``, ...) are interpreter objects the compiler cannot use, and the interpreter and the
real compiler corrupt each other's state within one process.
"""
from __future__ import annotations

import pytest
from aot import assert_compiled_clean, compile_in_subprocess, sass_mix, sweep_jobs

MMA_KERNELS = ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel")

# job id -> (capability, head_dim, dtype, kernel name, feature kwargs of aot_kernels)
JOBS = {}
for _dt in ("fp16", "bf16"):
    for _name in ("_attn_fwd_kernel", "_attn_bwd_preprocess_kernel", "_attn_bwd_dkdv_kernel",
                  "_attn_bwd_dq_kernel"):
        JOBS[f"sm90-{_name[6:-7]}-{_dt}"] = (90, 128, _dt, _name, {})
    JOBS[f"sm80-fwd-{_dt}"] = (80, 128, _dt, "_attn_fwd_kernel", {})
for _name in MMA_KERNELS:  # window + softcap + segments at odd head_dim 80 (masked d)
    JOBS[f"sm90-{_name[6:-7]}-bf16-all-features-d80"] = (
        90, 80, "bf16", _name, dict(window=128, softcap=30.0, segments=True))
for _name in MMA_KERNELS:  # bidirectional blocks (q_end rows; the dK/dV pass's binary search)
    JOBS[f"sm90-{_name[6:-7]}-bf16-bidirectional"] = (90, 128, "bf16", _name, dict(bidirectional=True))
    JOBS[f"sm90-{_name[6:-7]}-fp16-bidirectional-all-features-d80"] = (
        90, 80, "fp16", _name, dict(bidirectional=True, window=128, softcap=30.0, segments=True))

# Spill audit entries (benchmarks.compile_report --sweep has the full dtype x head_dim x
# target grid, ~2 min for attention): fp32 forward on both targets (sm_80 spilled at head
# dims 80-128 with 32x16 tiles), fp32 backward, and the 16-bit passes at the smallest and
# largest head dims. (label, cap, kernels)
FP32_WITH_BWD = {(128, 90), (256, 90), (96, 80)}
SWEEP = [(f"attention causal hd{d} fp32", cap, MMA_KERNELS if (d, cap) in FP32_WITH_BWD else ["_attn_fwd_kernel"])
         for d in (64, 80, 96, 128, 256) for cap in (80, 90) if (d, cap) not in {(64, 90), (96, 90)}]
SWEEP += [(f"attention causal hd{d} {dt}", 90, MMA_KERNELS) for d, dt in ((64, "fp16"), (256, "bf16"))]
SWEEP += [("attention causal hd256 bf16", 80, ["_attn_fwd_kernel"]),
          ("attention causal hd64 fp16", 80, ["_attn_fwd_kernel"])]
SWEEP_JOBS = sweep_jobs(SWEEP)

# TMA tiles (sm_90) through tensor descriptors: the forward fits 128x128 without spills (the
# pointer kernel spills there); the backward passes at their default 64x64 tiles.
# job -> (kernels, head_dim, dtype, block_m, block_n, warps, stages, features)
FWD, BWD = ["_attn_fwd_kernel"], ["_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel"]
TMA_JOBS = {
    "sm90-fwd-tma-bf16-128x64": (FWD, 128, "bf16", 128, 64, 8, 3, {}),
    "sm90-fwd-tma-bf16-128x128": (FWD, 128, "bf16", 128, 128, 8, 2, {}),
    "sm90-fwd-tma-fp16-d80-all-features": (FWD, 80, "fp16", 128, 64, 8, 3,
                                           dict(window=128, softcap=30.0, segments=True)),
    "sm90-bwd-tma-bf16-64x64": (BWD, 128, "bf16", 64, 64, 8, 3, {}),  # tma_blocks: 2 -> 3 stages
    "sm90-bwd-tma-bf16-64x64-unsplit": (BWD, 128, "bf16", 64, 64, 8, 3, dict(dkdv_splits=1)),
    # with softcap as well the TMA dK/dV pass spills at 255 registers (12 B at hd80 fp16 with
    # window, softcap and segments; none at hd128 bf16 with softcap alone: the compile report's
    # feature variants): window + segments only here
    "sm90-bwd-tma-fp16-d80-window-segments": (BWD, 80, "fp16", 64, 64, 8, 3,
                                              dict(window=128, segments=True)),
}


# Replicated score dots (benchmarks.compile_report.mma_dots): with 8 warps Triton lays a dot
# that feeds another dot over all warps along M, so 64-key dK/dV (64-row dQ) score tiles are
# computed by both warpgroups; the 128-key / 128-row candidates are not. job -> (head_dim,
# blocks kwargs, kernels, replicated expected)
DUP_JOBS = {
    "sm90-bwd-bf16-d128-64key": (128, dict(block_m=64, block_n=64, num_warps=8, num_stages=2),
                                 ["_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel"], True),
    "sm90-bwd-bf16-d128-128key": (128, dict(block_m=32, block_n=128, num_warps=8, num_stages=2,
                                            dq_block_m=128, dq_block_n=32),
                                  ["_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel"], False),
    "sm90-bwd-bf16-d256-two-pass": (256, dict(block_m=32, block_n=128, num_warps=8, num_stages=2,
                                              dkdv_passes=2, dq_block_m=128, dq_block_n=16),
                                    ["_attn_bwd_dkdv_kernel", "_attn_bwd_dv_kernel", "_attn_bwd_dq_kernel"],
                                    False),
    # dQ by atomics from the dK/dV pass (the autotune candidates): no dQ kernel to compile
    "sm90-bwd-bf16-d128-atomic-dq": (128, dict(block_m=32, block_n=128, num_warps=8, num_stages=2,
                                               dq_atomic=True), ["_attn_bwd_dkdv_kernel"], False),
    "sm90-bwd-bf16-d256-two-pass-atomic-dq": (256, dict(block_m=32, block_n=128, num_warps=8, num_stages=2,
                                                        dkdv_passes=2, dq_atomic=True),
                                              ["_attn_bwd_dkdv_kernel", "_attn_bwd_dv_kernel"], False),
    # ... and by one bulk tensor reduction a tile (cp.reduce.async.bulk, no pointer atomics)
    "sm90-bwd-bf16-d256-two-pass-dq-tma": (256, dict(block_m=16, block_n=128, num_warps=8, num_stages=2,
                                                     dkdv_passes=2, dq_atomic=True, dq_tma=True),
                                           ["_attn_bwd_dkdv_kernel", "_attn_bwd_dv_kernel"], False),
}

# The Triton dK/dV pass per query head (dkdv_per_head; the 64x32 and head_dim-256 ones are sm_90
# backward candidates, 128 keys x 32 rows with dQ by atomics is not: eight at most); MQA with the
# groups of the #2 goal rows and of nano1: job -> (head_dim, group, blocks kwargs, kernels,
# wgmma expected). The 64x32 4-warp tile is mma.sync (as the folded one); 128 keys x 32 rows
# is wgmma.
PER_HEAD_JOBS = {
    "sm90-bwd-bf16-d128-per-head-64x32": (128, 16, dict(block_m=64, block_n=32, num_warps=4, num_stages=2,
                                                        dkdv_per_head=True), ["_attn_bwd_dkdv_kernel"], False),
    "sm90-bwd-bf16-d128-per-head-atomic-dq": (128, 16, dict(block_m=32, block_n=128, num_warps=8, num_stages=2,
                                                            dq_atomic=True, dkdv_per_head=True),
                                              ["_attn_bwd_dkdv_kernel"], True),
    "sm90-bwd-bf16-d256-per-head-two-pass": (256, 8, dict(block_m=32, block_n=128, num_warps=8, num_stages=2,
                                                          dkdv_passes=2, dq_block_m=64, dq_block_n=32,
                                                          dkdv_per_head=True),
                                             ["_attn_bwd_dkdv_kernel", "_attn_bwd_dv_kernel"], True),
}


# The Gluon forward (sm_90; gluon_attention.py): its three modes at head_dim 128 (MQA, G 8,
# causal), ping-pong with 64-key tiles and at head_dim 64 (GQA, G 4, fp16, not causal).
# job -> (head_dim, dtype, group, causal, blocks kwargs)
GLUON_JOBS = {
    "sm90-gluon-ws-bf16-d128": (128, "bf16", 8, True, dict(block_m=128, block_n=128, num_warps=8, num_stages=2, gluon=1)),
    "sm90-gluon-overlap-bf16-d128": (128, "bf16", 8, True, dict(block_m=128, block_n=128, num_warps=8, num_stages=2,
                                                                gluon=2)),
    "sm90-gluon-pingpong-bf16-d128": (128, "bf16", 8, True, dict(block_m=128, block_n=128, num_warps=4, num_stages=2,
                                                                 gluon=3)),
    "sm90-gluon-pingpong-bf16-d128-64key": (128, "bf16", 8, True, dict(block_m=128, block_n=64, num_warps=4,
                                                                       num_stages=3, gluon=3)),
    # a 3-deep K/V ring at 128 keys: 224 KiB of shared memory, inside the 227 KiB limit
    "sm90-gluon-pingpong-bf16-d128-ring3": (128, "bf16", 8, True, dict(block_m=128, block_n=128, num_warps=4,
                                                                       num_stages=3, gluon=3)),
    "sm90-gluon-pingpong-fp16-d64-gqa": (64, "fp16", 4, False, dict(block_m=128, block_n=128, num_warps=4,
                                                                    num_stages=2, gluon=3)),
    # head_dim 256 (nano1's, Gemma's): O through shared memory and a TMA store keeps them spill-free
    "sm90-gluon-pingpong-bf16-d256": (256, "bf16", 8, True, dict(block_m=128, block_n=64, num_warps=4,
                                                                 num_stages=2, gluon=3)),
    "sm90-gluon-ws-bf16-d256": (256, "bf16", 8, True, dict(block_m=128, block_n=64, num_warps=8, num_stages=2,
                                                           gluon=1)),
    "sm90-gluon-pingpong-bf16-d256-32key": (256, "bf16", 8, True, dict(block_m=128, block_n=32, num_warps=4,
                                                                       num_stages=3, gluon=3)),
    # Gemma 2's local layers and caps: window + softcap (warp-specialized 128x128 and 64-key
    # ping-pong stay spill-free; modes 2 and 3 at 128 keys spill 416 / 908 B with both: the
    # compile report's feature variants)
    "sm90-gluon-ws-bf16-d128-window-softcap": (128, "bf16", 8, True, dict(block_m=128, block_n=128, num_warps=8,
                                                                          num_stages=2, gluon=1),
                                               dict(window=4096, softcap=50.0)),
    "sm90-gluon-pingpong-bf16-d256-32key-window-softcap": (256, "bf16", 8, True,
                                                           dict(block_m=128, block_n=32, num_warps=4, num_stages=3,
                                                                gluon=3), dict(window=4096, softcap=50.0)),
}


# The Gluon dK/dV pass (gluon_bwd_kernels.py): head_dim 128 in one pass (fp32 split partials,
# and the unsplit k-dtype stores), 256 in two (dV, then dK); job -> (head_dim, blocks kwargs, kernels)
GLUON_BWD_JOBS = {
    "sm90-gluon-dkdv-bf16-d128": (128, dict(block_m=64, block_n=128, num_warps=8, num_stages=2, dq_block_m=64,
                                            dq_block_n=64, gluon_dkdv=True), ["_attn_bwd_dkdv_kernel"]),
    "sm90-gluon-dkdv-bf16-d128-unsplit": (128, dict(block_m=64, block_n=128, num_warps=8, num_stages=2,
                                                    dq_block_m=64, dq_block_n=64, gluon_dkdv=True, dkdv_splits=1),
                                          ["_attn_bwd_dkdv_kernel"]),
    "sm90-gluon-dkdv-bf16-d256-two-pass": (256, dict(block_m=32, block_n=128, num_warps=8, num_stages=2,
                                                     dkdv_passes=2, dq_block_m=64, dq_block_n=32, gluon_dkdv=True),
                                           ["_attn_bwd_dkdv_kernel", "_attn_bwd_dv_kernel"]),
    "sm90-gluon-dkdv-dq-atomic-bf16-d128": (128, dict(block_m=32, block_n=128, num_warps=8, num_stages=2,
                                                      gluon_dkdv=True, dq_atomic=True), ["_attn_bwd_dkdv_kernel"]),
    "sm90-gluon-dkdv-dq-atomic-bf16-d256-two-pass": (256, dict(block_m=32, block_n=128, num_warps=8, num_stages=2,
                                                               dkdv_passes=2, gluon_dkdv=True, dq_atomic=True),
                                                     ["_attn_bwd_dkdv_kernel", "_attn_bwd_dv_kernel"]),
    "sm90-gluon-dkdv-dq-atomic-bf16-d256-window-softcap": (256, dict(block_m=32, block_n=128, num_warps=8,
                                                                     num_stages=2, dkdv_passes=2, gluon_dkdv=True,
                                                                     dq_atomic=True),
                                                           ["_attn_bwd_dkdv_kernel", "_attn_bwd_dv_kernel"],
                                                           dict(window=4096, softcap=50.0)),
    "sm90-gluon-dkdv-dq-atomic-bf16-d128-segments": (128, dict(block_m=32, block_n=128, num_warps=8, num_stages=2,
                                                               gluon_dkdv=True, dq_atomic=True),
                                                     ["_attn_bwd_dkdv_kernel"], dict(segments=True)),
    # per query head (q/dO boxes [1, 32, 1, D] of one head): the hd128 candidate
    "sm90-gluon-dkdv-dq-atomic-bf16-d128-per-head": (128, dict(block_m=32, block_n=128, num_warps=8, num_stages=2,
                                                               gluon_dkdv=True, dq_atomic=True, dkdv_per_head=True),
                                                     ["_attn_bwd_dkdv_kernel"]),
}


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory):
    jobs = {job: {"module": "kernels.attention.triton_attention",
                  "args": [head_dim, {"fp16": "torch.float16", "bf16": "torch.bfloat16"}[dt]],
                  "kwargs": {"causal": True, **features}, "cap": cap, "kernels": [name]}
            for job, (cap, head_dim, dt, name, features) in JOBS.items()}
    blocks = "kernels.attention.triton_attention:TritonAttentionBlocks"
    tma_jobs = {job: {"module": "kernels.attention.triton_attention",
                      "args": [head_dim, {"fp16": "torch.float16", "bf16": "torch.bfloat16"}[dt]],
                      "kwargs": {"causal": True, **{k: v for k, v in features.items() if k != "dkdv_splits"},
                                 "blocks": {"__dataclass__": blocks, "block_m": bm, "block_n": bn,
                                            "num_warps": w, "num_stages": st, "tma": True,
                                            "dkdv_splits": features.get("dkdv_splits", 0)}},
                      "cap": 90, "kernels": kernels}
                for job, (kernels, head_dim, dt, bm, bn, w, st, features) in TMA_JOBS.items()}
    dup_jobs = {job: {"module": "kernels.attention.triton_attention", "args": [d, "torch.bfloat16"],
                      "kwargs": {"causal": True, "blocks": {"__dataclass__": blocks, **kw}},
                      "cap": 90, "kernels": kernels}
                for job, (d, kw, kernels, _) in DUP_JOBS.items()}
    gluon_jobs = {job: {"module": "kernels.attention.triton_attention",
                        "args": [d, {"fp16": "torch.float16", "bf16": "torch.bfloat16"}[dt]],
                        "kwargs": {"causal": causal, "group": g, "blocks": {"__dataclass__": blocks, **kw},
                                   **(features[0] if features else {})},
                        "cap": 90, "kernels": ["_attn_fwd_kernel"]}
                  for job, (d, dt, g, causal, kw, *features) in GLUON_JOBS.items()}
    gluon_bwd_jobs = {job: {"module": "kernels.attention.triton_attention", "args": [d, "torch.bfloat16"],
                            "kwargs": {"causal": True, "blocks": {"__dataclass__": blocks, **kw},
                                       **(features[0] if features else {})},
                            "cap": 90, "kernels": kernels}
                      for job, (d, kw, kernels, *features) in GLUON_BWD_JOBS.items()}
    per_head_jobs = {job: {"module": "kernels.attention.triton_attention", "args": [d, "torch.bfloat16"],
                           "kwargs": {"causal": True, "group": g, "blocks": {"__dataclass__": blocks, **kw}},
                           "cap": 90, "kernels": kernels}
                     for job, (d, g, kw, kernels, _) in PER_HEAD_JOBS.items()}
    return compile_in_subprocess({**jobs, **SWEEP_JOBS, **tma_jobs, **dup_jobs, **gluon_jobs, **gluon_bwd_jobs,
                                  **per_head_jobs}, tmp_path_factory.mktemp("aot"))


@pytest.mark.parametrize("job", list(JOBS))
def test_compiles_without_spills(aot_report, job):
    cap, _, _, name, _ = JOBS[job]
    kernels = aot_report[job]
    assert "error" not in kernels, kernels.get("error")
    assert_compiled_clean(kernels[name], job, cap=cap, wgmma=cap == 90 and name in MMA_KERNELS)


@pytest.mark.parametrize("job", list(SWEEP_JOBS))
def test_default_configs_across_dtypes_and_head_dims_without_spills(aot_report, job):
    cap = SWEEP_JOBS[job]["cap"]
    kernels = aot_report[job]
    assert "error" not in kernels, kernels.get("error")
    for name in SWEEP_JOBS[job]["kernels"]:
        # head_dim 256's backward runs 32-row tiles (larger ones spill): mma.sync, not wgmma
        wgmma = cap == 90 and "fp32" not in job and (name == "_attn_fwd_kernel" or "hd256" not in job)
        assert_compiled_clean(kernels[name], f"{job} {name}", cap=cap, wgmma=wgmma)


@pytest.mark.parametrize("job", list(TMA_JOBS))
def test_tma_passes_compile_to_tensor_copies_and_wgmma(aot_report, job):
    for name in TMA_JOBS[job][0]:
        report = aot_report[job][name]
        assert_compiled_clean(report, f"{job} {name}", cap=90, wgmma=True)
        mix = sass_mix(report, f"{job} {name}")
        assert mix["UTMALDG"] > 0, f"{job} {name}: no TMA loads in SASS"
        # segment ids, and the backward's lse/delta rows, stay pointer loads
        if name == "_attn_fwd_kernel" and not TMA_JOBS[job][-1].get("segments"):
            assert mix["LDGSTS"] == 0, f"{job}: pointer (cp.async) loads left"


@pytest.mark.parametrize("job", list(DUP_JOBS))
def test_backward_tiles_that_replicate_score_dots(aot_report, job):
    _, _, kernels, replicated = DUP_JOBS[job]
    for name in kernels:
        report = aot_report[job][name]
        assert_compiled_clean(report, f"{job} {name}", cap=90, wgmma=True)
        dots = report["mma_dots"]
        assert dots["total"] > 0 and (dots["replicated"] > 0) == replicated, (job, name, dots)


@pytest.mark.parametrize("job", list(PER_HEAD_JOBS))
def test_per_head_dkdv_pass_compiles_without_spills(aot_report, job):
    """The per-query-head dK/dV pass (HEAD_SPLIT: positions of one head a step, its lse/delta
    rows gathered from the folded layout) fits its tile without spills."""
    *_, kernels, wgmma = PER_HEAD_JOBS[job]
    for name in kernels:
        report = aot_report[job][name]
        assert_compiled_clean(report, f"{job} {name}", cap=90, wgmma=wgmma)
        if not wgmma:
            assert not report["wgmma_in_ptx"], f"{job} {name}: expected mma.sync, got wgmma"


@pytest.mark.parametrize("job", list(GLUON_JOBS))
def test_gluon_forward_compiles_warp_specialized(aot_report, job):
    """No spills at the 168-register launch cap (setmaxnreg gives consumers 240), wgmma, TMA
    copies, and 12 warps: the consumers' 8 plus the producer's warpgroup."""
    report = aot_report[job]["_attn_fwd_kernel"]
    assert_compiled_clean(report, job, cap=90, wgmma=True)
    assert report["num_warps"] == 12 and report["registers"] <= 168, report
    assert sass_mix(report, job)["UTMALDG"] > 0, f"{job}: no TMA loads in SASS"


@pytest.mark.parametrize("job", list(GLUON_BWD_JOBS))
def test_gluon_dkdv_pass_compiles_warp_specialized(aot_report, job):
    """No spills, wgmma, TMA loads of the q/dO row blocks, 12 warps (8 consumers and the
    producer's warpgroup) at the 168-register launch cap."""
    for name in GLUON_BWD_JOBS[job][2]:
        report = aot_report[job][name]
        assert_compiled_clean(report, f"{job} {name}", cap=90, wgmma=True)
        assert report["num_warps"] == 12 and report["registers"] <= 168, report
        assert sass_mix(report, f"{job} {name}")["UTMALDG"] > 0, f"{job} {name}: no TMA loads in SASS"
