"""Ahead-of-time compile of the encoder Triton kernels (norms, rope, gelu) for sm_90, no GPU.

Each kernel in its default sm_90 configuration goes through the real Triton compiler and the
wheel's ptxas; checks: no register spills, shared memory
within the SM limit. Also checks that the Pallas kernels lower to Triton for CUDA (export).
"""
from __future__ import annotations

import os
import re
import subprocess

import jax
import jax.numpy as jnp
import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

from kernels import torch_ops  # noqa: F401  (sets TRITON_INTERPRET the way the package runs)
from kernels.activations import triton_activations
from kernels.norms import triton_norms
from kernels.rope import triton_rope

nvidia = pytest.importorskip("triton.backends.nvidia.compiler")
MAX_SHARED_SM90 = 227 * 1024


def _compile(kernel, cap=90):
    src = triton.compiler.ASTSource(kernel.fn, kernel.signature, kernel.constexprs, kernel.attrs)
    return triton.compile(src, target=GPUTarget("cuda", cap, 32),
                          options=dict(num_warps=kernel.num_warps, num_stages=kernel.num_stages))


def _ptxas_report(compiled, tmp_path, cap=90):
    """(spill store bytes, spill load bytes, registers) from `ptxas -v`."""
    try:
        ptxas = nvidia.get_ptxas(cap).path
    except RuntimeError as e:
        pytest.skip(f"ptxas not available: {e}")
    if not ptxas or not os.path.exists(ptxas):
        pytest.skip(f"ptxas not available at {ptxas!r}")
    ptx = tmp_path / "kernel.ptx"
    ptx.write_text(compiled.asm["ptx"])
    res = subprocess.run([ptxas, "-v", f"--gpu-name={nvidia.sm_arch_from_capability(cap)}", str(ptx),
                          "-o", str(tmp_path / "k.o")], capture_output=True, text=True, check=True)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", res.stderr)
    regs = re.search(r"Used (\d+) registers", res.stderr)
    assert spills and regs, f"unexpected ptxas -v output:\n{res.stderr}"
    return int(spills[1]), int(spills[2]), int(regs[1])

KERNELS = {
    "rms-res-1152": lambda: triton_norms.aot_kernels(1152, torch.bfloat16, rms=True, residual=True),
    "layer-2048": lambda: triton_norms.aot_kernels(2048, torch.float16, rms=False, residual=False),
    "rms-res-8192": lambda: triton_norms.aot_kernels(8192, torch.bfloat16, rms=True, residual=True),
    "rope-d128": lambda: triton_rope.aot_kernels(128, torch.bfloat16, sections=1),
    "rope2d-d72": lambda: triton_rope.aot_kernels(72, torch.float32, sections=2),
    "geglu-tanh": lambda: triton_activations.aot_kernels(torch.bfloat16, approximate="tanh", gated=True),
    "gelu-erf": lambda: triton_activations.aot_kernels(torch.float16, approximate="none", gated=False),
}


@pytest.mark.parametrize("which", list(KERNELS))
def test_default_configs_compile_for_sm90_without_spills(tmp_path, which):
    for name, kernel in KERNELS[which]().items():
        assert isinstance(kernel.fn, JITFunction), type(kernel.fn)
        compiled = _compile(kernel)
        stores, loads, regs = _ptxas_report(compiled, tmp_path)
        assert (stores, loads) == (0, 0), f"{which} {name}: spills {stores}/{loads} B at {regs} registers"
        assert compiled.metadata.shared <= MAX_SHARED_SM90, f"{which} {name}: {compiled.metadata.shared} B shared"


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
