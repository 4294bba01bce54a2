"""Ahead-of-time compile of the encoder Triton kernels (norms, rope, gelu) for sm_90 and sm_80, no GPU.

Each kernel in its default sm_90 configuration, then entries of the compile report's spill
audit (other dtypes, widths, head dims, sm_80), goes through the real Triton compiler and the
wheel's ptxas, in one fresh process (``tests/aot.py``); checks: no register spills, shared
memory within the SM limit. Also checks that the Pallas kernels lower to Triton for CUDA
(export).
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from aot import assert_compiled_clean, compile_in_subprocess, sweep_jobs

JOBS = {  # job id -> aot_kernels(*args, **kwargs) of the launcher module
    "rms-res-1152": ("kernels.norms.triton_norms", [1152, "torch.bfloat16"], dict(rms=True, residual=True)),
    "layer-2048": ("kernels.norms.triton_norms", [2048, "torch.float16"], dict(rms=False, residual=False)),
    "rms-res-8192": ("kernels.norms.triton_norms", [8192, "torch.bfloat16"], dict(rms=True, residual=True)),
    "rms-res-10240": ("kernels.norms.triton_norms", [10240, "torch.bfloat16"], dict(rms=True, residual=True)),
    # the ViT's fused ln2 (layer_norm + residual, SigLIP width) and the projector's rms_norm
    "layer-res-1152": ("kernels.norms.triton_norms", [1152, "torch.bfloat16"], dict(rms=False, residual=True)),
    "rms-1152": ("kernels.norms.triton_norms", [1152, "torch.bfloat16"], dict(rms=True, residual=False)),
    "rope-d128": ("kernels.rope.triton_rope", [128, "torch.bfloat16"], dict(sections=1)),
    "rope2d-d72": ("kernels.rope.triton_rope", [72, "torch.float32"], dict(sections=2)),
    "geglu-tanh": ("kernels.activations.triton_activations", ["torch.bfloat16"],
                   dict(approximate="tanh", gated=True)),
    "gelu-erf": ("kernels.activations.triton_activations", ["torch.float16"],
                 dict(approximate="none", gated=False)),
    "linear-ce-softcap": ("kernels.cross_entropy.triton_cross_entropy", ["torch.bfloat16"], dict(softcap=True)),
}

# Spill audit entries (benchmarks.compile_report --sweep), all kernels of each: fp32 norms at
# 4096 columns spilled on sm_80 with 8 warps, rope at masked head dims (72, 80, 96) spilled
# with 4 warps; 10240 columns (the column-blocked backward: the whole-row one spilled there at
# any warp count); layer_norm + residual and rms_norm without residual (the encoders' ln2 and
# projector norm) at widths of their own.
SWEEP_JOBS = sweep_jobs([(label, cap, None) for label, cap in (
    ("rms_norm+residual 2560 fp32", 80), ("rms_norm+residual 2560 fp32", 90), ("layer_norm 6144 bf16", 80),
    ("layer_norm 6144 bf16", 90), ("rms_norm+residual 1024 fp16", 80), ("layer_norm 10240 fp32", 80),
    ("layer_norm 10240 fp16", 90), ("rms_norm+residual 10240 fp32", 80), ("rope hd80 fp16", 90),
    ("rope hd96 bf16", 90), ("rope hd80 fp32", 80), ("rope_2d hd72 bf16", 80), ("rope hd256 fp32", 80),
    ("gelu none fp32", 80), ("gated_gelu tanh bf16", 80), ("layer_norm+residual 2560 fp32", 80),
    ("layer_norm+residual 10240 fp16", 90), ("rms_norm 6144 fp32", 80))])


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    jobs = {k: {"module": m, "args": a, "kwargs": kw, "cap": 90} for k, (m, a, kw) in JOBS.items()}
    return compile_in_subprocess({**jobs, **SWEEP_JOBS}, tmp_path_factory.mktemp("aot"))


@pytest.mark.parametrize("which", list(JOBS))
def test_default_configs_compile_for_sm90_without_spills(reports, which):
    kernels = reports[which]
    assert "error" not in kernels, kernels.get("error")
    assert kernels, f"{which}: no kernels"
    for name, report in kernels.items():
        assert_compiled_clean(report, f"{which} {name}")


@pytest.mark.parametrize("job", list(SWEEP_JOBS))
def test_default_configs_across_dtypes_and_widths_without_spills(reports, job):
    kernels = reports[job]
    assert "error" not in kernels, kernels.get("error")
    wide_norm = "norm" in job and " 10240 " in job
    # forward and backward; past 8192 columns the norm backward is two kernels
    assert len(kernels) == (3 if wide_norm else 2), f"{job}: {sorted(kernels)}"
    for name, report in kernels.items():
        assert_compiled_clean(report, f"{job} {name}", cap=SWEEP_JOBS[job]["cap"])


def test_pallas_kernels_lower_to_triton_for_cuda():
    from jax import export

    from kernels.activations.pallas_activations import default_blocks as act_blocks, gelu_pallas
    from kernels.norms.pallas_norms import default_blocks as norm_blocks, norm_pallas
    from kernels.rope.pallas_rope import default_blocks as rope_blocks, rope_pallas

    def loss(x, w, r, h4, pos):
        y, h = norm_pallas(x, w, None, r, rms=True, eps=1e-6, offset=1.0, interpret=False,
                           blocks=norm_blocks(x.shape[-1], interpret=False))
        g = gelu_pallas(y, h, approximate="tanh", interpret=False, blocks=act_blocks(interpret=False))
        q = rope_pallas(h4, pos, theta=1e4, sections=1, interpret=False,
                        blocks=rope_blocks(h4.shape[-1], interpret=False))
        return g.astype(jnp.float32).sum() + q.astype(jnp.float32).sum()

    args = (jnp.ones((37, 1152), jnp.bfloat16), jnp.ones(1152, jnp.bfloat16), jnp.ones((37, 1152), jnp.bfloat16),
            jnp.ones((2, 5, 3, 72), jnp.bfloat16), jnp.zeros((2, 5), jnp.int32))
    triton_call = "__gpu$xla.gpu.triton"
    exported = export.export(jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3))), platforms=("cuda",),
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(triton_call)])(*args)
    targets = re.findall(r"custom_call @(\S+)\(", exported.mlir_module())
    assert sum(t == triton_call for t in targets) == 6, targets  # norm, gelu, rope: fwd + bwd each
