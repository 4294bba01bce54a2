"""Ahead-of-time compile of the Triton attention kernels for NVIDIA targets, with no GPU.

Compiles the default sm_90 (and sm_80 forward) configurations through the real Triton
compiler and the ptxas shipped in the wheel, then checks what only shows compiled: no
register spills, shared memory within the SM limit, and wgmma (HGMMA in SASS) on sm_90.

The compiles run in a fresh Python process with TRITON_INTERPRET=0: with the variable set
when triton is imported, triton.language's own jit functions (``tl.zeros``, ``tl.sum``, ...)
are interpreter objects the compiler cannot use, and Triton 3.6's interpreter leaves
``triton.language`` builtins patched after a kernel calls a jit helper, which breaks any later
real compile in a process that interpreted (as the other test files do).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import traceback

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_SHARED = {80: 163 * 1024, 90: 227 * 1024}  # opt-in shared memory per block (bytes)
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


def _compile_jobs(out_dir: str) -> None:
    """Worker, run in a fresh process: compile every job, write out_dir/report.json."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia import compiler as nvidia
    from triton.runtime.jit import JITFunction

    from kernels.attention.triton_attention import aot_kernels

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    nvdisasm = os.path.join(os.path.dirname(nvidia.__file__), "bin", "nvdisasm")
    report = {}
    for job, (cap, head_dim, dt, name, features) in JOBS.items():
        try:
            kernel = aot_kernels(head_dim, dtypes[dt], causal=True, capability=(cap // 10, cap % 10),
                                 **features)[name]
            assert isinstance(kernel.fn, JITFunction), f"not a real JITFunction: {type(kernel.fn)}"
            src = triton.compiler.ASTSource(kernel.fn, kernel.signature, kernel.constexprs, kernel.attrs)
            compiled = triton.compile(src, target=GPUTarget("cuda", cap, 32),
                                      options=dict(num_warps=kernel.num_warps, num_stages=kernel.num_stages))
            base = os.path.join(out_dir, job)
            with open(base + ".ptx", "w") as f:
                f.write(compiled.asm["ptx"])
            with open(base + ".cubin", "wb") as f:
                f.write(compiled.asm["cubin"])
            ptxas = subprocess.run(
                [nvidia.get_ptxas(cap).path, "-v", f"--gpu-name={nvidia.sm_arch_from_capability(cap)}",
                 base + ".ptx", "-o", base + ".o"], capture_output=True, text=True, check=True).stderr
            sass = subprocess.run([nvdisasm, base + ".cubin"], capture_output=True, text=True,
                                  check=True).stdout if os.path.exists(nvdisasm) else None
            report[job] = dict(ptxas=ptxas, shared=compiled.metadata.shared,
                               wgmma_ptx="wgmma" in compiled.asm["ptx"],
                               hgmma_sass=None if sass is None else "HGMMA" in sass)
        except Exception:  # reported per job by the test that owns it
            report[job] = dict(error=traceback.format_exc())
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f)


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory):
    nvidia = pytest.importorskip("triton.backends.nvidia.compiler")
    try:
        ptxas = nvidia.get_ptxas(90).path
    except RuntimeError as e:  # knobs raise when no ptxas is found anywhere
        pytest.skip(f"ptxas not available: {e}")
    if not ptxas or not os.path.exists(ptxas):
        pytest.skip(f"ptxas not available at {ptxas!r}")
    out = tmp_path_factory.mktemp("aot")
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, os.path.abspath(__file__), str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"AOT worker failed:\n{res.stderr[-6000:]}"
    with open(out / "report.json") as f:
        return json.load(f)


@pytest.mark.parametrize("job", list(JOBS))
def test_compiles_without_spills(aot_report, job):
    cap, _, _, name, _ = JOBS[job]
    r = aot_report[job]
    assert "error" not in r, r.get("error")
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r["ptxas"])
    regs = re.search(r"Used (\d+) registers", r["ptxas"])
    assert spills and regs, f"unexpected ptxas -v output:\n{r['ptxas']}"
    assert (int(spills[1]), int(spills[2])) == (0, 0), (
        f"{job}: spills {spills[1]} B stores / {spills[2]} B loads at {regs[1]} registers")
    assert r["shared"] <= MAX_SHARED[cap], f"{job}: needs {r['shared']} B shared memory"
    if cap == 90 and name in MMA_KERNELS:
        assert r["wgmma_ptx"], f"{job}: PTX has no wgmma"
        if r["hgmma_sass"] is not None:  # nvdisasm ships with the triton wheel
            assert r["hgmma_sass"], f"{job}: SASS has no HGMMA"


if __name__ == "__main__":
    _compile_jobs(sys.argv[1])
