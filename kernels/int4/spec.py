"""int4 weight-only quantization: the packed layout and the argument checks (PyTorch and JAX).

    int4_matmul(x, packed_w, scales, zeros, group_size) -> x @ dequant(W).T

W is a Linear weight [out, in] (torch.nn.Linear layout); x [..., in] -> y [..., out] in x's dtype.

Quantization (group-wise, round-to-nearest): the input dim is cut into groups of ``group_size``
consecutive columns; each (group g, output row n) has one scale s[g, n] and one zero point
z[g, n]; the 4-bit code q[n, k] in [0, 15] dequantizes to
    W[n, k] = (q[n, k] - z[k // group_size, n]) * s[k // group_size, n]
  symmetric (zeros=None):  z = 8, s = max|W_group| / 7, q = clamp(round(W / s), -8, 7) + 8
  asymmetric (zeros given): s = (max - min) / 15, z = clamp(round(-min / s), 0, 15),
                            q = clamp(round(W / s) + z, 0, 15)   (z an integer-valued float here; the
                            kernels take any float zero point, as other quantizers write)

Packed layout: packed_w uint8 [out, in // 2], byte j of row n = q[n, 2j] | q[n, 2j + 1] << 4
(low nibble = even input index, high nibble = the odd one after it). Why [out, in // 2]:
each output row's codes are one contiguous run along the reduction axis, so a kernel tile
[BLOCK_N rows, BLOCK_K / 2 bytes] is BLOCK_N runs of 64 B (BLOCK_K = 128) -- whole 32-byte
sectors, loaded as 16-byte vectors per thread along K, and a split-K GEMV streams each row
front to back. It is also the Linear layout, so quantizing is per row, and slicing output
features (tensor-parallel column splits of q/k/v/gate/up) keeps packed rows intact.
scales, zeros [in // group_size, out] (group-major): at each K step a program reads the
BLOCK_N scales of one group as one contiguous, coalesced run (out-major would be a gather
with stride in // group_size). scales/zeros dtype: float16, bfloat16 or float32.

Limits: group_size a power of two >= 16; in % group_size == 0 (refused otherwise, never
padded); x float16/bfloat16/float32 (float64 for the references). Forward only: weights are
frozen and no gradient is defined (inference kernel).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from .._checks import devices_differ, shape_of


@dataclass(frozen=True)
class Int4Problem:
    """The checked, static description of one call: x viewed as [rows, in]."""

    rows: int
    in_features: int
    out_features: int
    group_size: int
    asymmetric: bool

    @property
    def groups(self) -> int:
        return self.in_features // self.group_size


def check_group_size(group_size: Any, in_features: Optional[int] = None) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {group_size!r}")
    if group_size < 16 or group_size & (group_size - 1):
        raise ValueError(f"group_size must be a power of two >= 16, got {group_size}")
    if in_features is not None and in_features % group_size:
        raise ValueError(f"group_size={group_size} must divide the input dimension in={in_features} "
                         f"(in % group_size = {in_features % group_size}); int4 groups are never padded")
    return group_size


def check_int4_args(x: Any, packed_w: Any, scales: Any, zeros: Any, group_size: Any, *,
                    dtypes: Sequence[Any], scale_dtypes: Sequence[Any], uint8: Any,
                    device_of: Optional[Callable] = None) -> Int4Problem:
    """Validate one call before anything launches. ``dtypes``: accepted x dtypes;
    ``scale_dtypes``: accepted scales/zeros dtypes; ``uint8``: the framework's uint8 dtype."""
    xs = shape_of("x", x)
    ps = shape_of("packed_w", packed_w)
    ss = shape_of("scales", scales)
    if len(xs) < 1:
        raise ValueError(f"x must have at least 1 dim [..., in], got shape {xs}")
    if x.dtype not in dtypes:
        raise TypeError(f"x dtype must be one of {[str(t) for t in dtypes]}, got {x.dtype}")
    if packed_w.dtype != uint8:
        raise TypeError(f"packed_w dtype must be uint8 (two int4 codes per byte), got {packed_w.dtype}")
    if len(ps) != 2:
        raise ValueError(f"packed_w must be 2-D [out, in // 2], got shape {ps}")
    k = xs[-1]
    if k % 2:
        raise ValueError(f"x's last dim (in={k}) must be even: two int4 codes per byte")
    out = ps[0]
    if ps[1] != k // 2:
        raise ValueError(f"packed_w must have shape [out, in // 2] = [{out}, {k // 2}] for x's in={k}, "
                         f"got {ps}")
    if min(out, k) < 1:
        raise ValueError(f"in and out must be >= 1, got x {xs} and packed_w {ps}")
    g = check_group_size(group_size, k)
    want = (k // g, out)
    if ss != want:
        raise ValueError(f"scales must have shape [in // group_size, out] = {list(want)}, got {list(ss)}")
    if scales.dtype not in scale_dtypes:
        raise TypeError(f"scales dtype must be one of {[str(t) for t in scale_dtypes]}, got {scales.dtype}")
    if zeros is not None:
        zs = shape_of("zeros", zeros)
        if zs != want:
            raise ValueError(f"zeros must have shape [in // group_size, out] = {list(want)}, got {list(zs)}")
        if zeros.dtype != scales.dtype:
            raise TypeError(f"zeros dtype must equal scales dtype {scales.dtype}, got {zeros.dtype}")
    if device_of is not None:
        dev = device_of(x)
        for name, t in (("packed_w", packed_w), ("scales", scales), ("zeros", zeros)):
            if t is not None and devices_differ(dev, device_of(t)):
                raise ValueError(f"{name} must be on x's device {dev}, got {device_of(t)}")
    rows = 1
    for s in xs[:-1]:
        rows *= s
    return Int4Problem(rows=rows, in_features=k, out_features=out, group_size=g,
                       asymmetric=zeros is not None)


def int4_bytes(rows: int, in_features: int, out_features: int, group_size: int, *,
               asymmetric: bool, x_bytes: int = 2, scale_bytes: int = 2) -> int:
    """Bytes one call must read: packed codes + scales (+ zeros) + x."""
    groups = in_features // group_size
    return (out_features * in_features // 2 + groups * out_features * scale_bytes * (2 if asymmetric else 1)
            + rows * in_features * x_bytes)
