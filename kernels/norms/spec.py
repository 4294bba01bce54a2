"""Framework-neutral argument checks for rms_norm / layer_norm (PyTorch and JAX front-ends).

Semantics (both frameworks, every impl):
  x [..., hidden], normalized over the last dim with fp32 statistics.
  residual given: h = x + residual (rounded to x's dtype, as a framework add would), the op
  returns (norm(h), h) -- the fused pre-norm residual pattern; otherwise norm(x).
  rms_norm:   y = h / sqrt(mean(h^2) + eps) * (weight + offset)   (gemma=True: offset 1.0)
  layer_norm: y = (h - mean(h)) / sqrt(var(h) + eps) * weight + bias   (biased variance)
  y is computed in fp32 and rounded once to x's dtype; weight/bias may be any accepted
  float dtype (e.g. fp32 weights with bf16 activations); their gradients come back in it.
NaN / inf in x or residual (not checked, no sync): propagated within its own row only --
that row of y, h and dx (dresidual) holds non-finite values, every other row is unaffected;
dweight / dbias sum over rows, so they become non-finite (Triton and Pallas alike).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .._checks import check_dtype, check_device, check_float, check_same_dtype, shape_of

MAX_HIDDEN = 16384  # one row is held on chip: a power-of-two tile of up to this many columns


@dataclass(frozen=True)
class NormProblem:
    rows: int
    hidden: int
    rms: bool
    eps: float
    offset: float
    has_residual: bool


def resolve_offset(offset: Any, gemma: Any) -> float:
    """The weight offset: ``gemma=True`` means (1 + weight) scaling, i.e. offset 1.0."""
    if not isinstance(gemma, bool):
        raise TypeError(f"gemma must be a bool, got {gemma!r}")
    offset = check_float("offset", offset)
    if gemma and offset != 0.0:
        raise ValueError(f"pass either gemma=True or offset, not both (got offset={offset})")
    return 1.0 if gemma else offset


def check_norm_args(x: Any, weight: Any, bias: Any, residual: Any, *, rms: bool, eps: Any,
                    offset: float, dtypes: Sequence[Any], device_of=None) -> NormProblem:
    """Validate a norm call; ``bias`` is None for rms_norm. ``device_of`` None skips devices."""
    xs = shape_of("x", x)
    if len(xs) < 1 or min(xs, default=0) < 1:
        raise ValueError(f"x must have >= 1 dims, all >= 1 (normalized over the last), got shape {xs}")
    hidden = xs[-1]
    if hidden > MAX_HIDDEN:
        raise ValueError(f"x hidden size (last dim) must be <= {MAX_HIDDEN}, got {hidden}")
    check_dtype("x", x, dtypes)
    params = [("weight", weight)] + ([] if rms else [("bias", bias)])
    for name, p in params:
        ps = shape_of(name, p)
        if ps != (hidden,):
            raise ValueError(f"{name} must have shape ({hidden},) (x's last dim), got {ps}")
        check_dtype(name, p, dtypes)
        check_device(name, p, "x", x, device_of)
    if residual is not None:
        rs = shape_of("residual", residual)
        if rs != xs:
            raise ValueError(f"residual must have x's shape {xs}, got {rs}")
        check_same_dtype("residual", residual, "x", x)
        check_device("residual", residual, "x", x, device_of)
    eps = check_float("eps", eps, positive=True)
    rows = 1
    for s in xs[:-1]:
        rows *= s
    return NormProblem(rows=rows, hidden=hidden, rms=rms, eps=eps, offset=float(offset),
                       has_residual=residual is not None)


def norm_bytes(problem: NormProblem, itemsize: int, *, backward: bool = False) -> int:
    """HBM bytes a fused kernel must move (activations only; weights are negligible).

    forward: read x (+ residual), write y (+ h). backward: read dy, h (+ dh), write dx.
    """
    n = problem.rows * problem.hidden * itemsize
    if not backward:
        return n * (4 if problem.has_residual else 2)
    return n * (4 if problem.has_residual else 3)
