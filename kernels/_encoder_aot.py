"""Ahead-of-time compile support for the encoder Triton kernels (norms, rope, activations).

``jit_copy`` re-imports a kernel module with the real JIT even when this process interprets
(kernels.torch_ops sets TRITON_INTERPRET=1 without a GPU), and ``aot_kernel`` builds the
``triton.compile(ASTSource(fn, signature, constexprs, attrs))`` arguments of a launch with
contiguous, 16-byte aligned tensors. ``tests/test_encoder_kernels_aot.py`` compiles them.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import NamedTuple

import torch

from ._platform import triton_interpreting

TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


class AotKernel(NamedTuple):
    name: str
    fn: object  # triton.runtime.jit.JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    num_warps: int
    num_stages: int


@functools.lru_cache(maxsize=None)
def jit_copy(module_name: str):
    """The module ``module_name`` with its kernels built by the real JIT."""
    module = importlib.import_module(module_name)
    if not triton_interpreting():
        return module
    from triton import knobs

    spec = importlib.util.spec_from_file_location(f"{module_name}_jit", module.__file__)
    copy = importlib.util.module_from_spec(spec)
    with knobs.runtime.scope():
        knobs.runtime.interpret = False
        spec.loader.exec_module(copy)
    return copy


def aot_kernel(fn, *, pointers: dict, constexprs: dict, floats=(), num_warps: int,
               num_stages: int = 1) -> AotKernel:
    """Pointers (name -> "*fp16" ...) are 16-byte aligned; ``stride_*`` ints divisible by 16."""
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in floats:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name.startswith("stride_"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return AotKernel(fn.__name__, fn, signature, dict(constexprs), attrs, num_warps, num_stages)
