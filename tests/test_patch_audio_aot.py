"""Ahead-of-time compile of the patch_embed and log_mel Triton kernels for sm_90 (and, from
the compile report's spill audit, sm_80), no GPU: no register spills, shared memory within
the SM limit, and the sm_90 patch matmuls on 16-bit tensor cores (wgmma in PTX, HGMMA in
SASS). Compiles run in a fresh process (``tests/aot.py``), as for every AOT test.
"""
from __future__ import annotations

import pytest
from aot import assert_compiled_clean, compile_in_subprocess, sass_mix, sweep_jobs

PATCH = "kernels.patch_embed.triton_patch_embed"
MEL = "kernels.audio.triton_log_mel"
JOBS = {
    "patch-fp16-p16": (PATCH, ["torch.float16"], dict(patch=16)),
    "patch-bf16-p14": (PATCH, ["torch.bfloat16"], dict(patch=14)),
    "patch-fp32-p16": (PATCH, ["torch.float32"], dict(patch=16)),
    "patch-bf16-p14-two-pass": (PATCH, ["torch.bfloat16"], dict(patch=14, blocks={
        "__dataclass__": f"{PATCH}:PatchEmbedBlocks", "block_m": 128, "block_n": 128, "block_k": 64,
        "num_warps": 8, "num_stages": 3, "two_pass": True})),
    "mel-fp16-80": (MEL, ["torch.float16"], dict(n_mels=80)),
    "mel-fp32-128": (MEL, ["torch.float32"], dict(n_mels=128)),
}

# Spill audit entries (benchmarks.compile_report --sweep), every kernel of each: the other
# dtypes on sm_90 (16-bit matmuls on wgmma) and all dtypes on sm_80.
SWEEP_JOBS = sweep_jobs([(label, cap, None) for label, cap in (
    ("patch_embed p16 bf16", 90), ("patch_embed p14 fp32", 80), ("patch_embed p14 bf16", 80),
    ("log_mel 128 bf16", 90), ("log_mel 80 fp32", 80), ("log_mel 128 fp16", 80))])


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    jobs = {k: {"module": m, "args": a, "kwargs": kw, "cap": 90} for k, (m, a, kw) in JOBS.items()}
    return compile_in_subprocess({**jobs, **SWEEP_JOBS}, tmp_path_factory.mktemp("aot"))


PATCH_KERNELS = ["_patch_embed_fwd_kernel", "_patch_embed_dweight_kernel", "_patch_embed_dimages_kernel",
                 "_patch_embed_dpos_kernel"]


@pytest.mark.parametrize("name", PATCH_KERNELS, ids=lambda n: n.removeprefix("_patch_embed_").removesuffix("_kernel"))
def test_patch_embed_fp16_sm90_wgmma_no_spills(reports, name):
    assert_compiled_clean(reports["patch-fp16-p16"][name], name, wgmma=name != "_patch_embed_dpos_kernel")


@pytest.mark.parametrize("job,wgmma", [("patch-bf16-p14", True), ("patch-fp32-p16", False)])
def test_patch_embed_forward_other_dtypes_no_spills(reports, job, wgmma):
    assert_compiled_clean(reports[job]["_patch_embed_fwd_kernel"], job, wgmma=wgmma)


def test_patch_embed_two_pass_forward_is_a_plain_gemm(reports):
    """The two-pass forward: the GEMM streams both operands with cp.async (no gathered tile
    through registers) on wgmma at 128x128 tiles without spills; the patchify pass is a copy."""
    fwd = reports["patch-bf16-p14-two-pass"]["_patch_embed_fwd_kernel"]
    assert_compiled_clean(fwd, "two-pass forward", wgmma=True)
    assert sass_mix(fwd, "two-pass forward")["LDGSTS"] > 0, fwd["sass_mix"]
    assert_compiled_clean(reports["patch-bf16-p14-two-pass"]["_patchify_kernel"], "patchify")


@pytest.mark.parametrize("job,wgmma", [("mel-fp16-80", True), ("mel-fp32-128", False)])
def test_log_mel_sm90_no_spills(reports, job, wgmma):
    assert_compiled_clean(reports[job]["_log_mel_kernel"], job, wgmma=wgmma)


@pytest.mark.parametrize("job", list(SWEEP_JOBS))
def test_default_configs_across_dtypes_and_targets_without_spills(reports, job):
    kernels = reports[job]
    assert "error" not in kernels, kernels.get("error")
    cap = SWEEP_JOBS[job]["cap"]
    for name, report in kernels.items():
        wgmma = cap == 90 and "fp32" not in job and name not in ("_patch_embed_dpos_kernel", "_patchify_kernel")
        assert_compiled_clean(report, f"{job} {name}", cap=cap, wgmma=wgmma)
