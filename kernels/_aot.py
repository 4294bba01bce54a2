"""Ahead-of-time compile support for every Triton kernel in the package (no GPU needed).

``jit_module`` re-executes a kernel module with the real JIT even when this process
interprets (``kernels.torch_ops`` sets TRITON_INTERPRET=1 without a GPU); ``aot_kernel``
builds the ``triton.compile(ASTSource(fn, signature, constexprs, attrs))`` arguments of a
launch with contiguous, 16-byte aligned tensors, as the JIT would specialize it (``source``
"gluon" marks a Gluon kernel, compiled from a GluonASTSource with its ``maxnreg``). Each op's
launcher exposes ``aot_kernels(...)`` built from these; ``benchmarks/compile_report.py``
and the AOT tests compile them. Compile in a fresh process: Triton 3.6's interpreter
leaves ``triton.language`` patched, which breaks later real compiles in the same process.
"""
from __future__ import annotations

import functools
import importlib.util
from types import ModuleType
from typing import NamedTuple

from ._platform import triton_interpreting


class AotKernel(NamedTuple):
    """One kernel specialization: arguments for triton.compile plus its launch knobs."""

    name: str
    fn: object  # triton.runtime.jit.JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    num_warps: int
    num_stages: int
    source: str = "triton"  # "gluon": compile with triton.experimental.gluon's GluonASTSource
    maxnreg: int | None = None  # the launch's register cap (warp-specialized Gluon kernels)


@functools.lru_cache(maxsize=None)
def jit_module(module: ModuleType) -> ModuleType:
    """``module`` with its kernels built by the real JIT, even when this process interprets."""
    if not triton_interpreting():
        return module
    from triton import knobs

    spec = importlib.util.spec_from_file_location(f"{module.__name__}_jit", module.__file__)
    copy = importlib.util.module_from_spec(spec)
    with knobs.runtime.scope():
        knobs.runtime.interpret = False
        spec.loader.exec_module(copy)
    return copy


def aot_kernel(fn, *, pointers: dict, constexprs: dict, num_warps: int, num_stages: int = 1,
               floats=(), unit_strides=(), divisible_strides: bool = True, sizes16=()) -> AotKernel:
    """The launch signature of ``fn``: ``pointers`` (name -> "*fp16", ..., or a tensor
    descriptor's "tensordesc<...>") 16-byte aligned;
    names in ``floats`` fp32; ``unit_strides`` specialized to 1 as the JIT does; other
    ``stride_*`` ints divisible by 16 when ``divisible_strides``; the ints in ``sizes16``
    divisible by 16, as the JIT specializes a size like a hidden width of 2048 (a mask
    ``cols < n_cols`` then keeps 16-byte vector loads); everything else i32."""
    signature, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
            if not pointers[name].startswith("tensordesc"):  # descriptors carry their own alignment
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in unit_strides:
            signature[name], consts[name] = "constexpr", 1
        elif name in floats:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if (divisible_strides and name.startswith("stride_")) or name in sizes16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return AotKernel(fn.__name__, fn, signature, consts, attrs, num_warps, num_stages)


def compile_aot(kernel: AotKernel, target):
    """``triton.compile`` of ``kernel`` for ``target`` (a GPUTarget): Triton or Gluon source."""
    import triton

    if kernel.source == "gluon":
        from triton.experimental.gluon._runtime import GluonASTSource as Source
    else:
        Source = triton.compiler.ASTSource
    options = dict(num_warps=kernel.num_warps, num_stages=kernel.num_stages)
    if kernel.maxnreg is not None:
        options["maxnreg"] = kernel.maxnreg
    return triton.compile(Source(kernel.fn, kernel.signature, kernel.constexprs, kernel.attrs),
                          target=target, options=options)


def d_strides(fn, exclude: str | None = None) -> tuple[str, ...]:
    """The ``stride_*d`` arguments of ``fn`` (head-dim strides, 1 for contiguous inputs),
    leaving out names that contain ``exclude``."""
    return tuple(n for n in fn.arg_names if n.startswith("stride_") and n.endswith("d")
                 and (exclude is None or exclude not in n))


def triton_dtype(dtype) -> str:
    """Triton's name for a torch / numpy / string dtype: "fp16", "bf16" or "fp32"."""
    name = str(dtype).replace("torch.", "")
    return {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[name]


def check_triton_blocks(blocks, tiles: tuple[str, ...]) -> None:
    """Validate a Triton block-size dataclass: ``tiles`` are powers of two >= 16 (tl.dot),
    num_warps in {1, 2, 4, 8, 16}, num_stages in [1, 8]."""
    for name in tiles:
        v = getattr(blocks, name)
        if not isinstance(v, int) or v < 16 or v & (v - 1):
            raise ValueError(f"{name}={v!r} must be a power of two >= 16 (tl.dot tile)")
    if blocks.num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps={blocks.num_warps!r} must be one of 1, 2, 4, 8, 16")
    if not isinstance(blocks.num_stages, int) or not 1 <= blocks.num_stages <= 8:
        raise ValueError(f"num_stages={blocks.num_stages!r} must be an int in [1, 8]")
