"""Framework-neutral argument checks for gelu / gated_gelu (PyTorch and JAX front-ends).

Semantics (both frameworks, every impl), math in fp32, one rounding to x's dtype:
  gelu(x, approximate="tanh") = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
      (PyTorch's gelu(approximate="tanh"), Gemma's gelu_pytorch_tanh);
  gelu(x, approximate="none") = 0.5 x (1 + erf(x / sqrt(2)));
  gated_gelu(gate, up) = gelu(gate) * up  (GeGLU), gate and up of one shape and dtype.
Any shape; the kernels see the tensors flattened (a non-contiguous input costs a copy).
NaN / inf (not checked, no sync): elementwise, so confined to their own element, forward
and backward: gelu(NaN) = NaN, gelu(+inf) = +inf, gelu(-inf) = NaN (x * 0), the gradients
there non-finite, in the Triton and Pallas kernels alike (the torch reference's erf form
gives NaN at +inf as well).
"""
from __future__ import annotations

from typing import Any, Sequence

from .._checks import check_device, check_dtype, check_same_dtype, shape_of

APPROXIMATIONS = ("tanh", "none")


def check_gelu_args(x: Any, up: Any, *, approximate: Any, dtypes: Sequence[Any], device_of=None) -> int:
    """Validate gelu (``up`` None) or gated_gelu (x is the gate); return the element count."""
    name = "x" if up is None else "gate"
    xs = shape_of(name, x)
    check_dtype(name, x, dtypes)
    if up is not None:
        us = shape_of("up", up)
        if us != xs:
            raise ValueError(f"up must have gate's shape {xs}, got {us}")
        check_same_dtype("up", up, "gate", x)
        check_device("up", up, "gate", x, device_of)
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {list(APPROXIMATIONS)}, got {approximate!r}")
    n = 1
    for s in xs:
        n *= s
    return n


def gelu_bytes(n: int, itemsize: int, *, gated: bool, backward: bool = False) -> int:
    """HBM bytes moved: fwd reads x (+ up), writes y; bwd reads dy, x (+ up), writes dx (+ dup)."""
    if not backward:
        return n * itemsize * (3 if gated else 2)
    return n * itemsize * (5 if gated else 3)
