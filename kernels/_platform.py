"""Where kernels run: picks interpret mode automatically when no GPU is present.

Triton reads TRITON_INTERPRET when a kernel is decorated, so every module of the package
that defines `@triton.jit` kernels calls ``configure_triton_interpret()`` before it imports
triton: importing any launcher directly (not only through ``kernels.torch_ops``) works.
The user can still force either mode by setting TRITON_INTERPRET themselves.
"""
from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=None)
def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def configure_triton_interpret() -> bool:
    """Set TRITON_INTERPRET=1 when torch sees no CUDA device; return whether interpreting."""
    if "TRITON_INTERPRET" not in os.environ and not torch_has_cuda():
        os.environ["TRITON_INTERPRET"] = "1"
    return triton_interpreting()


def interpreter_descriptor_reduce() -> None:
    """Give Triton 3.6's interpreter the tensor-descriptor reduction it lacks
    (``desc.atomic_add``, which the compiler lowers to sm_90's cp.reduce.async.bulk): ADD over
    the tile's in-bounds elements as masked relaxed atomic adds, which is what the bulk
    reduction computes, so the CPU tests run kernels that use it. Idempotent; other kinds
    raise NotImplementedError."""
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if hasattr(builder, "create_descriptor_reduce"):
        return

    def create_descriptor_reduce(self, kind, desc, value, indices):
        if kind != ir.DESCRIPTOR_REDUCE_KIND.ADD:
            raise NotImplementedError(f"descriptor reduction {kind} in the interpreter (only ADD is added)")
        ptrs, mask = desc.materialize_pointers(indices)
        op = ir.ATOMIC_OP.FADD if value.dtype.scalar.is_floating() else ir.ATOMIC_OP.ADD
        return self.create_atomic_rmw(op, ptrs, value, mask, ir.MEM_SEMANTIC.RELAXED, ir.MEM_SYNC_SCOPE.GPU)

    builder.create_descriptor_reduce = create_descriptor_reduce


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def compiled_sm_count(t) -> int | None:
    """SMs of the CUDA device holding torch tensor ``t``; None when kernels are interpreted."""
    if triton_interpreting() or t.device.type != "cuda":
        return None
    import torch

    return torch.cuda.get_device_properties(t.device).multi_processor_count


def jax_backend() -> str:
    import jax

    return jax.default_backend()


def pallas_interpret_default() -> bool:
    """Pallas runs in interpret mode unless JAX's default backend is a GPU."""
    return jax_backend() not in ("gpu", "cuda", "rocm")
