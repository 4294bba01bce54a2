"""Small argument checks shared by the elementwise/row-wise ops (norms, rope, activations),
plus the softcap/scale check of attention and decode (``check_optional_positive``).

Each raises TypeError/ValueError naming the argument, what was expected and what came,
so the PyTorch and JAX front-ends fail the same way before any kernel launches.
"""
from __future__ import annotations

from typing import Any, Sequence


def shape_of(name: str, x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    if shape is None or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}")
    return tuple(int(s) for s in shape)


def check_dtype(name: str, x: Any, dtypes: Sequence[Any]) -> None:
    if x.dtype not in dtypes:
        raise TypeError(f"{name} dtype must be one of {[str(t) for t in dtypes]}, got {x.dtype}")


def check_same_dtype(name: str, x: Any, ref_name: str, ref: Any) -> None:
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} dtype must equal {ref_name} dtype {ref.dtype}, got {x.dtype}")


def devices_differ(a: Any, b: Any) -> bool:
    """Two device_of results differ; None (unknown: a JAX tracer or uncommitted array) matches anything."""
    return a is not None and b is not None and a != b


def check_device(name: str, x: Any, ref_name: str, ref: Any, device_of) -> None:
    """``device_of`` None skips the check; a None device (see ``devices_differ``) is not compared."""
    if device_of is not None and devices_differ(device_of(x), device_of(ref)):
        raise ValueError(f"{name} must be on {ref_name}'s device {device_of(ref)}, got {device_of(x)}")


def check_integer(name: str, x: Any) -> None:
    kind = getattr(x.dtype, "is_floating_point", None)
    text = str(x.dtype)
    is_float = kind if isinstance(kind, bool) else ("float" in text)
    if is_float or "bool" in text or "complex" in text:
        raise TypeError(f"{name} must be an integer array, got {x.dtype}")


def check_float(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_optional_positive(name: str, value: Any) -> float | None:
    """None, or a finite number > 0 as a float (attention's and decode's softcap and scale).

    inf is refused with the rest: softcap=inf gives inf * tanh(s / inf) = inf * 0 = NaN, and
    scale=inf gives inf - inf in the softmax. ValueError names the argument and the value."""
    if value is None:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
    if ok:
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            ok = False
    if not ok or value == float("inf"):
        raise ValueError(f"{name} must be a finite float > 0 or None, got {value!r}")
    return value
