"""Ahead-of-time compile helpers for Triton kernels (no GPU needed): the real-JIT copy of a
kernel module, and launch signatures for triton.compile(ASTSource(...)).

Used by the patch_embed and log_mel launchers' ``aot_kernels`` and tests/test_patch_audio_aot.py.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import NamedTuple

from ._platform import triton_interpreting


class AotKernel(NamedTuple):
    """Arguments for triton.compile(ASTSource(fn, signature, constexprs, attrs)) plus launch knobs."""

    name: str
    fn: object
    signature: dict
    constexprs: dict
    attrs: dict
    num_warps: int
    num_stages: int


@functools.lru_cache(maxsize=None)
def jit_module(module):
    """``module`` re-executed with the real JIT, even when this process interprets."""
    if not triton_interpreting():
        return module
    from triton import knobs

    spec = importlib.util.spec_from_file_location(f"{module.__name__}_jit", module.__file__)
    out = importlib.util.module_from_spec(spec)
    with knobs.runtime.scope():
        knobs.runtime.interpret = False
        spec.loader.exec_module(out)
    return out


def aot_signature(fn, ptrs: dict, constexprs: dict, blocks, *, unit_strides=()) -> AotKernel:
    """Signature of a launch: 16-byte aligned pointers, i32 scalars, ``unit_strides`` == 1."""
    signature, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ptrs:
            signature[name] = ptrs[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in unit_strides:
            signature[name], consts[name] = "constexpr", 1  # the JIT specializes stride == 1
        else:
            signature[name] = "i32"
    return AotKernel(fn.__name__, fn, signature, consts, attrs, blocks.num_warps, blocks.num_stages)
