"""Ahead-of-time compile of the Triton attention kernels for NVIDIA targets, with no GPU.

Compiles the default sm_90 (and sm_80 forward) configurations through the real Triton
compiler and the ptxas shipped in the wheel, then checks what only shows compiled: no
register spills, shared memory within the SM limit, and wgmma (HGMMA in SASS) on sm_90.

The compiles run in a fresh Python process with TRITON_INTERPRET=0 (``tests/aot.py``): with
the variable set when triton is imported, triton.language's own jit functions (``tl.zeros``,
``tl.sum``, ...) are interpreter objects the compiler cannot use, and the interpreter and the
real compiler corrupt each other's state within one process.
"""
from __future__ import annotations

import pytest
from aot import assert_compiled_clean, compile_in_subprocess

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


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory):
    jobs = {job: {"module": "kernels.attention.triton_attention",
                  "args": [head_dim, {"fp16": "torch.float16", "bf16": "torch.bfloat16"}[dt]],
                  "kwargs": {"causal": True, **features}, "cap": cap, "kernels": [name]}
            for job, (cap, head_dim, dt, name, features) in JOBS.items()}
    return compile_in_subprocess(jobs, tmp_path_factory.mktemp("aot"))


@pytest.mark.parametrize("job", list(JOBS))
def test_compiles_without_spills(aot_report, job):
    cap, _, _, name, _ = JOBS[job]
    kernels = aot_report[job]
    assert "error" not in kernels, kernels.get("error")
    assert_compiled_clean(kernels[name], job, cap=cap, wgmma=cap == 90 and name in MMA_KERNELS)
