"""Ahead-of-time compile of the patch_embed and log_mel Triton kernels for sm_90, with no GPU.

Compiles each kernel's default configuration through the real Triton compiler and the
ptxas shipped in the wheel, then checks what only shows compiled: no register spills,
shared memory within the SM limit, and wgmma (HGMMA in SASS) where a pass runs its
matmul on 16-bit tensor cores. Same method as tests/test_triton_aot.py (the kernels are
built by a non-interpreted JIT copy of their module, ``kernels._triton_aot.jit_module``).
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

from kernels import torch_ops  # noqa: F401  (sets TRITON_INTERPRET the way the package runs)
from kernels.audio import triton_log_mel
from kernels.patch_embed import triton_patch_embed

nvidia = pytest.importorskip("triton.backends.nvidia.compiler")

MAX_SHARED_SM90 = 227 * 1024
NVIDIA_BIN = os.path.join(os.path.dirname(nvidia.__file__), "bin")


def _compile(kernel, cap=90):
    src = triton.compiler.ASTSource(kernel.fn, kernel.signature, kernel.constexprs, kernel.attrs)
    return triton.compile(src, target=GPUTarget("cuda", cap, 32),
                          options=dict(num_warps=kernel.num_warps, num_stages=kernel.num_stages))


def _spills(compiled, tmp_path, cap=90):
    """(spill store bytes, spill load bytes, registers) from `ptxas -v`."""
    try:
        ptxas = nvidia.get_ptxas(cap).path
    except RuntimeError as e:
        pytest.skip(f"ptxas not available: {e}")
    ptx = tmp_path / "kernel.ptx"
    ptx.write_text(compiled.asm["ptx"])
    res = subprocess.run([ptxas, "-v", f"--gpu-name={nvidia.sm_arch_from_capability(cap)}", str(ptx),
                          "-o", str(tmp_path / "k.o")], capture_output=True, text=True, check=True)
    stores = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", res.stderr)
    regs = re.search(r"Used (\d+) registers", res.stderr)
    assert stores and regs, f"unexpected ptxas -v output:\n{res.stderr}"
    return int(stores[1]), int(stores[2]), int(regs[1])


def _sass(compiled, tmp_path):
    tool = os.path.join(NVIDIA_BIN, "nvdisasm")
    if not os.path.exists(tool):
        pytest.skip(f"nvdisasm not shipped at {tool}")
    cubin = tmp_path / "kernel.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    return subprocess.run([tool, str(cubin)], capture_output=True, text=True, check=True).stdout


def _check(kernel, tmp_path, *, wgmma: bool):
    assert isinstance(kernel.fn, JITFunction), type(kernel.fn)  # not the interpreter's wrapper
    compiled = _compile(kernel)
    stores, loads, regs = _spills(compiled, tmp_path)
    assert (stores, loads) == (0, 0), f"{kernel.name} spills {stores} B / {loads} B at {regs} registers"
    assert compiled.metadata.shared <= MAX_SHARED_SM90, f"{kernel.name} needs {compiled.metadata.shared} B"
    if wgmma:
        assert "wgmma" in compiled.asm["ptx"], f"{kernel.name} on sm_90 does not use wgmma"
        assert "HGMMA" in _sass(compiled, tmp_path), f"{kernel.name} SASS has no HGMMA"


PATCH_KERNELS = ["_patch_embed_fwd_kernel", "_patch_embed_dweight_kernel", "_patch_embed_dimages_kernel",
                 "_patch_embed_dpos_kernel"]


@pytest.mark.parametrize("name", PATCH_KERNELS, ids=lambda n: n.removeprefix("_patch_embed_").removesuffix("_kernel"))
def test_patch_embed_fp16_sm90_wgmma_no_spills(tmp_path, name):
    kernel = triton_patch_embed.aot_kernels(torch.float16, patch=16)[name]
    _check(kernel, tmp_path, wgmma=name != "_patch_embed_dpos_kernel")


@pytest.mark.parametrize("dtype,patch", [(torch.bfloat16, 14), (torch.float32, 16)], ids=["bf16-p14", "fp32-p16"])
def test_patch_embed_forward_other_dtypes_no_spills(tmp_path, dtype, patch):
    kernel = triton_patch_embed.aot_kernels(dtype, patch=patch)["_patch_embed_fwd_kernel"]
    _check(kernel, tmp_path, wgmma=dtype != torch.float32)


@pytest.mark.parametrize("dtype,n_mels", [(torch.float16, 80), (torch.float32, 128)], ids=["fp16-80", "fp32-128"])
def test_log_mel_sm90_no_spills(tmp_path, dtype, n_mels):
    kernel = triton_log_mel.aot_kernels(dtype, n_mels=n_mels)["_log_mel_kernel"]
    _check(kernel, tmp_path, wgmma=dtype != torch.float32)
